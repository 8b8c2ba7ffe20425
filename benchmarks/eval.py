"""Vectorised retrieval metrics vs. per-query Python loops, on synthetic similarity matrices.

The loop baselines are written the way the reference evaluation code does it: one query at a
time, a full argsort per query turned into a Python list, ``list.index`` to find where each
relevant item landed, Python lists of ranks. They run on a random subset of queries and their
time is extrapolated linearly to all queries (the printed notes say so); the metric values of both
implementations are compared on that same subset.

    python benchmarks/eval.py                       # defaults: about a minute on 2 CPU cores
    python benchmarks/eval.py --baseline-queries 0  # every query in the baselines (~10 minutes)

Similarities come from random unit embeddings with noisy copies as captions, so recalls sit in a
realistic range and exact ties are as rare as in a real float32 model; the baselines' argsort
breaks ties arbitrarily, the metrics pessimistically, which may differ only on exact ties.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

# On a busy shared machine, OpenMP threads spinning while they wait for a descheduled sibling make
# every parallel torch op several times slower (measured: 10 s instead of 0.9 s for the COCO-like
# case at load 7 on 2 cores). Passive waiting, as in the tests, measures the code rather than the
# neighbours; set OMP_WAIT_POLICY yourself to override. It applies to both implementations.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from goalclip.evaluation.metrics import (  # noqa: E402
    ground_truth_ranks,
    joint_average_precisions,
    joint_map_at_k,
    recall_at_k,
)


@dataclass
class Row:
    case: str
    baseline_s: float
    ours_s: float
    max_abs_diff: float
    note: str


def timed(function: Callable[[], object], repeats: int) -> tuple[float, object]:
    """Median wall time of ``repeats`` runs after one warm-up run, and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


# --- Loop baselines, in the reference code's style ------------------------------------------


def loop_image_to_text_ranks(
    sim: torch.Tensor, text_image: list[int], queries: list[int]
) -> list[int]:
    """0-based rank of each queried image's best caption: argsort, tolist, list.index."""
    image_texts: dict[int, list[int]] = {}
    for text, image in enumerate(text_image):
        image_texts.setdefault(image, []).append(text)
    ranks = []
    for image in queries:
        order = torch.argsort(sim[image], descending=True).tolist()
        rank = len(order)
        for text in image_texts[image]:
            rank = min(rank, order.index(text))
        ranks.append(rank)
    return ranks


def loop_text_to_image_ranks(
    sim: torch.Tensor, text_image: list[int], queries: list[int]
) -> list[int]:
    """0-based rank of each queried text's image: argsort of the column, tolist, list.index."""
    ranks = []
    for text in queries:
        order = torch.argsort(sim[:, text], descending=True).tolist()
        ranks.append(order.index(text_image[text]))
    return ranks


def loop_recall(ranks: list[int], ks: list[int]) -> list[float]:
    return [100.0 * len([rank for rank in ranks if rank < k]) / len(ranks) for k in ks]


def loop_average_precisions(
    scores: torch.Tensor,
    query_groups: list[int],
    gallery_groups: list[int],
    queries: list[int],
    k: int,
) -> list[float]:
    """AP@k per query: argsort, tolist, a relevant list by scanning the gallery, list.index."""
    average_precisions = []
    for query in queries:
        order = torch.argsort(scores[query], descending=True).tolist()
        relevant = [
            j for j in range(len(gallery_groups)) if gallery_groups[j] == query_groups[query]
        ]
        positions = sorted(order.index(j) for j in relevant)
        total = 0.0
        for found, position in enumerate(positions, 1):
            if position < k:
                total += found / (position + 1)
        average_precisions.append(total / min(k, len(relevant)))
    return average_precisions


# --- Synthetic similarity matrices -----------------------------------------------------------


def unit(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)


def perturbed(x: torch.Tensor, noise: float, generator: torch.Generator) -> torch.Tensor:
    """Unit rows ``x`` moved by ``noise`` times a random unit direction, renormalised."""
    return unit(x + noise * unit(torch.randn(x.shape, generator=generator)))


def retrieval_sim(
    n_images: int, captions_per_image: int, dim: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and noisy-copy captions; texts in shuffled order, as in a real manifest."""
    images = unit(torch.randn(n_images, dim, generator=generator))
    text_image = torch.arange(n_images).repeat_interleave(captions_per_image)
    text_image = text_image[torch.randperm(len(text_image), generator=generator)]
    return images @ perturbed(images[text_image], noise, generator).T, text_image


def joint_sim(
    n_sources: int, dim: int, noise: float, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A global and a local image item and a global and a local text item per source.

    Both sides are noisy here, each with half the caption noise (mAP@10 near 30% at 4.0).
    """
    sources = unit(torch.randn(n_sources, dim, generator=generator))
    # A local crop and its sentence show one part of the source: the same offset for both.
    items = torch.cat([sources, perturbed(sources, 1.0, generator)])
    groups = torch.arange(n_sources).repeat(2)
    images, texts = (perturbed(items, noise / 2, generator) for _ in range(2))
    return images @ texts.T, groups, groups.clone()


def sample_queries(n: int, wanted: int, generator: torch.Generator) -> list[int]:
    if wanted <= 0 or wanted >= n:
        return list(range(n))
    return sorted(torch.randperm(n, generator=generator)[:wanted].tolist())


def subset_note(
    image_queries: list[int], n_images: int, text_queries: list[int], n_texts: int
) -> str:
    if len(image_queries) == n_images and len(text_queries) == n_texts:
        return "baseline on all queries"
    return (
        f"baseline on {len(image_queries)}/{n_images} image and {len(text_queries)}/{n_texts} "
        "text queries, time extrapolated linearly; values compared on that subset"
    )


# --- Cases ------------------------------------------------------------------------------------


def recall_case(
    name: str,
    sim: torch.Tensor,
    text_image: torch.Tensor,
    ks: list[int],
    args: argparse.Namespace,
    generator: torch.Generator,
) -> Row:
    n_images, n_texts = sim.shape
    image_queries = sample_queries(n_images, args.baseline_queries, generator)
    text_queries = sample_queries(n_texts, args.baseline_queries, generator)
    text_image_list = text_image.tolist()

    image_s, image_ranks = timed(
        lambda: loop_image_to_text_ranks(sim, text_image_list, image_queries), args.baseline_repeats
    )
    text_s, text_ranks = timed(
        lambda: loop_text_to_image_ranks(sim, text_image_list, text_queries), args.baseline_repeats
    )
    baseline_s = image_s * n_images / len(image_queries) + text_s * n_texts / len(text_queries)
    ours_s, _ = timed(lambda: recall_at_k(sim, text_image, ks), args.repeats)

    # Same numbers on the baseline's subset: our per-query ranks, restricted to it.
    ours_image, ours_text = ground_truth_ranks(sim, text_image)
    differences = []
    for loop_ranks, our_ranks, queries in (
        (image_ranks, ours_image, image_queries),
        (text_ranks, ours_text, text_queries),
    ):
        ours_subset = (our_ranks[queries] - 1).tolist()
        differences += [
            abs(a - b)
            for a, b in zip(loop_recall(loop_ranks, ks), loop_recall(ours_subset, ks), strict=True)
        ]
    full = recall_at_k(sim, text_image, ks)
    print(f"  {name}: " + ", ".join(f"{key} {value:.2f}" for key, value in full.items()))
    return Row(
        name,
        baseline_s,
        ours_s,
        max(differences),
        subset_note(image_queries, n_images, text_queries, n_texts),
    )


def joint_case(
    name: str,
    sim: torch.Tensor,
    image_groups: torch.Tensor,
    text_groups: torch.Tensor,
    k: int,
    args: argparse.Namespace,
    generator: torch.Generator,
) -> Row:
    n_images, n_texts = sim.shape
    image_queries = sample_queries(n_images, args.baseline_queries, generator)
    text_queries = sample_queries(n_texts, args.baseline_queries, generator)
    image_list, text_list = image_groups.tolist(), text_groups.tolist()
    sim_t = sim.T

    image_s, image_aps = timed(
        lambda: loop_average_precisions(sim, image_list, text_list, image_queries, k),
        args.baseline_repeats,
    )
    text_s, text_aps = timed(
        lambda: loop_average_precisions(sim_t, text_list, image_list, text_queries, k),
        args.baseline_repeats,
    )
    baseline_s = image_s * n_images / len(image_queries) + text_s * n_texts / len(text_queries)
    ours_s, _ = timed(lambda: joint_map_at_k(sim, image_groups, text_groups, k), args.repeats)

    ours_image, ours_text = joint_average_precisions(sim, image_groups, text_groups, k)
    differences = []
    for loop_aps, our_aps, queries in (
        (image_aps, ours_image, image_queries),
        (text_aps, ours_text, text_queries),
    ):
        loop_map = 100.0 * sum(loop_aps) / len(loop_aps)
        differences.append(abs(loop_map - 100.0 * float(our_aps[queries].mean())))
    full = joint_map_at_k(sim, image_groups, text_groups, k)
    print(f"  {name}: " + ", ".join(f"{key} {value:.2f}" for key, value in full.items()))
    return Row(
        name,
        baseline_s,
        ours_s,
        max(differences),
        subset_note(image_queries, n_images, text_queries, n_texts),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=5000, help="images in the retrieval cases")
    parser.add_argument(
        "--coco-captions", type=int, default=5, help="captions per image in the COCO-like case"
    )
    parser.add_argument(
        "--joint-sources", type=int, default=2000, help="sources in the joint case (2 items each)"
    )
    parser.add_argument("--dim", type=int, default=256, help="embedding width")
    parser.add_argument(
        "--noise",
        type=float,
        default=4.0,
        help="caption noise relative to the image vector (4.0: DOCCI-like R@1 near 60%%)",
    )
    parser.add_argument(
        "--baseline-queries",
        type=int,
        default=400,
        help="queries per direction timed in the loop baselines (0 = all)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of ours (median)")
    parser.add_argument(
        "--baseline-repeats", type=int, default=3, help="timed runs of the baselines (median)"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}, "
        f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}"
    )
    if hasattr(os, "getloadavg"):
        print(f"load average at start: {os.getloadavg()[0]:.2f}")
    print("metric values (ours, all queries):")
    rows = []
    sim, text_image = retrieval_sim(args.images, 1, args.dim, args.noise, generator)
    rows.append(
        recall_case(
            f"DOCCI-like recall {args.images}x{len(text_image)} (K=1,5,25,50)",
            sim,
            text_image,
            [1, 5, 25, 50],
            args,
            generator,
        )
    )
    sim, text_image = retrieval_sim(
        args.images, args.coco_captions, args.dim, args.noise, generator
    )
    rows.append(
        recall_case(
            f"COCO-like recall {args.images}x{len(text_image)} (K=1,5,10)",
            sim,
            text_image,
            [1, 5, 10],
            args,
            generator,
        )
    )
    del sim
    sim, image_groups, text_groups = joint_sim(args.joint_sources, args.dim, args.noise, generator)
    rows.append(
        joint_case(
            f"joint mAP@10 {sim.shape[0]}x{sim.shape[1]}",
            sim,
            image_groups,
            text_groups,
            10,
            args,
            generator,
        )
    )

    print()
    print("| case | baseline (s) | ours (s) | ratio | max abs diff (points) |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row.case} | {row.baseline_s:.2f} | {row.ours_s:.3f} | "
            f"{row.baseline_s / row.ours_s:.0f}x | {row.max_abs_diff:.2g} |"
        )
    print()
    for row in rows:
        print(f"- {row.case}: {row.note}")
    print(
        f"- times: wall clock (time.perf_counter), one warm-up run, median of {args.repeats} runs "
        f"(ours) / {args.baseline_repeats} runs (baselines); ours covers both directions on all "
        "queries"
    )


if __name__ == "__main__":
    main()
