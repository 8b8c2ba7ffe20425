"""``goalclip train``: fine-tune a CLIP with GOAL or one of its ablations.

Options have no argparse defaults (``argument_default=SUPPRESS``): only the flags a user types
reach :func:`run`, where they override a ``--config`` file; the defaults live in ``TrainConfig``.
"""

from __future__ import annotations

import argparse

from goalclip.cli.common import SHARDS_HELP, add_max_image_pixels, add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="fine-tune a CLIP with GOAL / its ablations", argument_default=argparse.SUPPRESS,
                       description="Fine-tune with L = w_global L_global + w_local L_local + w_tsl L_TSL on mined "
                       "pairs (a method with one term trains it with weight 1); text positions are stretched "
                       "Long-CLIP style when the model's context is shorter than --max-text-len. Run under "
                       "`accelerate launch` for several GPUs or nodes. Defaults are the GOAL authors' code's "
                       "settings (AdamW lr 5e-6, wd 0.05, cosine, 10 epochs, batch 16); --recipe reference also "
                       "takes their weight-decay scope, clipping and precision. Two-stage training is two runs: "
                       "the second's --model is the first's --out.")
    p.add_argument("--config", help="settings file: a run's train_config.json (to run it again) or a JSON object "
                   "of TrainConfig fields; flags given on the command line override it")
    p.add_argument("--model", help="starting CLIP: hub id, model folder (e.g. a previous run's --out, for "
                   "two-stage training: only its weights, and its TSL heads with --tsl-heads separate, carry over; "
                   "the run starts a fresh optimizer and schedule) or state-dict file (with --base); required "
                   "unless in --config")
    p.add_argument("--base", help="base model id/folder when --model is a bare state-dict file")
    p.add_argument("--data", help="mined-pairs manifest (a captioned manifest is enough for "
                   f"--method global), {SHARDS_HELP}; required unless in --config")
    p.add_argument("--out", help="output folder: the final model (loads with CLIPModel.from_pretrained), "
                   "train_config.json, metrics.jsonl, checkpoints/; required unless in --config")
    p.add_argument("--method", choices=["goal", "wo-tsl", "global", "local"],
                   help="loss terms: goal = global+local+TSL, wo-tsl = global+local, global, local (default: goal)")
    p.add_argument("--epochs", type=int, help="passes over the data (default: 10)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="pairs per process per step (default: 16)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: 5e-6)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.05)")
    p.add_argument("--recipe", choices=["goalclip", "reference"],
                   help="optimisation choices at once: goalclip = no decay on biases/norms/embeddings/logit scale, "
                   "grad clip 1.0, fp32; reference = the GOAL authors' code: decay on all parameters, no clipping, "
                   "bf16 mixed precision (bf16 weights for --method global/local). Sentence splitting and text "
                   "cleaning happen when mining. Explicit flags override the recipe (default: goalclip)")
    p.add_argument("--decay-all", action=argparse.BooleanOptionalAction,
                   help="weight decay on every parameter (--no-decay-all: not on biases, norms, embeddings, "
                   "logit scale) (default: from --recipe)")
    p.add_argument("--warmup-steps", type=int, help="linear warmup before the cosine decay (default: 0)")
    p.add_argument("--max-text-len", type=int, help="text context after stretching (default: 248)")
    p.add_argument("--keep-positions", type=int, help="leading positions copied unchanged by the "
                   "stretch (default: 20)")
    p.add_argument("--w-global", type=float, help="weight of the global loss (default: 1.0)")
    p.add_argument("--w-local", type=float, help="weight of the local loss (default: 0.5)")
    p.add_argument("--w-tsl", type=float, help="weight of each TSL term (default: 1.0)")
    p.add_argument("--seed", type=int, help="random seed for init, data order and crops (default: 0)")
    p.add_argument("--precision", choices=["no", "fp16", "bf16", "bf16-weights"],
                   help="no = fp32; fp16/bf16 = mixed precision through Accelerate (fp32 master weights); "
                   "bf16-weights = model and optimizer state in bf16, as the authors' baselines ran (default: "
                   "from --recipe)")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip; 0 disables (default: from --recipe)")
    p.add_argument("--local-pairs", type=int, help="train on up to K mined pairs per image: the 'local' pair, then "
                   "the record's 'candidates' (FAST-GOAL top-k; goalclip mine keeps --top-k of them, default 5); one "
                   "vision forward over all crops (default: 1)")
    p.add_argument("--pair-weighting", choices=["uniform", "similarity"],
                   help="with --local-pairs > 1, each image's pairs share weight 1 equally (uniform) or in "
                   "proportion to their mining score (similarity; negative scores count 0) (default: uniform)")
    p.add_argument("--local-pair-loss", choices=["best", "all"],
                   help="with --local-pairs > 1: best = L_local on each image's best pair, the K pairs and their "
                   "weights enter TSL only (FAST-GOAL's text); all = every pair, weighted, in L_local too. Another "
                   "pair of a pair's own image is never its negative (default: best)")
    p.add_argument("--tsl-target", choices=["diagonal", "identity"],
                   help="TSL target: diagonal = each pooled feature's cosine with its own local embedding against 1 "
                   "(the GOAL authors' code); identity = the batch's pooled x local cosine matrix against the "
                   "identity, pushing the other pairs' cosines to 0 (GOAL's Eq. 14) (default: diagonal)")
    p.add_argument("--tsl-heads", choices=["shared", "separate"],
                   help="TSL projections: shared = CLIP's own post-norm + projection (the reference code); "
                   "separate = learned heads initialised from them (FAST-GOAL psi_v, psi_t), saved beside the "
                   "model as tsl_heads.safetensors and reloaded when --model holds them (default: shared)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--grad-cache-chunk", type=int, metavar="M",
                   help="gradient caching: encode the batch M rows at a time, first without a graph, compute the "
                   "full-batch loss and its gradients for the cached embeddings, then encode each chunk again "
                   "and back-propagate them: the same loss and gradients as the plain step (the contrastive "
                   "negatives stay the whole batch, unlike gradient accumulation) with the activation memory "
                   "of M rows, for about one extra forward pass; one process or DDP (default: off)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (opt-in: the first steps "
                   "wait for compilation, minutes for a large model, and new batch shapes recompile; pays off on a "
                   "GPU over long runs). SDPA attention, fused AdamW on CUDA and pinned memory need no flag: the "
                   "run logs and records which are on (train_config.json 'speed_path')")
    p.add_argument("--num-workers", type=int, help="data-loading worker processes (default: 2)")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default: only "
                   "at each epoch end)")
    p.add_argument("--no-epoch-checkpoints", action="store_true", help="do not checkpoint at epoch ends")
    p.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept, older ones deleted (default: 2)")
    p.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines (default: 10)")
    p.add_argument("--report-to", help="Accelerate tracker: tensorboard, wandb, all (needs the package installed)")
    p.add_argument("--val-data", metavar="FILE", help="validate during training on this retrieval manifest (the "
                   "format of goalclip eval --data): Recall@1/5 both ways as goalclip eval --ks 1 5 scores the "
                   "weights of that step, logged to metrics.jsonl as {\"step\", \"epoch\", \"val\": {...}} and "
                   "to the trackers as val/NAME (default: no validation)")
    p.add_argument("--val-joint", metavar="FILE", help="with --val-data: also the global-local joint test on this "
                   "manifest of local pairs (as goalclip eval --joint): mAP@10 both ways")
    p.add_argument("--val-every", type=int, metavar="N", help="validate every N optimizer steps; 0 = at each epoch "
                   "end. The final model is always validated (default: 0)")
    p.add_argument("--val-batch-size", type=int, metavar="N",
                   help="images or texts per validation forward pass (default: 64)")
    p.add_argument("--keep-best", metavar="METRIC", help="export the model with the best validation METRIC "
                   "(higher is better; ties keep the earlier step) to OUT/best/, a model folder like the final one; "
                   "the step and value are in train_config.json and survive --resume. METRIC: i2t@1, i2t@5, t2i@1, "
                   "t2i@5, or with --val-joint i2t_map@10, t2i_map@10 (val/ prefix allowed)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its latest "
                   "checkpoint (same settings; a finished run is left as it is)")
    p.add_argument("--overwrite", action="store_true", help="replace the model and run record already in --out")
    p.add_argument("--skip-invalid", action="store_true", help="skip and count bad records instead of stopping")
    add_no_progress(p)
    add_max_image_pixels(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from dataclasses import asdict

    from goalclip.training.losses import LossWeights
    from goalclip.training.trainer import TrainConfig, train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose", "config")}
    values = TrainConfig.from_file(args.config).to_dict() if "config" in vars(args) else {}
    weights = dict(values.get("weights") or asdict(LossWeights()))
    for flag, name in (("w_global", "global_"), ("w_local", "local"), ("w_tsl", "tsl")):
        if flag in given:
            weights[name] = given.pop(flag)
    values["weights"] = weights
    if given.pop("no_epoch_checkpoints", False):
        given["checkpoint_epochs"] = False
    if given.pop("no_progress", False):
        given["progress"] = False
    values.update(given)
    missing = [f"--{name}" for name in ("model", "data", "out") if not values.get(name)]
    if missing:
        raise ValueError(f"{', '.join(missing)} required (as flags or in --config)")
    summary = train(TrainConfig.from_dict(values))
    if summary.get("already_finished"):
        return (f"{summary['out']} holds a finished run ({summary['steps']} steps); nothing to resume "
                "(pass --overwrite to train it again)")
    loss, best, kept = summary["final_loss"], summary.get("best"), ""
    if best:
        kept = f"; best {best['metric']} {best['value']:.2f} at step {best['step']} -> {summary['out']}/best"
    return (f"trained {summary['method']} for {summary['steps']} steps on {summary['examples']} examples "
            f"({summary['skipped']} skipped), final loss {'n/a' if loss is None else f'{loss:.4f}'}, median step "
            f"{summary['median_step_s'] * 1000:.0f} ms, context {summary['context_length']} -> {summary['out']}{kept}")
