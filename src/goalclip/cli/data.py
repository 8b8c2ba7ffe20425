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


def run_convert(args: argparse.Namespace) -> str:
    from goalclip.datasets.adapters import run_convert as convert

    summary = convert(args)
    return (f"converted {summary.get('written')} records ({summary.get('total_skipped', 0)} skipped) -> "
            f"{summary.get('out')}")


def run_joint(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import build_joint_test

    s = build_joint_test(args.data, args.mined, args.out)
    return f"joint test: {s['joint_items']} of {s['images']} images have a local pair -> {s['out']}"
