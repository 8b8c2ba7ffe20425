"""Processes that finish their share early wait for the others by files, not in a collective with a deadline.

NCCL's watchdog aborts a job whose barrier waits 10 minutes; a rank with no shard (fewer shards than
processes, uneven shards, a resumed run with nothing left) waits that long for a slow peer. The test
shrinks the deadline: a gloo group with a 5-second timeout, one image (rank 1 gets none) and rank 0
slowed by 10 s.
"""

from __future__ import annotations

import json

import pytest

# Joins a gloo group with a 5 s deadline before the CLI does (Accelerate keeps a group it finds), slows
# rank 0's mining by 10 s, then runs the command line.
LAUNCHER = """
import sys, time
from datetime import timedelta
import torch.distributed as dist
dist.init_process_group("gloo", timeout=timedelta(seconds=5))
from goalclip.mining import mine
if dist.get_rank() == 0:
    real = mine.mine_batch
    def slow(*args, **kwargs):
        time.sleep(10)
        return real(*args, **kwargs)
    mine.mine_batch = slow
from goalclip.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.multiprocess
def test_a_rank_without_work_outwaits_a_short_group_timeout(tiny_world, tmp_path, launch_ranks):
    launcher = tmp_path / "launch.py"
    launcher.write_text(LAUNCHER, encoding="utf-8")
    out = tmp_path / "mined.jsonl"
    proc = launch_ranks([launcher, "mine", "--model", tiny_world.model, "--data", tiny_world.captions,
                         "--max-images", "1", "--regions", "grid", "--out", out, "--device", "cpu",
                         "--num-workers", "0", "--no-progress"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [tiny_world.ids[0]]
    assert json.loads(out.with_name("mined.summary.json").read_text())["processes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["launch.py", "mined.jsonl", "mined.skipped.jsonl",
                                                           "mined.summary.json"]
