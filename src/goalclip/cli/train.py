"""``goalclip train``: fine-tune a CLIP with GOAL or one of its ablations."""

from __future__ import annotations

import argparse

from goalclip.cli.common import add_max_image_pixels, add_model, add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a CLIP with GOAL / its ablations",
                       description="Fine-tune with L = w_global L_global + w_local L_local + w_tsl L_TSL on mined "
                       "pairs; text positions are stretched Long-CLIP style when the model's context is shorter "
                       "than --max-text-len. Run under `accelerate launch` for several GPUs or nodes. Defaults "
                       "are the GOAL authors' code's settings (AdamW lr 5e-6, wd 0.05, cosine, 10 epochs, batch 16).")
    add_model(p, "starting CLIP: hub id, model folder (e.g. a previous run's --out, for two-stage training) or "
              "state-dict file (with --base)")
    p.add_argument("--data", required=True, help="mined-pairs manifest (a captioned manifest is enough for "
                   "--method global)")
    p.add_argument("--out", required=True, help="output folder: the final model (loads with "
                   "CLIPModel.from_pretrained), train_config.json, metrics.jsonl, checkpoints/")
    p.add_argument("--method", default="goal", choices=["goal", "wo-tsl", "global", "local"],
                   help="loss terms: goal = global+local+TSL, wo-tsl = global+local, global, local (default: goal)")
    p.add_argument("--epochs", type=int, default=10, help="passes over the data (default: 10)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=16, help="pairs per process per step (default: 16)")
    p.add_argument("--lr", type=float, default=5e-6, help="AdamW learning rate (default: 5e-6)")
    p.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay (default: 0.05)")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear warmup before the cosine decay (default: 0)")
    p.add_argument("--max-text-len", type=int, default=248, help="text context after stretching (default: 248)")
    p.add_argument("--keep-positions", type=int, default=20, help="leading positions copied unchanged by the "
                   "stretch (default: 20)")
    p.add_argument("--w-global", type=float, default=1.0, help="weight of the global loss (default: 1.0)")
    p.add_argument("--w-local", type=float, default=0.5, help="weight of the local loss (default: 0.5)")
    p.add_argument("--w-tsl", type=float, default=1.0, help="weight of each TSL term (default: 1.0)")
    p.add_argument("--seed", type=int, default=0, help="random seed for init, data order and crops (default: 0)")
    p.add_argument("--precision", default="no", choices=["no", "fp16", "bf16"],
                   help="mixed precision through Accelerate (default: no = fp32)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="gradient norm clip; 0 disables (default: 1.0)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--num-workers", type=int, default=2, help="data-loading worker processes (default: 2)")
    p.add_argument("--checkpoint-every", type=int, default=0, help="also checkpoint every N steps (default: only "
                   "at each epoch end)")
    p.add_argument("--no-epoch-checkpoints", action="store_true", help="do not checkpoint at epoch ends")
    p.add_argument("--log-every", type=int, default=10, help="steps between metrics.jsonl lines (default: 10)")
    p.add_argument("--report-to", help="Accelerate tracker: tensorboard, wandb, all (needs the package installed)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--skip-invalid", action="store_true", help="skip and count bad records instead of stopping")
    add_no_progress(p)
    add_max_image_pixels(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from goalclip.training.losses import LossWeights
    from goalclip.training.trainer import TrainConfig, train

    summary = train(TrainConfig(
        model=args.model, base=args.base, data=args.data, out=args.out, method=args.method, epochs=args.epochs,
        max_steps=args.max_steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
        warmup_steps=args.warmup_steps, max_text_len=args.max_text_len, keep_positions=args.keep_positions,
        weights=LossWeights(args.w_global, args.w_local, args.w_tsl), seed=args.seed, precision=args.precision,
        grad_clip=args.grad_clip or None, gradient_checkpointing=args.gradient_checkpointing,
        num_workers=args.num_workers, checkpoint_every=args.checkpoint_every,
        checkpoint_epochs=not args.no_epoch_checkpoints, log_every=args.log_every, report_to=args.report_to,
        resume=args.resume, skip_invalid=args.skip_invalid, progress=not args.no_progress,
        max_image_pixels=args.max_image_pixels,
    ))
    return (f"trained {summary['method']} for {summary['steps']} steps on {summary['examples']} examples "
            f"({summary['skipped']} skipped), final loss {summary['final_loss']:.4f}, median step "
            f"{summary['median_step_s'] * 1000:.0f} ms, context {summary['context_length']} -> {summary['out']}")
