"""Local pair mining: goalclip's batched ``mine_batch`` vs a per-image loop, same model and data.

Batched (ours): ``goalclip.mining.mine_batch`` over batches of many images: every crop of the
batch goes through one image-processor call and one vision forward per ``crop_batch_size``
chunk, every sentence of the batch through one tokeniser call and one text forward.

Per-image loop (the public GOAL miner's structure: one CLIP call per image over that image's
crops and sentences): the same proposer, sentence splitter, processor, model, embedding and
matching functions, called one image at a time.

Data: the synthetic world of ``goalclip.demo.world`` (the demo's: 128 px images, 3-5 shapes, one
sentence per shape plus a scene sentence); regions = FLISM with the world's true boxes standing
in for the detector (external boxes + the 5 grid boxes), as the demo mines. Model: the demo's
size (width 64, 4 layers, 64 px, patch 8, context 32), random init. Images are decoded before
timing (both variants get the same PIL images); both are timed interleaved in one process.

    python benchmarks/mining.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
from _common import interleaved, machine_facts, markdown_table, print_facts

from goalclip.core.images import load_rgb, pixel_values
from goalclip.core.manifest import captions_of
from goalclip.core.records import read_manifest
from goalclip.mining.mine import Match, match_pairs, mine_batch
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models.clip import ClipBundle
from goalclip.models.embed import embed_pixels, embed_token_ids, tokenize
from goalclip.mining.proposers import RegionProposer
from goalclip.mining.regions import build_proposer
from goalclip.demo.scene import WorldConfig
from goalclip.demo.world import generate_world, vocabulary
from goalclip.core.text import clean_text, split_sentences


def mine_batched(bundle: ClipBundle, proposer: RegionProposer, records, images, *, batch_size: int,
                 crop_batch_size: int, top_k: int, device: torch.device) -> list[Match | None]:
    out: list[Match | None] = []
    for start in range(0, len(records), batch_size):
        results = mine_batch(bundle, proposer, records[start : start + batch_size], images[start : start + batch_size],
                             top_k=top_k, crop_batch_size=crop_batch_size, device=device)
        out.extend(match for _, match, _ in results)
    return out


def mine_per_image(bundle: ClipBundle, proposer: RegionProposer, records, images, *, top_k: int,
                   device: torch.device, keep_similarity: bool = False) -> list:
    """One image at a time: its regions, its sentences, one crop forward and one text forward.

    With ``keep_similarity`` each item is ``(match, similarity, sentences, regions)`` (for the check).
    """
    out: list = []
    for record, image in zip(records, images):
        regions = proposer.propose([image], [record["id"]])[0]
        sentences = [s.text for s in split_sentences(clean_text(captions_of(record)[0]))]
        if not regions or not sentences:
            out.append((None, None, sentences, regions) if keep_similarity else None)
            continue
        crops = [image.crop(tuple(round(v) for v in region.box)) for region in regions]
        crop_emb = embed_pixels(bundle.model, pixel_values(bundle.image_processor, crops).to(device))
        tokens = tokenize(bundle, sentences)
        text_emb = embed_token_ids(bundle.model, tokens["input_ids"].to(device), tokens["attention_mask"].to(device))
        similarity = text_emb @ crop_emb.T
        match = match_pairs(similarity, sentences, regions, top_k)
        out.append((match, similarity.cpu(), sentences, regions) if keep_similarity else match)
    return out


def _key(candidate: dict) -> tuple:
    return candidate["sentence"], tuple(candidate["box"]), candidate["source"]


def compare(batched: list[Match | None], looped: list, tie: float) -> dict[str, float | int]:
    """Same best pair and same ranked candidates per image?

    Every pair the batched run reports is scored again with the per-image similarity matrix:
    ``max_score_diff`` is the largest difference (scores are rounded to 1e-6 by ``match_pairs``).
    A different pick counts as a tie when, in the per-image matrix, the batched pick scores
    within ``tie`` of the per-image pick (two regions the model cannot tell apart).
    """
    same_best = same_candidates = best_ties = candidate_ties = 0
    max_diff = 0.0
    for a, (b, similarity, sentences, regions) in zip(batched, looped):
        if a is None or b is None:
            same_best += a is b
            same_candidates += a is b
            continue
        boxes = [tuple(round(v, 2) for v in r.box) for r in regions]

        def per_image_score(candidate: dict, similarity=similarity, sentences=sentences, boxes=boxes) -> float:
            return float(similarity[sentences.index(candidate["sentence"]), boxes.index(tuple(candidate["box"]))])

        for candidate in a.candidates:
            max_diff = max(max_diff, abs(candidate["score"] - per_image_score(candidate)))
        if _key(a.candidates[0]) == _key(b.candidates[0]):
            same_best += 1
        elif abs(per_image_score(a.candidates[0]) - b.candidates[0]["score"]) <= tie:
            best_ties += 1
        if [_key(c) for c in a.candidates] == [_key(c) for c in b.candidates]:
            same_candidates += 1
        elif all(abs(per_image_score(ca) - cb["score"]) <= tie for ca, cb in zip(a.candidates, b.candidates)):
            candidate_ties += 1
    return {"images": len(batched), "same_best": same_best, "best_ties": best_ties,
            "same_candidates": same_candidates, "candidate_ties": candidate_ties, "max_score_diff": max_diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32, help="images per mine_batch call (MineConfig default)")
    parser.add_argument("--crop-batch-size", type=int, default=256, help="crops per forward (MineConfig default)")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=11, help="timed passes over all images, per variant")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tie", type=float, default=2e-6,
                        help="score gap under which two different picks count as a tie (scores are rounded to 1e-6)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    facts = machine_facts(args.device)
    print_facts(facts)

    with tempfile.TemporaryDirectory(prefix="goalclip-bench-mine-") as tmp:
        world = generate_world(Path(tmp) / "world", WorldConfig(n_pretrain=0, n_train=args.images, n_test=2,
                                                                 seed=args.seed))
        records = read_manifest(world.train)
        images = [load_rgb(r["image"]) for r in records]
    boxes = {r["id"]: [o["box"] for o in r["objects"]] for r in records}
    texts = [r["caption"] for r in records] + [" ".join(vocabulary())]
    bundle = build_tiny_clip(texts, width=64, layers=4, projection_dim=64, image_size=64, patch_size=8,
                             context_length=32, seed=args.seed)
    bundle.model.to(device).eval()
    proposer = build_proposer("flism", boxes=boxes)
    n_regions = sum(len(r) for r in proposer.propose(images, [r["id"] for r in records]))
    n_sentences = sum(len(split_sentences(clean_text(r["caption"]))) for r in records)
    print(f"{len(records)} images, {n_regions} regions ({n_regions / len(records):.1f}/image: true boxes + 5 grid), "
          f"{n_sentences} sentences ({n_sentences / len(records):.1f}/image); batch {args.batch_size} images, "
          f"crop chunks of {args.crop_batch_size}", flush=True)

    def batched():
        return mine_batched(bundle, proposer, records, images, batch_size=args.batch_size,
                            crop_batch_size=args.crop_batch_size, top_k=args.top_k, device=device)

    def looped():
        return mine_per_image(bundle, proposer, records, images, top_k=args.top_k, device=device)

    check = compare(batched(), mine_per_image(bundle, proposer, records, images, top_k=args.top_k, device=device,
                                              keep_similarity=True), tie=args.tie)
    summary = (f"best pair identical for {check['same_best']}/{check['images']} images "
               f"(+{check['best_ties']} exact tie(s): a different region scoring the same within {args.tie:g}), "
               f"ranked top-{args.top_k} candidates identical for {check['same_candidates']}/{check['images']} "
               f"(+{check['candidate_ties']} with ties); every batched score equals the per-image score within "
               f"{check['max_score_diff']:.1e}")
    print(f"check: {summary}", flush=True)
    print(f"timing: {args.warmup} warm-up pass(es) each untimed, then {args.rounds} interleaved passes each",
          flush=True)
    timer = interleaved({"per-image": looped, "batched": batched}, rounds=args.rounds, warmup=args.warmup,
                        device=args.device)

    n = len(records)
    t_loop, t_batch = timer.median("per-image"), timer.median("batched")
    rows = []
    for name, label in (("per-image", "per-image loop"), ("batched", f"`mine_batch`, {args.batch_size} images/call")):
        lo, hi = timer.spread(name)
        rows.append([label, f"{timer.median(name) * 1e3:.0f}", f"{lo * 1e3:.0f}-{hi * 1e3:.0f}",
                     f"{n / timer.median(name):.1f}"])
    rows.append(["**speed-up of batched (ratio of medians)**", f"**{t_loop / t_batch:.2f}x**", "",
                 f"**{t_loop / t_batch:.2f}x**"])
    rows.append(["speed-up, median of per-round ratios", f"{timer.paired_ratio('per-image', 'batched'):.2f}x", "", ""])
    load = ", ".join(str(x) for x in facts["load_avg_1_5_15"])
    print()
    print(f"### Mining, {n} images, FLISM (true boxes + grid), demo-size model ({args.device}, torch "
          f"{facts['torch']}, nproc {facts['nproc']}, {facts['torch_threads']} threads, load avg {load})")
    print()
    print(markdown_table(["variant", f"median ms per {n} images", "min-max ms", "images/s"], rows))
    print()
    print(f"Same pairs: {summary}.")


if __name__ == "__main__":
    main()
