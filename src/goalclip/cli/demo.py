"""``goalclip demo``: the whole pipeline offline on a generated synthetic world."""

from __future__ import annotations

import argparse

from goalclip.cli.common import add_no_progress


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline offline on a generated synthetic world",
                       description="Generate a synthetic long-caption world rendered at 4x the model's input (fine "
                       "markings that only the full resolution shows), pretrain a small CLIP on its short captions, "
                       "mine FLISM pairs, fine-tune global, local, wo-tsl and goal from it with one recipe, three "
                       "fine-tune seeds each (--extra-rows: also goal on detector-only pairs and on the top-3 pairs, "
                       "and a small SigLIP fine-tuned with global and goal), "
                       "print the ablation tables (mean ± std over seeds, retrieval, joint "
                       "test and a marking probe) and draw figures. --quick: a smaller world, one seed, the four "
                       "loss methods only. A re-run with the same world and model reuses the pretrained checkpoint.")
    p.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    p.add_argument("--quick", action="store_true",
                   help="a smaller world, fewer steps, one fine-tune seed and the four loss methods only "
                   "(what CI runs)")
    p.add_argument("--seed", type=int, default=0, help="seed for the world and all training (default: 0)")
    p.add_argument("--num-workers", type=int, default=0, help="data-loading workers (default: 0, best on 2 cores)")
    p.add_argument("--extra-rows", action="store_true",
                   help="also fine-tune goal on pairs mined from the detector boxes alone (FLISM vs detector) and on "
                   "the top-3 mined pairs, uniform and similarity-weighted (--local-pairs 3), and pretrain a small "
                   "SigLIP the same way and fine-tune it with global and goal: fifteen more fine-tunes at three "
                   "seeds, past 10 minutes on 2 cores")
    add_no_progress(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> str:
    from goalclip.demo.pipeline import run_demo

    return run_demo(args.out, quick=args.quick, seed=args.seed, num_workers=args.num_workers,
                    progress=not args.no_progress, extra_rows=args.extra_rows)["summary"]
