"""Retrieval metrics against slow, obviously-correct references and hand-computed cases.

The references sort every query's gallery with Python's ``sorted`` and an explicit tie key
(score descending, irrelevant before relevant, lower index first: the documented pessimistic
order) and walk the result with plain loops.
"""

from __future__ import annotations

import math

import pytest
import torch

from goalclip.evaluation.metrics import (
    ground_truth_ranks,
    joint_average_precisions,
    joint_map_at_k,
    recall_at_k,
    similarity,
    top_k_retrieval,
)


def reference_order(scores: list[float], relevant: list[bool]) -> list[int]:
    """Gallery indices best first; among equal scores irrelevant items come first."""
    return sorted(range(len(scores)), key=lambda j: (-scores[j], relevant[j], j))


def reference_queries(
    sim: torch.Tensor, image_groups: list[int], text_groups: list[int], direction: str
) -> list[tuple[list[float], list[bool]]]:
    """(scores, relevance) per query, as plain lists."""
    rows = sim.float().tolist() if direction == "i2t" else sim.float().T.tolist()
    query_groups, gallery_groups = (
        (image_groups, text_groups) if direction == "i2t" else (text_groups, image_groups)
    )
    return [
        (row, [gallery_group == query_group for gallery_group in gallery_groups])
        for row, query_group in zip(rows, query_groups, strict=True)
    ]


def reference_recall(sim: torch.Tensor, text_image: list[int], ks: list[int]) -> dict[str, float]:
    image_groups = list(range(sim.shape[0]))
    result = {}
    for direction in ("i2t", "t2i"):
        first_hits = []
        for scores, relevant in reference_queries(sim, image_groups, text_image, direction):
            order = reference_order(scores, relevant)
            first_hits.append(next(pos for pos, j in enumerate(order, 1) if relevant[j]))
        for k in ks:
            result[f"{direction}@{k}"] = (
                100.0 * sum(rank <= k for rank in first_hits) / len(first_hits)
            )
    return result


def reference_average_precisions(
    sim: torch.Tensor, image_groups: list[int], text_groups: list[int], k: int
) -> dict[str, list[float]]:
    result = {}
    for direction in ("i2t", "t2i"):
        average_precisions = []
        for scores, relevant in reference_queries(sim, image_groups, text_groups, direction):
            order = reference_order(scores, relevant)
            found, total = 0, 0.0
            for position, j in enumerate(order[:k], 1):
                if relevant[j]:
                    found += 1
                    total += found / position
            average_precisions.append(total / min(k, sum(relevant)))
        result[direction] = average_precisions
    return result


def reference_map(
    sim: torch.Tensor, image_groups: list[int], text_groups: list[int], k: int
) -> dict[str, float]:
    per_query = reference_average_precisions(sim, image_groups, text_groups, k)
    return {
        f"{direction}_map@{k}": 100.0 * sum(aps) / len(aps) for direction, aps in per_query.items()
    }


def random_captions(generator: torch.Generator, n_images: int, max_captions: int) -> torch.Tensor:
    """Each image gets 1..max_captions captions, texts in shuffled order."""
    counts = torch.randint(1, max_captions + 1, (n_images,), generator=generator)
    text_image = torch.repeat_interleave(torch.arange(n_images), counts)
    return text_image[torch.randperm(len(text_image), generator=generator)]


def random_sim(generator: torch.Generator, shape: tuple[int, int], ties: bool) -> torch.Tensor:
    """Integer-valued scores (many ties, both zeros) or continuous ones."""
    if ties:
        sim = torch.randint(-2, 3, shape, generator=generator).float()
        return torch.where(torch.rand(shape, generator=generator) < 0.5, sim, -sim)
    return torch.randn(shape, generator=generator)


def assert_metrics_close(actual: dict[str, float], expected: dict[str, float]) -> None:
    assert list(actual) == list(expected)
    for key in expected:
        assert actual[key] == pytest.approx(expected[key], abs=1e-9), key


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [True, False])
def test_recall_matches_reference(seed: int, ties: bool) -> None:
    generator = torch.Generator().manual_seed(seed)
    n_images = int(torch.randint(1, 25, (), generator=generator))
    text_image = random_captions(generator, n_images, max_captions=1 + seed % 5)
    sim = random_sim(generator, (n_images, len(text_image)), ties)
    ks = [1, 2, 5, 10, 1000]
    expected = reference_recall(sim, text_image.tolist(), ks)
    for chunk_elements in (1, 7, 1 << 20):
        assert_metrics_close(
            recall_at_k(sim, text_image, ks, chunk_elements=chunk_elements), expected
        )


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("ties", [True, False])
def test_joint_map_matches_reference(seed: int, ties: bool) -> None:
    generator = torch.Generator().manual_seed(100 + seed)
    n_groups = int(torch.randint(1, 12, (), generator=generator))
    # Every group keeps at least one item of each modality; extra items land in random groups.
    image_groups = torch.cat(
        [torch.arange(n_groups), torch.randint(0, n_groups, (seed,), generator=generator)]
    )
    text_groups = torch.cat(
        [torch.arange(n_groups), torch.randint(0, n_groups, (2 * seed,), generator=generator)]
    )
    image_groups = 10 * image_groups[torch.randperm(len(image_groups), generator=generator)] + 3
    text_groups = 10 * text_groups[torch.randperm(len(text_groups), generator=generator)] + 3
    sim = random_sim(generator, (len(image_groups), len(text_groups)), ties)
    for k in (1, 3, 10, 100):
        expected = reference_map(sim, image_groups.tolist(), text_groups.tolist(), k)
        for chunk_elements in (1, 5, 1 << 20):
            actual = joint_map_at_k(
                sim, image_groups, text_groups, k, chunk_elements=chunk_elements
            )
            assert_metrics_close(actual, expected)
        per_query = reference_average_precisions(
            sim, image_groups.tolist(), text_groups.tolist(), k
        )
        image_aps, text_aps = joint_average_precisions(sim, image_groups, text_groups, k)
        assert image_aps.tolist() == pytest.approx(per_query["i2t"], abs=1e-12)
        assert text_aps.tolist() == pytest.approx(per_query["t2i"], abs=1e-12)


@pytest.mark.parametrize("direction", ["i2t", "t2i"])
@pytest.mark.parametrize("seed", range(6))
def test_top_k_order_and_ranks_match_reference(direction: str, seed: int) -> None:
    generator = torch.Generator().manual_seed(200 + seed)
    text_image = random_captions(generator, n_images=9, max_captions=3)
    sim = random_sim(generator, (9, len(text_image)), ties=True)
    image_groups = torch.arange(9)
    k = 4
    top = top_k_retrieval(sim, image_groups, text_image, k, direction, chunk_elements=11)
    queries = reference_queries(sim, image_groups.tolist(), text_image.tolist(), direction)
    expected_indices = [reference_order(scores, relevant)[:k] for scores, relevant in queries]
    assert top.indices.tolist() == expected_indices
    assert top.hits.tolist() == [
        [relevant[j] for j in order]
        for order, (_, relevant) in zip(expected_indices, queries, strict=True)
    ]
    # The first hit in the list sits exactly at the rank the recall counts.
    ranks = ground_truth_ranks(sim, text_image)[0 if direction == "i2t" else 1]
    for hits, rank in zip(top.hits.tolist(), ranks.tolist(), strict=True):
        assert (hits.index(True) + 1 if True in hits else math.inf) == (
            rank if rank <= k else math.inf
        )


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_precision_sims_rank_like_their_float32_values(dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(7)
    text_image = random_captions(generator, n_images=20, max_captions=5)
    sim = (torch.rand((20, len(text_image)), generator=generator) * 0.05 + 0.3).to(dtype)
    as_float32 = sim.float()
    assert_metrics_close(
        recall_at_k(sim, text_image, [1, 5]),
        reference_recall(as_float32, text_image.tolist(), [1, 5]),
    )
    groups = torch.arange(20)
    assert_metrics_close(
        joint_map_at_k(sim, groups, text_image),
        reference_map(as_float32, groups.tolist(), text_image.tolist(), 10),
    )


def test_recall_hand_computed_one_caption_each() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.3], [0.2, 0.8, 0.85], [0.5, 0.4, 0.1]])
    # image ranks: 1 (0.9 wins), 2 (text 2 beats its 0.8), 3 (0.1 is last); text ranks: 1, 1, 3.
    image_ranks, text_ranks = ground_truth_ranks(sim, torch.tensor([0, 1, 2]))
    assert image_ranks.tolist() == [1, 2, 3]
    assert text_ranks.tolist() == [1, 1, 3]
    recall = recall_at_k(sim, torch.tensor([0, 1, 2]), [1, 2, 3])
    assert recall == pytest.approx(
        {
            "i2t@1": 100 / 3,
            "i2t@2": 200 / 3,
            "i2t@3": 100.0,
            "t2i@1": 200 / 3,
            "t2i@2": 200 / 3,
            "t2i@3": 100.0,
        }
    )


def test_recall_hand_computed_several_captions_with_ties() -> None:
    # texts 0, 1 caption image 0; texts 2, 3 caption image 1.
    sim = torch.tensor([[1.0, 5.0, 4.0, 0.0], [2.0, 3.0, 2.0, 2.0]])
    image_ranks, text_ranks = ground_truth_ranks(sim, torch.tensor([0, 0, 1, 1]))
    # image 0: its caption 1 is the top score. image 1: best caption scores 2, text 1 (3) beats
    # it and text 0 (2) ties it, and an irrelevant tie ranks first: rank 3. Texts 2 and 3 tie
    # each other, but both are relevant, so they do not push each other down.
    assert image_ranks.tolist() == [1, 3]
    # text 0: image 1 (2) beats image 0 (1). text 2: image 0 (4) beats image 1 (2).
    assert text_ranks.tolist() == [2, 1, 2, 1]
    assert recall_at_k(sim, torch.tensor([0, 0, 1, 1]), [1, 2]) == pytest.approx(
        {"i2t@1": 50.0, "i2t@2": 50.0, "t2i@1": 50.0, "t2i@2": 100.0}
    )


def test_constant_sim_is_pessimistic() -> None:
    sim = torch.zeros(4, 8)
    text_image = torch.arange(8) // 2
    # Every image ties with all 6 other captions: rank 7.
    # Every text ties with the 3 other images: rank 4.
    assert recall_at_k(sim, text_image, [1, 6, 7]) == {
        "i2t@1": 0.0,
        "i2t@6": 0.0,
        "i2t@7": 100.0,
        "t2i@1": 0.0,
        "t2i@6": 100.0,
        "t2i@7": 100.0,
    }
    groups = torch.arange(4)
    # i2t: 6 irrelevant then 2 relevant: AP@10 = (1/7 + 2/8) / 2.
    # t2i: 3 irrelevant then 1 relevant: AP@10 = 1/4.
    assert joint_map_at_k(sim, groups, text_image) == pytest.approx(
        {"i2t_map@10": 100 * (1 / 7 + 2 / 8) / 2, "t2i_map@10": 25.0}
    )


def test_joint_map_hand_computed() -> None:
    sim = torch.tensor([[0.9, 0.1, 0.5], [0.2, 0.3, 0.4]])
    image_groups, text_groups = torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    # image 0: relevant, irrelevant, relevant -> (1/1 + 2/3) / 2; image 1: relevant first -> 1.
    # text 0 -> 1; text 1: irrelevant image 1 first -> 1/2; text 2: irrelevant image 0 first -> 1/2.
    assert joint_map_at_k(sim, image_groups, text_groups, k=10) == pytest.approx(
        {"i2t_map@10": 100 * (5 / 6 + 1) / 2, "t2i_map@10": 100 * 2 / 3}
    )
    # k = 1 divides by min(k, R) = 1: image 0's top item is relevant, so its AP@1 is 1.
    assert joint_map_at_k(sim, image_groups, text_groups, k=1) == pytest.approx(
        {"i2t_map@1": 100.0, "t2i_map@1": 100 / 3}
    )


def test_k_larger_than_gallery_and_single_items() -> None:
    sim = torch.tensor([[0.3]])
    assert recall_at_k(sim, torch.tensor([0]), [1, 50]) == {
        "i2t@1": 100.0,
        "i2t@50": 100.0,
        "t2i@1": 100.0,
        "t2i@50": 100.0,
    }
    assert joint_map_at_k(sim, torch.tensor([4]), torch.tensor([4]), k=10) == {
        "i2t_map@10": 100.0,
        "t2i_map@10": 100.0,
    }
    top = top_k_retrieval(
        torch.tensor([[0.1, 0.7, 0.4]]), torch.tensor([0]), torch.tensor([0, 1, 0]), 25, "i2t"
    )
    assert top.indices.tolist() == [[1, 2, 0]]
    assert top.hits.tolist() == [[False, True, True]]


def test_negative_zero_ties_with_zero() -> None:
    sim = torch.tensor([[-0.0, 0.0], [0.0, -0.0]])
    assert recall_at_k(sim, torch.tensor([0, 1]), [1, 2]) == {
        "i2t@1": 0.0,
        "i2t@2": 100.0,
        "t2i@1": 0.0,
        "t2i@2": 100.0,
    }
    assert joint_map_at_k(sim, torch.tensor([0, 1]), torch.tensor([0, 1]), k=2) == {
        "i2t_map@2": 50.0,
        "t2i_map@2": 50.0,
    }


def test_recall_errors() -> None:
    sim = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"image 2 has no caption"):
        recall_at_k(sim, torch.tensor([0, 0, 1, 1]), [1])
    with pytest.raises(ValueError, match=r"text_image\[1\] = 3 is out of range for 3 images"):
        recall_at_k(sim, torch.tensor([0, 3, 1, 2]), [1])
    with pytest.raises(ValueError, match=r"text_image\[0\] = -1 is out of range"):
        recall_at_k(sim, torch.tensor([-1, 0, 1, 2]), [1])
    with pytest.raises(ValueError, match=r"text_image must have shape \(4,\)"):
        recall_at_k(sim, torch.tensor([0, 1, 2]), [1])
    with pytest.raises(TypeError, match="text_image must hold integers"):
        recall_at_k(sim, torch.tensor([0.0, 1.0, 2.0, 2.0]), [1])
    with pytest.raises(ValueError, match="positive int"):
        recall_at_k(sim, torch.tensor([0, 1, 2, 2]), [1, 0])
    with pytest.raises(ValueError, match="ks is empty"):
        recall_at_k(sim, torch.tensor([0, 1, 2, 2]), [])
    with pytest.raises(ValueError, match="sim must be 2-D"):
        recall_at_k(torch.rand(4), torch.tensor([0, 0, 0, 0]), [1])
    with pytest.raises(TypeError, match="floating-point"):
        recall_at_k(torch.ones(3, 4, dtype=torch.long), torch.tensor([0, 1, 2, 2]), [1])
    with pytest.raises(ValueError, match="sim is empty"):
        recall_at_k(torch.rand(0, 0), torch.tensor([], dtype=torch.long), [1])
    with_nan = sim.clone()
    with_nan[2, 1] = float("nan")
    with pytest.raises(ValueError, match="sim contains NaN"):
        recall_at_k(with_nan, torch.tensor([0, 1, 2, 2]), [1], chunk_elements=4)


def test_joint_map_errors() -> None:
    sim = torch.rand(3, 4)
    with pytest.raises(ValueError, match=r"image item 2 \(group 9\) has no text item in its group"):
        joint_map_at_k(sim, torch.tensor([0, 1, 9]), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match=r"text item 3 \(group 7\) has no image item in its group"):
        joint_map_at_k(sim, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1, 7]))
    with pytest.raises(ValueError, match=r"image_groups must have shape \(3,\)"):
        joint_map_at_k(sim, torch.tensor([0, 1]), torch.tensor([0, 1, 1, 0]))
    with pytest.raises(ValueError, match="positive int"):
        joint_map_at_k(sim, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1, 0]), k=0)
    with pytest.raises(ValueError, match="direction must be"):
        top_k_retrieval(sim, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1, 0]), 2, "x2y")  # type: ignore[arg-type]
    with_nan = sim.clone()
    with_nan[0, 3] = float("nan")
    with pytest.raises(ValueError, match="sim contains NaN"):
        joint_map_at_k(with_nan, torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1, 0]))


def test_similarity_of_several_embeddings_per_image_is_their_best_cosine_in_any_chunking():
    torch.manual_seed(0)
    images, texts = torch.randn(7, 3 * 5), torch.randn(4, 5)  # 7 images of 3 query embeddings, 4 texts
    want = [[max(float(images[i, q * 5 : (q + 1) * 5] @ texts[t]) for q in range(3)) for t in range(4)]
            for i in range(7)]
    for chunk in (1, 13, 1 << 26):
        torch.testing.assert_close(similarity(images, texts, chunk_elements=chunk), torch.tensor(want))
    assert torch.equal(similarity(images[:, :5], texts), images[:, :5] @ texts.T)  # one embedding: the product
    with pytest.raises(ValueError, match="width 15 are not whole embeddings of the text width 4"):
        similarity(images, texts[:, :4])
