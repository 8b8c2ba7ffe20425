"""``goalclip train``: fine-tune a CLIP with GOAL or one of its ablations.

The flags are built from ``TrainConfig``'s field declarations (:mod:`goalclip.core.options`), without
argparse defaults (``argument_default=SUPPRESS``): only the flags a user types reach :func:`run`, where
they override a ``--config`` file; the defaults are ``TrainConfig``'s.
"""

from __future__ import annotations

import argparse

from goalclip.core.options import add_options, values_from_args
from goalclip.training.config import LossWeights, TrainConfig

WEIGHTS = "weights."  # the loss weights' flags (--w-global, ...) land in args as weights.<field>


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
    add_options(p, TrainConfig, with_defaults=False)
    add_options(p, LossWeights, dest_prefix=WEIGHTS, with_defaults=False)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from dataclasses import asdict

    from goalclip.training.trainer import train

    values = TrainConfig.from_file(args.config).to_dict() if "config" in vars(args) else {}
    values["weights"] = {**asdict(LossWeights()), **values.get("weights", {}),
                         **values_from_args(args, LossWeights, dest_prefix=WEIGHTS)}
    values.update(values_from_args(args, TrainConfig))
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
