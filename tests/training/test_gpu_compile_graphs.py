"""``goalclip train --compile`` compiles a shape-stable region: no recompiles as chunks and pair counts vary.

Compiling the whole step guarded on chunk bounds, on which streams a chunk holds and on the pair count
(after a ``.tolist()`` graph break), so every new batch compiled again until torch gave up and ran eager.
A counting backend (no code generation, so this runs on CPU in seconds) records every graph compiled.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import pytest
import torch

from goalclip.cli import main


@pytest.fixture(scope="module")
def uneven_pairs(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's pairs, with a second (grid) pair on every third image: batches differ in pair count."""
    records = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    for i, record in enumerate(records):
        record["image"] = str(tiny_world.root / record["image"])
        record["candidates"] = [record["local"]] + [
            {"sentence": "The picture has a plain white background.", "box": [0, 0, 16, 16], "score": 0.2,
             "source": "grid"}] * (i % 3 == 0)
    path = tmp_path_factory.mktemp("compile") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.mark.parametrize("chunking", [[], ["--grad-cache-chunk", "3"]], ids=["plain", "grad-cache"])
def test_compile_makes_a_fixed_few_graphs_whatever_the_chunks_and_pair_counts(tiny_world, uneven_pairs, tmp_path,
                                                                               monkeypatch, chunking):
    """Per grad mode (gradient caching encodes once without gradients): one graph for the vision encoder and
    two for the text encoder (transformers passes no attention mask when no row of a batch is padded)."""
    graphs = []

    def counting(graph, example_inputs):
        graphs.append(graph)
        return graph.forward

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=counting))
    out = tmp_path / "run"
    assert main(["train", "--model", str(tiny_world.model), "--data", str(uneven_pairs), "--out", str(out),
                 "--method", "goal", "--local-pairs", "2", "--batch-size", "4", "--max-steps", "4", "--compile",
                 "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0", "--no-progress",
                 "--log-every", "1", "--no-epoch-checkpoints", *chunking]) == 0
    pairs = {json.loads(line)["local_pairs"] for line in (out / "metrics.jsonl").read_text().splitlines()}
    assert len(pairs) > 1  # batches did differ in pair count
    assert len(graphs) <= 3 * (2 if chunking else 1)
