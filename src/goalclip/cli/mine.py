"""``goalclip mine``: local (sentence, region) pairs from captioned images."""

from __future__ import annotations

import argparse
import json

from goalclip.core.options import add_options, values_from_args
from goalclip.mining.config import MineConfig


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("mine", help="mine local (sentence, region) pairs from captioned images",
                       description="Split each caption into sentences, propose regions, match them with a "
                       "CLIP and keep the best pair per image (GOAL's LISM, FAST-GOAL's FLISM).")
    add_options(p, MineConfig)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import mine

    summary = mine(MineConfig(**values_from_args(args, MineConfig)))
    if not summary:  # non-main process under accelerate launch
        return ""
    rate = summary["images_per_s"]
    without = summary["without_local_pair"]
    return (f"mined {summary['pairs']} pairs from {summary['images']} images"
            f"{f' ({without} kept without a local pair: every sentence chose the whole image)' if without else ''}"
            f" ({summary['skipped']} skipped"
            f"{': ' + json.dumps(summary['skipped_reasons']) if summary['skipped'] else ''}); sources "
            f"{json.dumps(summary['sources'])}; mean score {summary['mean_score'] or 0:.3f}; "
            f"{rate or 0:.1f} img/s; stages: {_stages(summary['stage_seconds'])} -> {summary['out']}")


def _stages(seconds: dict[str, float]) -> str:
    return ", ".join(f"{stage} {value:.1f}s" for stage, value in seconds.items())
