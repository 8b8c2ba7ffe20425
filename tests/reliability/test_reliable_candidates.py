"""train --local-pairs K: a mining candidate with a box that is not finite is passed over and counted
before the model loads, like an invalid best pair (case 9 of issue 21)."""

from __future__ import annotations

import json
import logging

from goalclip.cli import main

TINY = ["--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0", "--no-progress", "--batch-size", "2"]


def test_a_candidate_with_a_nan_box_is_passed_over_and_counted(tiny_world, tmp_path, caplog):
    lines = []
    for line in tiny_world.mined.read_text().splitlines():
        record = json.loads(line)
        local, record["image"] = record["local"], str(tiny_world.root / record["image"])
        record["candidates"] = [{**local, "box": [float("nan"), 1, 5, 5]}, {**local, "box": [0, 0, 8, 8]}]
        lines.append(json.dumps(record))  # json writes the NaN as a bare NaN, as a hand-edited file may
    data = tmp_path / "mined.jsonl"
    data.write_text("\n".join(lines) + "\n")
    out = tmp_path / "run"
    with caplog.at_level(logging.INFO):
        assert main(["train", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out),
                     "--local-pairs", "3", "--max-steps", "1", *TINY]) == 0
    assert any(f"{len(lines)} invalid mining candidates passed over" in r.getMessage() for r in caplog.records)
