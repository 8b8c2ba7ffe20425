"""The ``goalclip`` command: mine | train | eval | viz | search | data | convert | demo.

Each subcommand parses its options, calls the library function that does the work (the same
one the demo calls), prints a one-line summary and exits non-zero with a clear message on bad
input instead of a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from goalclip.training.losses import LossWeights

logger = logging.getLogger("goalclip")


def _add_mine(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="mine local (sentence, region) pairs from captioned images",
                       description="Split each caption into sentences, propose regions, match them with a "
                       "CLIP and keep the best pair per image (GOAL's LISM, FAST-GOAL's FLISM).")
    p.add_argument("--model", required=True, help="CLIP used for matching: hub id, model folder or state-dict file")
    p.add_argument("--base", help="base model id/folder when --model is a bare state-dict file")
    p.add_argument("--data", required=True, help="captioned-images manifest (JSONL)")
    p.add_argument("--out", required=True, help="mined-pairs manifest to write (JSONL); a .skipped.jsonl and "
                   ".summary.json are written next to it")
    p.add_argument("--regions", default="flism", help="region proposer: flism (detector + 4 quadrants + centre), "
                   "lism (SAM masks + whole image; a pair whose best region is the whole image is dropped), grid, "
                   "external, or a comma list such as external,grid (default: flism)")
    p.add_argument("--boxes", help="external boxes JSONL {id, boxes}; with flism it can stand in for the detector")
    p.add_argument("--detector", help="transformers object-detection checkpoint for flism (e.g. hustvl/yolos-tiny)")
    p.add_argument("--sam", help="transformers SAM checkpoint for lism (e.g. facebook/sam-vit-base)")
    p.add_argument("--threshold", type=float, default=0.3, help="detector score threshold (default: 0.3)")
    p.add_argument("--max-boxes", type=int, default=10, help="detector boxes kept per image (default: 10)")
    p.add_argument("--margin", type=float, default=0.0, help="SAM boxes grow by this fraction of their size for "
                   "context (default: 0)")
    p.add_argument("--top-k", type=int, default=5, help="candidate pairs kept per image for analysis (default: 5)")
    p.add_argument("--batch-size", type=int, default=32, help="images per mining batch (default: 32)")
    p.add_argument("--crop-batch-size", type=int, default=256, help="crops/sentences per CLIP forward (default: 256)")
    p.add_argument("--num-workers", type=int, default=2, help="image-decoding worker processes (default: 2)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, or auto (Accelerate's device) (default: cpu)")
    p.add_argument("--max-images", type=int, help="mine only the first N images (for a quick look)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run: ids already written are "
                   "skipped, never duplicated")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_mine)


def _run_mine(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import MineConfig, mine

    summary = mine(MineConfig(
        model=args.model, base=args.base, data=args.data, out=args.out, regions=args.regions, boxes=args.boxes,
        detector=args.detector, sam=args.sam, threshold=args.threshold, max_boxes=args.max_boxes,
        margin=args.margin, top_k=args.top_k, batch_size=args.batch_size, crop_batch_size=args.crop_batch_size,
        num_workers=args.num_workers, device=args.device, resume=args.resume, max_images=args.max_images,
        progress=not args.no_progress,
    ))
    if not summary:  # non-main process under accelerate launch
        return ""
    rate = summary["images_per_s"]
    return (f"mined {summary['pairs']} pairs from {summary['images']} images ({summary['skipped']} skipped"
            f"{': ' + json.dumps(summary['skipped_reasons']) if summary['skipped'] else ''}); sources "
            f"{json.dumps(summary['sources'])}; mean score {summary['mean_score'] or 0:.3f}; "
            f"{rate or 0:.1f} img/s -> {summary['out']}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    # argument_so they can
    # override a --config file; the defaults live in TrainConfig.
    p = sub.add_parser("train", help="fine-tune a CLIP with GOAL / its ablations", argument_default=argparse.SUPPRESS,
                       description="Fine-tune with L = w_global L_global + w_local L_local + w_tsl L_TSL on mined "
                       "pairs; text positions are stretched Long-CLIP style when the model's context is shorter "
                       "than --max-text-len. Run under `accelerate launch` for several GPUs or nodes.")
    p.add_argument("--config", help="settings file: a run's train_config.json (to run it again) or a JSON object "
                   "of TrainConfig fields; flags given on the command line override it")
    p.add_argument("--model", help="starting CLIP: hub id, model folder (e.g. a previous run's "
                   "--out, for two-stage training) or state-dict file (with --base); required unless in --config")
    p.add_argument("--base", help="base model id/folder when --model is a bare state-dict file")
    p.add_argument("--data", help="mined-pairs manifest (a captioned manifest is enough for "
                   "--method global); required unless in --config")
    p.add_argument("--out", help="output folder: the final model (loads with "
                   "CLIPModel.from_pretrained), train_config.json, metrics.jsonl, checkpoints/; required unless "
                   "in --config")
    p.add_argument("--method", choices=["goal", "wo-tsl", "global", "local"],
                   help="loss terms: goal = global+local+TSL, wo-tsl = global+local, global, local (default: goal)")
    p.add_argument("--epochs", type=int, help="passes over the data (default: 10)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, help="pairs per process per step (default: 16)")
    p.add_argument("--lr", type=float, help="AdamW learning rate (default: 5e-6)")
    p.add_argument("--weight-decay", type=float, help="AdamW weight decay (default: 0.05)")
    p.add_argument("--warmup-steps", type=int, help="linear warmup before the cosine decay (default: 0)")
    p.add_argument("--max-text-len", type=int, help="text context after stretching (default: 248)")
    p.add_argument("--keep-positions", type=int, help="leading positions copied unchanged by the "
                   "stretch (default: 20)")
    p.add_argument("--w-global", type=float, help="weight of the global loss (default: 1.0)")
    p.add_argument("--w-local", type=float, help="weight of the local loss (default: 0.5)")
    p.add_argument("--w-tsl", type=float, help="weight of each TSL term (default: 1.0)")
    p.add_argument("--seed", type=int, help="random seed for init, data order and crops (default: 0)")
    p.add_argument("--precision", choices=["no", "fp16", "bf16"],
                   help="mixed precision through Accelerate (default: no = fp32)")
    p.add_argument("--grad-clip", type=float, help="gradient norm clip; 0 disables (default: 1.0)")
    p.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations to save memory")
    p.add_argument("--num-workers", type=int, help="data-loading worker processes (default: 2)")
    p.add_argument("--checkpoint-every", type=int, help="also checkpoint every N steps (default: only "
                   "at each epoch end)")
    p.add_argument("--no-epoch-checkpoints", action="store_true", help="do not checkpoint at epoch ends")
    p.add_argument("--keep-checkpoints", type=int, help="newest checkpoints kept, older ones deleted (default: 2)")
    p.add_argument("--log-every", type=int, help="steps between metrics.jsonl lines (default: 10)")
    p.add_argument("--report-to", help="Accelerate tracker: tensorboard, wandb, all (needs the package installed)")
    p.add_argument("--resume", action="store_true", help="continue the unfinished run in --out from its latest "
                   "checkpoint (same settings; a finished run is left as it is)")
    p.add_argument("--overwrite", action="store_true", help="replace the model and run record already in --out")
    p.add_argument("--skip-invalid", action="store_true", help="skip and count bad records instead of stopping")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=_run_train)


def _run_train(args: argparse.Namespace) -> str:
    from dataclasses import asdict

    from goalclip.training.trainer import TrainConfig, train

    given = {k: v for k, v in vars(args).items() if k not in ("command", "func", "verbose", "config")}
    values = TrainConfig.from_file(args.config).to_dict() if "config" in vars(args) else {}
    weights = dict(values.get("weights") or asdict(LossWeights()))
    for flag, name in (("w_global", "global_"), ("w_local", "local"), ("w_tsl", "tsl")):
        if flag in given:
            weights[name] = given.pop(flag)
    values["weights"] = weights
    if "grad_clip" in given:
        given["grad_clip"] = given["grad_clip"] or None
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
    loss = summary["final_loss"]
    return (f"trained {summary['method']} for {summary['steps']} steps on {summary['examples']} examples "
            f"({summary['skipped']} skipped), final loss {'n/a' if loss is None else f'{loss:.4f}'}, median step "
            f"{summary['median_step_s'] * 1000:.0f} ms, context {summary['context_length']} -> {summary['out']}")


def _add_data(sub: argparse._SubParsersAction) -> None:
    from goalclip.datasets.adapters import add_convert_arguments

    p = sub.add_parser("data", help="dataset conversion and joint-test building")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    convert = data_sub.add_parser("convert", help="convert a public dataset's layout into a goalclip manifest")
    add_convert_arguments(convert)
    convert.set_defaults(func=_run_data_convert)
    joint = data_sub.add_parser("joint", help="build the global-local joint test set from a test manifest "
                                "and its mined pairs")
    joint.add_argument("--data", required=True, help="test manifest")
    joint.add_argument("--mined", required=True, help="mined pairs of the same test images (goalclip mine)")
    joint.add_argument("--out", required=True, help="joint test manifest to write")
    joint.set_defaults(func=_run_data_joint)


def _run_data_convert(args: argparse.Namespace) -> str:
    from goalclip.datasets.adapters import run_convert

    summary = run_convert(args)
    return f"converted {summary.get('written')} records ({summary.get('total_skipped', 0)} skipped) -> {summary.get('out')}"


def _run_data_joint(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import build_joint_test

    s = build_joint_test(args.data, args.mined, args.out)
    return f"joint test: {s['joint_items']} of {s['images']} images have a local pair -> {s['out']}"


def _add_delegated(sub: argparse._SubParsersAction, name: str, help_text: str, module: str, adder: str,
                   runner: str) -> None:
    """Subcommands whose options live next to their implementation (eval, viz, search, convert)."""
    import importlib

    mod = importlib.import_module(f"goalclip.{module}")
    p = sub.add_parser(name, help=help_text, description=help_text)
    getattr(mod, adder)(p)

    def run(args: argparse.Namespace) -> str:
        result = getattr(mod, runner)(args)
        return result.get("summary", "") if isinstance(result, dict) else ""

    p.set_defaults(func=run)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline offline on a generated synthetic world",
                       description="Generate a synthetic long-caption world, pretrain a small CLIP on its short "
                       "captions, mine FLISM pairs, fine-tune with global and goal, evaluate all and draw figures.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true", help="a smaller world and fewer steps (under 2 minutes)")
    p.add_argument("--seed", type=int, default=0, help="seed for the world and all training (default: 0)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading workers (default: 0, best on 2 cores)")
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> str:
    from goalclip.demo.pipeline import run_demo

    summary = run_demo(args.out, quick=args.quick, seed=args.seed, num_workers=args.num_workers)
    return summary["summary"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="goalclip",
        description="Fine-tune CLIP for long captions with GOAL / FAST-GOAL: mine local pairs, train, evaluate, "
        "visualise. Models are anything transformers.CLIPModel.from_pretrained loads.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_mine(sub)
    _add_train(sub)
    _add_delegated(sub, "eval", "retrieval Recall@K and joint mAP@K for one or more models on the same data",
                   "evaluation.retrieval", "add_eval_arguments", "run_eval")
    _add_delegated(sub, "viz", "attention maps, retrieval grids and mined pairs as PNG files",
                   "viz.figures", "add_viz_arguments", "run_viz")
    _add_delegated(sub, "search", "long-text search over an image folder with a cached index",
                   "viz.search", "add_search_arguments", "run_search")
    _add_data(sub)
    convert = sub.add_parser("convert", help="import checkpoints from other layouts")
    convert_sub = convert.add_subparsers(dest="convert_command", required=True)
    _add_delegated(convert_sub, "longclip", "convert a Long-CLIP (OpenAI-layout) checkpoint into a "
                   "transformers CLIPModel folder", "models.convert", "add_convert_longclip_arguments",
                   "run_convert_longclip")
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "urllib3", "accelerate", "transformers"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        line = func(args)
    except (ValueError, FileNotFoundError, FileExistsError, OSError, RuntimeError) as exc:
        print(f"goalclip {args.command}: error: {exc}", file=sys.stderr)
        if args.verbose:
            raise
        return 2
    if line:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
