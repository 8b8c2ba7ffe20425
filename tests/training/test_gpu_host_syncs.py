"""The plain training step plans its single chunk without reading pair owners back to the host.

On a GPU, ``pair_owner.tolist()`` waits for every kernel queued before it: once per step, for a plan that,
with one chunk, needs no owner at all (every pair is in it). A tensor whose ``tolist`` fails stands in for
the sync, which a CPU cannot show.
"""

from __future__ import annotations

import pytest
import torch

from goalclip.training.gradcache import plan_chunks


class _NoHostReads(torch.Tensor):
    def tolist(self):
        raise AssertionError("pair_owner was read back to the host")


def _batch(owners: list[int], images: int) -> dict[str, torch.Tensor]:
    pairs = len(owners)
    return {"pixel_values": torch.zeros(images + pairs, 3, 2, 2), "caption_ids": torch.zeros(images, 4),
            "sentence_ids": torch.zeros(pairs, 3), "pair_owner": torch.tensor(owners)}


@pytest.mark.parametrize("captions", [True, False])
def test_a_whole_batch_plan_reads_no_pair_owner(captions):
    batch = _batch([0, 0, 1, 2, 2, 2], images=3)
    expected = plan_chunks(batch, None, captions=captions, sentences=True)
    batch["pair_owner"] = batch["pair_owner"].as_subclass(_NoHostReads)
    assert plan_chunks(batch, None, captions=captions, sentences=True) == expected
    [whole] = expected
    assert (whole.image_pairs, whole.caption_pairs) == (slice(0, 6), slice(0, 6) if captions else None)
