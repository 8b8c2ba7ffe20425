"""Distance to the limit: a GOAL step vs its towers alone, mining vs its matcher alone.

The limit of a GOAL step is one forward and backward of each tower over the batch: the vision
tower over ``[global images ; crops]``, the text tower over the captions and over the sentences.
``bare towers`` runs exactly that on the same batch (the loss is the sum of the projected
embeddings, so the backward reaches every tower weight); ``goalclip step`` is
``training_step`` forward + backward (losses, TSL pooling, caption token states); ``trainer
iteration`` adds what the loop does around it: the host-to-device copy of the collated batch,
gradient clipping, the AdamW step, ``zero_grad`` and the logit-scale clamp. Overhead % =
time / bare towers - 1.

The limit of mining is the matcher's forward over the crops and the sentences. ``bare matcher``
embeds already-processed crop pixels and already-tokenised sentences, in the same chunks
``mine_batch`` uses; ``mine_batch`` does everything from decoded images to matches: FLISM
regions (true boxes + the 5 grid boxes, as the demo mines), sentence splitting, cropping, the
image processor, tokenisation, the forwards and matching.

Shapes: ``tiny`` = the demo's model (width 64, 4 layers, 64 px, patch 8); ``vit-b16`` = real
ViT-B/16 shapes with random weights (text 512 x 12 stretched to 248 positions, OpenAI's BPE via
open_clip). Variants run interleaved in one process after a warm-up; medians and paired ratios.

    python benchmarks/limit.py --shapes tiny
    python benchmarks/limit.py --shapes vit-b16
    python benchmarks/limit.py --shapes tiny --profile train   # cProfile of the goalclip step
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
from _common import interleaved, machine_facts, markdown_table, print_facts
from train_step import WEIGHTS, build_real_clip, build_setup, load_setup

from goalclip.core.images import load_rgb, pixel_values
from goalclip.core.records import read_manifest
from goalclip.core.text import clean_text, split_sentences
from goalclip.demo.tiny import build_tiny_clip
from goalclip.demo.scene import WorldConfig
from goalclip.demo.world import generate_world, vocabulary
from goalclip.mining.mine import mine_batch
from goalclip.mining.regions import build_proposer
from goalclip.models.clip import ClipBundle, image_forward, text_forward
from goalclip.models.embed import embed_pixels, embed_token_ids, tokenize
from goalclip.training.optimizer import build_optimizer
from goalclip.training.step import clamp_logit_scale, training_step

SHAPES = {
    # batch / timed rounds for the step; images / rounds for mining (a ViT-B/16 pass on 2 cores takes seconds)
    "tiny": {"batch": 32, "rounds": 15, "images": 64, "mine_rounds": 11},
    "vit-b16": {"batch": 4, "rounds": 3, "images": 4, "mine_rounds": 3},
}


# ------------------------------------------------------------------------------------- training


def bare_towers(model, batch: dict[str, torch.Tensor]) -> None:
    """The step's limit: each tower forward and backward once over the batch, nothing else."""
    image_emb, _ = image_forward(model, batch["pixel_values"])
    caption_emb, _ = text_forward(model, batch["caption_ids"], batch["caption_mask"])
    sentence_emb, _ = text_forward(model, batch["sentence_ids"], batch["sentence_mask"])
    (image_emb.sum() + caption_emb.sum() + sentence_emb.sum()).backward()
    model.zero_grad(set_to_none=True)


def goal_step(model, batch: dict[str, torch.Tensor]) -> None:
    loss, _ = training_step(model, batch, "goal", WEIGHTS)
    loss.backward()
    model.zero_grad(set_to_none=True)


def trainer_iteration(model, host_batch: dict[str, torch.Tensor], optimizer, device: str) -> None:
    """What ``Trainer.run`` does per batch (single process, fp32, the default recipe's clip at 1.0)."""
    batch = {k: v.to(device, non_blocking=True) for k, v in host_batch.items()}
    loss, _ = training_step(model, batch, "goal", WEIGHTS)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    clamp_logit_scale(model)


def train_section(shapes: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = SHAPES[shapes]
    batch_size = args.batch_size or spec["batch"]
    with tempfile.TemporaryDirectory(prefix="goalclip-limit-") as tmp:
        loaded = load_setup(build_setup(shapes, batch_size, Path(tmp)), batch_size, args.device)
    model = loaded.bundle.model.train()
    batch = loaded.ours
    host = {k: v.cpu().pin_memory() if args.device.startswith("cuda") else v.cpu() for k, v in batch.items()}
    optimizer = build_optimizer(model, 5e-6, 0.05, decay_all=False)
    variants = {
        "bare towers": lambda: bare_towers(model, batch),
        "goalclip step": lambda: goal_step(model, batch),
        "trainer iteration": lambda: trainer_iteration(model, host, optimizer, args.device),
    }
    if args.profile == "train":
        _profile(variants["goalclip step"])
    timer = interleaved(variants, rounds=args.rounds or spec["rounds"], warmup=1, device=args.device, log=False)
    shape = (f"batch {batch_size}: vision over {batch['pixel_values'].shape[0]} images, captions padded to "
             f"{batch['caption_ids'].shape[1]}, sentences to {batch['sentence_ids'].shape[1]} tokens")
    return _summary("train", shapes, shape, timer, "bare towers", batch_size)


# --------------------------------------------------------------------------------------- mining


def _mining_bundle(shapes: str, texts: list[str]) -> ClipBundle:
    if shapes == "tiny":
        return build_tiny_clip(texts, width=64, layers=4, projection_dim=64, image_size=64, patch_size=8,
                               context_length=32, seed=0)
    return build_real_clip("vit-b16", 0)


def mining_section(shapes: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = SHAPES[shapes]
    n = args.images or spec["images"]
    with tempfile.TemporaryDirectory(prefix="goalclip-limit-mine-") as tmp:
        world = generate_world(Path(tmp) / "world", WorldConfig(n_pretrain=0, n_train=n, n_test=2, seed=0))
        records = read_manifest(world.train)
        images = [load_rgb(r["image"]) for r in records]
    bundle = _mining_bundle(shapes, [r["caption"] for r in records] + [" ".join(vocabulary())])
    device = torch.device(args.device)
    bundle.model.to(device).eval()
    proposer = build_proposer("flism", boxes={r["id"]: [o["box"] for o in r["objects"]] for r in records})
    chunk = args.crop_batch_size

    # The bare matcher's inputs, prepared untimed: the crops' pixels and the sentences' tokens, in
    # the chunks mine_batch embeds them in (all images in one call; texts longest first).
    regions = proposer.propose(images, [r["id"] for r in records])
    crops = [image.crop(tuple(round(v) for v in reg.box)) for image, regs in zip(images, regions) for reg in regs]
    sentences = [s.text for r in records for s in split_sentences(clean_text(r["caption"]))]
    pixels = [pixel_values(bundle.image_processor, crops[i : i + chunk]).to(device)
              for i in range(0, len(crops), chunk)]
    by_length = sorted(sentences, key=len, reverse=True)
    tokens = [tokenize(bundle, by_length[i : i + chunk]).to(device) for i in range(0, len(by_length), chunk)]

    def bare() -> None:
        for p in pixels:
            embed_pixels(bundle.model, p)
        for t in tokens:
            embed_token_ids(bundle.model, t["input_ids"], t["attention_mask"])

    def mined() -> None:
        mine_batch(bundle, proposer, records, images, top_k=5, crop_batch_size=chunk, device=device)

    variants = {"bare matcher": bare, "mine_batch": mined}
    if args.profile == "mine":
        _profile(mined)
    timer = interleaved(variants, rounds=args.rounds or spec["mine_rounds"], warmup=1, device=args.device, log=False)
    shape = f"{n} images, {len(crops)} crops, {len(sentences)} sentences, chunks of {chunk}"
    return _summary("mine", shapes, shape, timer, "bare matcher", n)


# ------------------------------------------------------------------------------------- reporting


def _profile(function) -> None:
    function()  # warm
    profiler = cProfile.Profile()
    profiler.runcall(function)
    pstats.Stats(profiler).sort_stats("tottime").print_stats(20)


def _summary(section: str, shapes: str, shape: str, timer, limit: str, items: int) -> dict[str, Any]:
    rows = {}
    for name in timer.times:
        median = timer.median(name)
        rows[name] = {"median_ms": round(median * 1e3, 2), "items_per_s": round(items / median, 2),
                      "overhead_pct": round((median / timer.median(limit) - 1) * 100, 1),
                      "overhead_paired_pct": round((timer.paired_ratio(name, limit) - 1) * 100, 1)}
    return {"section": section, "shapes": shapes, "shape": shape, "limit": limit, "rows": rows}


def print_summary(result: dict[str, Any]) -> None:
    unit = "samples/s" if result["section"] == "train" else "images/s"
    print(f"\n### {result['section']}, `--shapes {result['shapes']}` ({result['shape']})\n")
    table = [[name, f"{r['median_ms']:.1f}", r["items_per_s"], f"{r['overhead_pct']:+.1f}%",
              f"{r['overhead_paired_pct']:+.1f}%"] for name, r in result["rows"].items()]
    print(markdown_table(["variant", "median ms", unit, f"overhead vs {result['limit']} (of medians)",
                          "(median of per-round ratios)"], table))


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--sections", default="train,mine", help="comma-separated: train, mine (default: both)")
    parser.add_argument("--batch-size", type=int, default=None, help="training batch (default: 32 tiny, 4 vit-b16)")
    parser.add_argument("--images", type=int, default=None, help="images mined (default: 64 tiny, 4 vit-b16)")
    parser.add_argument("--crop-batch-size", type=int, default=256, help="crops per forward (MineConfig default)")
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--profile", choices=("train", "mine"), default=None,
                        help="print a cProfile of one goalclip step / mine_batch call before timing")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    facts = machine_facts(args.device)
    print_facts(facts)
    sections = {"train": train_section, "mine": mining_section}
    results = []
    for name in args.sections.split(","):
        results.append(sections[name](args.shapes, args))
        print_summary(results[-1])
    if args.out is not None:
        args.out.write_text(json.dumps({"machine": facts, "results": results}, indent=2))
    return results


if __name__ == "__main__":
    main()
