"""``goalclip data``: dataset conversion and joint-test building."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    from goalclip.datasets.adapters import add_convert_arguments

    p = sub.add_parser("data", help="dataset conversion and joint-test building")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    convert = data_sub.add_parser("convert", help="convert a public dataset's layout into a goalclip manifest")
    add_convert_arguments(convert)
    convert.set_defaults(func=run_convert)
    joint = data_sub.add_parser("joint", help="build the global-local joint test set from a test manifest "
                                "and its mined pairs")
    joint.add_argument("--data", required=True, help="test manifest")
    joint.add_argument("--mined", required=True, help="mined pairs of the same test images (goalclip mine)")
    joint.add_argument("--out", required=True, help="joint test manifest to write")
    joint.set_defaults(func=run_joint)
    add_split_parser(data_sub)


def run_convert(args: argparse.Namespace) -> str:
    from goalclip.datasets.adapters import run_convert as convert

    summary = convert(args)
    return (f"converted {summary.get('written')} records ({summary.get('total_skipped', 0)} skipped) -> "
            f"{summary.get('out')}")


def run_joint(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import build_joint_test

    s = build_joint_test(args.data, args.mined, args.out)
    return f"joint test: {s['joint_items']} of {s['images']} images have a local pair -> {s['out']}"


def add_split_parser(data_sub: argparse._SubParsersAction) -> None:
    split_help = "draw a test split from a manifest: seeded sampling that avoids training ids, or a published id list"
    p = data_sub.add_parser(
        "split", help=split_help,
        description=split_help + ". For the papers' DCI protocol: convert DCI with --split all, filter to long "
        "captions (--min-words; the papers keep 7,602 images but do not publish the threshold), then take "
        "--test-size 1999 with a --seed, or reuse the GOAL repo's list with --ids-from datasets/DCI_test.json. "
        "Both outputs keep the manifest's order; a <out-test stem>.split.json records how the split was made.",
    )
    p.add_argument("--data", required=True, help="manifest to split (JSONL)")
    p.add_argument("--out-test", required=True, help="test manifest to write")
    p.add_argument("--out-rest", default=None, help="also write the records not in the test (e.g. the training set)")
    p.add_argument("--test-size", type=int, default=None, help="draw this many test records at random (with --seed)")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draw (default: 0)")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="ids never drawn into the test (e.g. a training manifest); an id list in any --ids-from "
                   "format; repeatable")
    p.add_argument("--ids-from", default=None, metavar="FILE",
                   help="take exactly these test ids instead of drawing: a .jsonl manifest, a .json list of ids or "
                   "of {filename} entries (the GOAL repo's test JSON; the file stem is the id), or a text file "
                   "with one id per line")
    p.add_argument("--min-words", type=int, default=None,
                   help="first keep only records whose longest caption has at least this many words "
                   "(whitespace-separated), e.g. DCI's long-caption subset (default: no filter)")
    p.set_defaults(func=run_split)


def run_split(args: argparse.Namespace) -> str:
    from goalclip.datasets.splits import make_split

    s = make_split(args.data, args.out_test, out_rest=args.out_rest, test_size=args.test_size, seed=args.seed,
                   exclude=args.exclude, ids_from=args.ids_from, min_words=args.min_words)
    rest = f", {s['rest']} rest -> {s['out_rest']}" if s["out_rest"] else ""
    return (f"split {s['records']} records: {s['filtered']} min-words filtered out, {s['test']} test -> "
            f"{s['out_test']}{rest}")
