"""``goalclip data``: dataset conversion, sampling, caption scoring and joint-test building."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from goalclip.caption.config import ScoreConfig
from goalclip.cli.common import add_no_progress, positive_int
from goalclip.core.options import add_options, values_from_args
from goalclip.datasets.convert import ADAPTERS, BOX_SOURCES, adapter_options, convert
from goalclip.datasets.long_captions import DCI_CAPTIONS
from goalclip.datasets.sharegpt4v import SHAREGPT4V_FILE


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="dataset conversion and joint-test building")
    data_sub = p.add_subparsers(dest="data_command", required=True)
    converter = data_sub.add_parser("convert", help="convert a public dataset's layout into a goalclip manifest")
    add_convert_arguments(converter)
    converter.set_defaults(func=run_convert)
    joint = data_sub.add_parser("joint", help="build the global-local joint test set from a test manifest "
                                "and its mined pairs")
    joint.add_argument("--data", required=True, help="test manifest")
    joint.add_argument("--mined", required=True, help="mined pairs of the same test images (goalclip mine)")
    joint.add_argument("--out", required=True, help="joint test manifest to write")
    joint.set_defaults(func=run_joint)
    sample = data_sub.add_parser("sample", help="a seeded random sample of images from a folder or manifest")
    sample.add_argument("--data", required=True, help="a folder of images or a manifest (captions not needed)")
    sample.add_argument("--n", type=positive_int, required=True, help="how many images to pick")
    sample.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    sample.add_argument("--out", required=True, help="manifest of the sampled images to write")
    sample.set_defaults(func=run_sample)
    score = data_sub.add_parser("score", help="mean image-caption cosine of a manifest under a CLIP; optionally "
                                "drop records scoring below a threshold",
                                description="Score how well captions match their images: the cosine of each "
                                "image and its (first) caption under a CLIP, averaged over a seeded sample.")
    add_options(score, ScoreConfig)
    score.set_defaults(func=run_score)
    add_split_parser(data_sub)
    add_shard_parser(data_sub)


# argparse dests that are adapter keywords of only some formats; left out of the call when not given.
CONVERT_FORMAT_OPTIONS = (
    "caption", "annotation", "image_root", "crop_root", "max_captions", "restval_into_train", "test_size",
)


def add_convert_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``goalclip data convert``: what every format takes, then the format-specific ones."""
    _add_convert_common(parser)
    _add_convert_format_options(parser)


def _add_convert_common(parser: argparse.ArgumentParser) -> None:
    """The source, the outputs and the skip policy, which every format takes."""
    parser.add_argument(
        "--format",
        required=True,
        choices=list(ADAPTERS),
        help="the dataset's own layout: docci (docci_descriptions.jsonlines + images/), dci "
        "(densely_captioned_images/ with annotations/, photos/, splits.json), urban1k (image/ + "
        "caption/), coco / flickr30k (Karpathy's dataset_coco.json / dataset_flickr30k.json), "
        "sharegpt4v (the ShareGPT4V caption JSON), goal-json (a JSON file from the GOAL repo)",
    )
    parser.add_argument(
        "--root",
        required=True,
        type=Path,
        help="the dataset's folder as downloaded (the folder holding the files named under --format)",
    )
    parser.add_argument(
        "--split",
        required=True,
        help="which part to convert: docci train|test|qual_dev|qual_test, or several joined by + "
        "(test+qual_test: the 5,100-image test); dci train|valid|test|all; "
        "urban1k test; coco train|val|test|restval; flickr30k train|val|test; sharegpt4v "
        "test1k|train; goal-json the file's name (e.g. DCI_test, found in --root or --root/datasets)",
    )
    parser.add_argument(
        "--out",
        required=True,
        type=Path,
        help="manifest to write (JSON Lines; image paths are stored relative to its folder)",
    )
    parser.add_argument(
        "--boxes-out",
        type=Path,
        default=None,
        help=f"{', '.join(BOX_SOURCES)} only: also write the masks' boxes of the written images as external boxes "
        '({"id", "boxes"} per line) for `goalclip mine --regions external` (dci: the annotators\' masks; sa1b: '
        "SAM's masks within the kept area range)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (and --boxes-out); without it an existing file is an error",
    )
    parser.add_argument(
        "--no-check-images",
        dest="check_images",
        action="store_false",
        help="keep records whose image file is missing (by default they are skipped and counted), "
        "e.g. to convert captions before the photos are downloaded",
    )
    parser.add_argument(
        "--allow-skips",
        action="store_true",
        help="write the manifest even when more than half of the records miss their image (by default "
        "that fails, as it usually means a wrong --root or --image-root)",
    )


def _add_convert_format_options(parser: argparse.ArgumentParser) -> None:
    """Options of some formats only; they default to "not given" so each adapter's own default applies."""
    parser.add_argument(
        "--caption",
        choices=DCI_CAPTIONS,
        default=None,
        help="dci only: which text is the long caption: extra (default; extra_caption, as GOAL uses), "
        "short+extra (both, newline-joined), short (short_caption), summary (LLM summary from complete/)",
    )
    parser.add_argument(
        "--annotation",
        type=Path,
        default=None,
        help="coco, flickr30k, sharegpt4v: the caption JSON file when it is not in --root under its "
        f"usual name (dataset_coco.json, dataset_flickr30k.json, {SHAREGPT4V_FILE})",
    )
    parser.add_argument(
        "--image-root",
        type=Path,
        default=None,
        help="coco, flickr30k, sharegpt4v, goal-json: the folder the images are in when it is not "
        "--root (coco: holds train2014/ and val2014/; flickr30k: holds the .jpg files; goal-json: "
        "images are looked up here by file name, ignoring the authors' paths)",
    )
    parser.add_argument(
        "--crop-root",
        type=Path,
        default=None,
        help="goal-json only: the folder holding the authors' crop folders (<image>_results/<crop>.png) "
        "when they are not where the file's relative paths point; crops without a box become crop-file "
        "local items of the joint test",
    )
    parser.add_argument(
        "--max-captions",
        type=int,
        default=None,
        help="coco, flickr30k: captions kept per image, first ones first (default 5, the standard "
        "protocol; 0 keeps all)",
    )
    parser.add_argument(
        "--no-restval",
        dest="restval_into_train",
        action="store_false",
        default=None,
        help="coco only: keep Karpathy's restval images out of --split train (by default train "
        "includes them, the usual 113k-image training set)",
    )
    parser.add_argument(
        "--test-size",
        type=int,
        default=None,
        help="sharegpt4v only: how many leading records form test1k (default 1000, the "
        "ShareGPT4V-1k protocol); train is the rest",
    )


def run_convert(args: argparse.Namespace) -> str:
    """Run ``goalclip data convert``: a flag the format does not take is an error naming the flag."""
    options: dict[str, Any] = {
        name: getattr(args, name) for name in CONVERT_FORMAT_OPTIONS if getattr(args, name, None) is not None
    }
    options["check_images"] = args.check_images
    not_taken = sorted(set(options) - set(adapter_options(args.format)))
    if not_taken:
        flags = ", ".join(
            "--no-restval" if n == "restval_into_train" else "--" + n.replace("_", "-") for n in not_taken
        )
        raise ValueError(f"{flags} do(es) not apply to --format {args.format}")
    summary = convert(
        args.format, args.root, args.split, args.out, boxes_out=args.boxes_out, allow_skips=args.allow_skips,
        **options,
    )
    line = f"converted {summary.written} records ({summary.total_skipped} skipped) -> {summary.out}"
    if summary.boxes_out:
        line += f"; {summary.boxes_written} box lists -> {summary.boxes_out}"
    return line


def run_joint(args: argparse.Namespace) -> str:
    from goalclip.mining.mine import build_joint_test

    s = build_joint_test(args.data, args.mined, args.out)
    return f"joint test: {s['joint_items']} of {s['images']} images have a local pair -> {s['out']}"


def run_sample(args: argparse.Namespace) -> str:
    from goalclip.datasets.sample import sample_images

    s = sample_images(args.data, args.out, args.n, args.seed)
    return f"sampled {s['written']} of {s['available']} images (seed {s['seed']}) -> {s['out']}"


def run_score(args: argparse.Namespace) -> str:
    from goalclip.caption.score import score_manifest

    s = score_manifest(ScoreConfig(**values_from_args(args, ScoreConfig)))
    line = (f"mean image-caption cosine {s['mean_score']:.4f} over {s['scored']} of {s['records']} records "
            f"({s['unreadable']} unreadable, {s['truncated']} captions truncated at {s['context']} tokens)")
    if s["scores_out"]:
        line += f"; scores -> {s['scores_out']}"
    if "kept" in s:
        line += f"; {s['kept']} records scoring >= {s['min_score']} -> {s['out']}"
    return line
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
    p.add_argument("--test-size", type=positive_int, default=None,
                   help="draw this many test records at random (with --seed)")
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


def _size(text: str) -> int:
    """Bytes from ``500000``, ``300K``, ``64M`` or ``1G`` (powers of 1024)."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None or int(match.group(1)) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 500000, 300K, 64M or 1G, got {text!r}")
    return int(match.group(1)) * 1024 ** " KMGT".index(match.group(2).upper() or " ")


def add_shard_parser(data_sub: argparse._SubParsersAction) -> None:
    shard_help = "write a manifest as WebDataset tar shards, which every command reads as --data"
    p = data_sub.add_parser(
        "shard", help=shard_help,
        description=shard_help + ". Each record becomes <key>.json (the record, its image naming the member) and "
        "<key>.<ext> (the image file's bytes), key = the record's position in nine digits, in manifest order; the "
        "shards are OUT-000000.tar, OUT-000001.tar, ... (reproducible byte for byte). Records whose image is "
        "missing or unreadable are skipped and counted. Pass the printed brace pattern "
        "(OUT-{000000..000009}.tar) as --data to train, mine, caption, eval or data score; remote copies "
        "work too (pipe:curl -s https://host/OUT-{000000..000009}.tar, or any fsspec URL).",
    )
    p.add_argument("--data", required=True, help="manifest to shard (JSONL; records need id and image)")
    p.add_argument("--out", required=True, metavar="DIR/PREFIX",
                   help="shard path prefix: DIR/PREFIX-000000.tar, ... are written (DIR is created)")
    p.add_argument("--max-per-shard", type=int, default=1000, metavar="N",
                   help="records per shard at most (default: 1000)")
    p.add_argument("--max-size", type=_size, default=None, metavar="SIZE",
                   help="bytes per shard file at most, e.g. 500000, 300M or 1G (headers and padding counted; a "
                   "record larger than this gets a shard of its own) (default: no limit)")
    p.add_argument("--max-side", type=positive_int, default=None, metavar="N",
                   help="store an image whose longer side exceeds N pixels resized to N (Lanczos; JPEG stays JPEG, "
                   "others become PNG), with its record's local/candidates/objects boxes scaled to match: a "
                   "working resolution for large datasets (default: images as they are)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing OUT-NNNNNN.tar shards (and remove those the new set does not replace); "
                   "without it existing shards are an error")
    add_no_progress(p)
    p.set_defaults(func=run_shard)


def run_shard(args: argparse.Namespace) -> str:
    from goalclip.datasets.shards import write_shards

    s = write_shards(args.data, args.out, max_count=args.max_per_shard, max_size=args.max_size,
                     overwrite=args.overwrite, progress=not args.no_progress, max_side=args.max_side)
    resized = f", {s['resized']} resized to at most {args.max_side} px" if args.max_side else ""
    return (f"sharded {s['written']} records ({s['skipped']} skipped{resized}) into {s['shards']} shards, "
            f"{s['bytes']} bytes -> {s['data']}")
