"""Promises of ``goalclip mine`` and ``goalclip eval`` on bad input, misuse, kills and several processes.

Each test name states one promise. Commands run the way a user runs them: through
``goalclip.cli.main`` in this process, or as real subprocesses (several ranks, killed parents) with
hard timeouts, so a hang is a failure rather than a stuck suite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

import goalclip
from goalclip.cli import main
from goalclip.evaluation import retrieval as ev

SRC = str(Path(goalclip.__file__).resolve().parents[1])
SUBPROCESS_TIMEOUT_S = 240


def _env(**extra: str) -> dict[str, str]:
    """The environment for goalclip subprocesses: this checkout's code, one thread, loopback gloo."""
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    env.update(PYTHONPATH=SRC + os.pathsep + env.get("PYTHONPATH", ""), OMP_NUM_THREADS="1",
               OMP_WAIT_POLICY="PASSIVE", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env["GLOO_SOCKET_IFNAME"] = "lo"
    env.update(extra)
    return env


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _copy_world(tiny_world, folder: Path) -> Path:
    """A private copy of the tiny world's images and caption manifest (tests change them)."""
    shutil.copytree(tiny_world.root / "images", folder / "images")
    shutil.copy(tiny_world.captions, folder / "captions.jsonl")
    return folder / "captions.jsonl"


def _mine_args(tiny_world, data: Path, out: Path, *extra: str) -> list[str]:
    return ["mine", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out), "--regions",
            "external,grid", "--boxes", str(tiny_world.boxes), "--batch-size", "3", "--num-workers", "0",
            "--no-progress", *extra]


# ----------------------------------------------------------------------------- several processes


@pytest.mark.multiprocess
def test_mine_in_two_cpu_processes_shards_the_images_and_equals_one_process(tiny_world, tmp_path, launch_ranks):
    """Two ranks (torchrun, no ACCELERATE_USE_CPU) mine disjoint shares; the merge equals one process."""
    two = tmp_path / "two" / "mined.jsonl"
    proc = launch_ranks(["-m", "goalclip.cli", *_mine_args(tiny_world, tiny_world.captions, two)])
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log
    per_rank = [int(n) for n in re.findall(r"mining (\d+) images", log)]
    assert len(per_rank) == 2 and sum(per_rank) == len(tiny_world.ids), log  # each image mined by one rank
    assert json.loads(two.with_name("mined.summary.json").read_text())["processes"] == 2

    one = tmp_path / "one" / "mined.jsonl"
    assert main(_mine_args(tiny_world, tiny_world.captions, one)) == 0
    merged, single = _records(two), _records(one)
    assert [r["id"] for r in merged] == list(tiny_world.ids)  # every id once, in manifest order
    for a, b in zip(merged, single, strict=True):
        assert (a["local"]["sentence"], a["local"]["box"]) == (b["local"]["sentence"], b["local"]["box"])
        assert a["local"]["score"] == pytest.approx(b["local"]["score"], abs=1e-5)


@pytest.mark.multiprocess
def test_eval_in_two_cpu_processes_equals_one_process(tiny_world, tiny_blip2, tmp_path, launch_ranks):
    """Two ranks (torchrun, no ACCELERATE_USE_CPU) split the encoding; the table equals one process's, for a
    CLIP row and a BLIP-2 row (several embeddings per image, gathered across the ranks)."""
    args = ["eval", "--model", str(tiny_world.model), "--model", str(tiny_blip2), "--data", str(tiny_world.captions),
            "--joint",
            str(tiny_world.mined), "--device", "cpu", "--batch-size", "3", "--no-progress"]
    proc = launch_ranks(["-m", "goalclip.cli", *args, "--out", tmp_path / "two.json"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert main([*args, "--out", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("two", "one"))
    assert two["sets"] == one["sets"]
    assert len(two["models"]) == len(one["models"]) == 2
    for row_two, row_one in zip(two["models"], one["models"]):
        assert row_two["metrics"] == pytest.approx(row_one["metrics"], abs=1e-9)


# ----------------------------------------------------------------------------- eval cache and outputs


def test_eval_cache_is_stale_free_after_image_pixels_change(tiny_world, tmp_path):
    """Changing every image's pixels (even keeping size-independent mtimes) invalidates the cache."""
    data = _copy_world(tiny_world, tmp_path)
    config = ev.EvalConfig(models=[str(tiny_world.model)], data=str(data), cache_dir=str(tmp_path / "cache"),
                           progress=False, device="cpu")
    ev.evaluate(config)
    for index, image_path in enumerate(sorted((tmp_path / "images").glob("*.png"))):
        stat = image_path.stat()
        with Image.open(image_path) as image:
            changed = image.convert("RGB").rotate(90 * (1 + index % 3), expand=False)
        changed.save(image_path)
        os.utime(image_path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # as cp -p / rsync -t would leave it
    cached = ev.evaluate(config)
    fresh = ev.evaluate(ev.EvalConfig(**{**config.__dict__, "cache_dir": None}))
    assert not cached["models"][0]["from_cache"]
    assert cached["models"][0]["metrics"] == fresh["models"][0]["metrics"]


def test_eval_refuses_an_unwritable_out_before_loading_any_model(tiny_world, tmp_path, monkeypatch, capsys):
    def boom(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(ev, "load_encoder", boom)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    for option, value in (("--out", blocker / "metrics.json"), ("--cache-dir", blocker / "cache")):
        args = ["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--device", "cpu",
                "--no-progress", option, str(value)]
        assert main(args) == 1
        error = capsys.readouterr().err.strip().splitlines()
        assert len(error) == 1 and str(value) in error[0] and option in error[0], error


def test_eval_prints_the_table_before_writing_out(tiny_world, tmp_path, monkeypatch, capsys):
    def failing_write(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ev, "atomic_write", failing_write)
    args = ["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--device", "cpu",
            "--no-progress", "--out", str(tmp_path / "metrics.json")]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "| model | i2t@1 |" in captured.out and "No space left" in captured.err


# ----------------------------------------------------------------------------- joint manifests


def _joint(tiny_world, folder: Path, box_text: str) -> Path:
    """The tiny world's mined manifest with img3's local box replaced by raw JSON text."""
    lines = tiny_world.mined.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
    text = [json.dumps(r) for r in records]
    text[3] = text[3].replace(json.dumps(records[3]["local"]["box"]), box_text)
    path = folder / "joint.jsonl"
    path.write_text("\n".join(text) + "\n", encoding="utf-8")
    return path


def test_eval_infinite_joint_box_is_one_line_naming_file_line_and_field(tiny_world, tmp_path, capsys):
    joint = _joint(tiny_world, tmp_path, "[0, 0, Infinity, 10]")
    args = ["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--joint", str(joint),
            "--device", "cpu", "--no-progress"]
    assert main(args) == 1
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and f"{joint}:4" in error[0] and "local.box" in error[0], error


def test_eval_joint_box_outside_its_image_is_reported_as_outside_not_unreadable(tiny_world, tmp_path, caplog):
    joint = _joint(tiny_world, tmp_path, "[500, 500, 600, 600]")
    config = ev.EvalConfig(models=[str(tiny_world.model)], data=str(tiny_world.captions), joint=str(joint),
                           progress=False, device="cpu")
    with caplog.at_level(logging.WARNING):
        results = ev.evaluate(config)
    assert results["sets"]["joint"]["excluded_ids"] == ["img3"]
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "outside" in messages and "unreadable" not in messages, messages


# ----------------------------------------------------------------------------- outputs equal to inputs


def test_mine_refuses_an_out_that_is_its_input_manifest(tiny_world, tmp_path, capsys):
    data = _copy_world(tiny_world, tmp_path)
    before = data.read_bytes()
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    for out in (data, link):
        assert main(_mine_args(tiny_world, data, out, "--resume")) == 1
        assert "same file" in capsys.readouterr().err
    assert data.read_bytes() == before and not list(tmp_path.glob("*.part*"))


def test_data_joint_refuses_an_out_that_is_one_of_its_inputs(tiny_world, tmp_path, capsys):
    data = _copy_world(tiny_world, tmp_path)
    mined = tmp_path / "mined.jsonl"
    shutil.copy(tiny_world.mined, mined)
    before = (data.read_bytes(), mined.read_bytes())
    for out in (data, mined):
        assert main(["data", "joint", "--data", str(data), "--mined", str(mined), "--out", str(out)]) == 1
        assert "same file" in capsys.readouterr().err
    assert (data.read_bytes(), mined.read_bytes()) == before


# ----------------------------------------------------------------------------- workers and signals


def _children(pid: int) -> list[int]:
    """Live (non-zombie) child processes of ``pid``, read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rfind(")") + 2 :].split()
            if int(fields[1]) == pid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def _slow_world(tiny_world, folder: Path, n: int = 4000) -> Path:
    """Many records on big images, so decoding workers have plenty queued when the parent dies."""
    (folder / "images").mkdir()
    Image.effect_noise((600, 600), 60).convert("RGB").save(folder / "images" / "big.png")
    caption = json.loads(tiny_world.captions.read_text().splitlines()[0])["caption"]
    return _write(folder / "captions.jsonl",
                  [{"id": f"r{i}", "image": "images/big.png", "caption": caption} for i in range(n)])


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
@pytest.mark.parametrize("kill", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_mine_decoding_workers_exit_when_the_parent_dies(tiny_world, tmp_path, kill):
    data = _slow_world(tiny_world, tmp_path)
    out = tmp_path / "mined.jsonl"
    args = ["mine", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out), "--regions", "grid",
            "--batch-size", "1", "--num-workers", "2", "--no-progress"]
    part = out.with_name("mined.jsonl.part0")
    with _killed_with_its_workers(args, part, kill, _env()) as proc:
        if kill == signal.SIGTERM:
            assert proc.returncode != 0 and "--resume" in proc.stderr.read().decode()
        assert all(json.loads(line)["local"] for line in part.read_text().splitlines())  # valid for --resume


@contextlib.contextmanager
def _killed_with_its_workers(args: list[str], part: Path, kill: int, env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """Run ``goalclip ARGS``; once two loader workers run and ``part`` has a record, send ``kill`` to the
    command and check that its workers end within 15 s. Yields the ended process (stderr piped)."""
    proc = subprocess.Popen([sys.executable, "-m", "goalclip.cli", *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    workers: list[int] = []
    try:
        deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
        while time.monotonic() < deadline and proc.poll() is None:
            workers = _children(proc.pid)
            if len(workers) >= 2 and part.exists() and part.stat().st_size > 0:
                break
            time.sleep(0.2)
        assert proc.poll() is None and len(workers) >= 2, f"goalclip {args[0]} ended or never started its workers"
        os.kill(proc.pid, kill)
        proc.wait(timeout=60)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.2)
        survivors = [w for w in workers if _alive(w)]
        assert not survivors, f"decoding workers {survivors} outlived their parent"
        yield proc
    finally:
        for pid in [proc.pid, *workers]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()


# ----------------------------------------------------------------------------- mining reports


def test_mine_counts_invalid_external_boxes_in_summary_and_skipped_file(tiny_world, tmp_path, caplog):
    boxes = _write(tmp_path / "boxes.jsonl", [
        {"id": "img0", "boxes": [[500, 500, 600, 600], [8, 8, 24, 24]]},  # outside the image + a good one
        {"id": "img1", "boxes": [[36, 20, 36, 44]]},  # zero width
    ])
    boxes.write_text(boxes.read_text() + '{"id": "img2", "boxes": [[NaN, 30, 20, 60]]}\n')
    out = tmp_path / "mined.jsonl"
    args = _mine_args(tiny_world, tiny_world.captions, out)
    args[args.index("--boxes") + 1] = str(boxes)
    with caplog.at_level(logging.WARNING):
        assert main(args) == 0
    summary = json.loads(out.with_name("mined.summary.json").read_text())
    assert summary["invalid_boxes"] == {"outside the image": 1, "zero or negative area": 1, "not finite": 1}
    skipped = _records(out.with_name("mined.skipped.jsonl"))
    assert sorted(s["id"] for s in skipped if s["kind"] == "invalid box") == ["img0", "img1", "img2"]
    assert any("3 external boxes" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


def _bomb_png(path: Path, width: int = 20000, height: int = 20000) -> None:
    """A PNG header claiming more pixels than PIL's decompression-bomb limit (no pixel data needed)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))


def test_mine_with_workers_reports_a_bad_image_in_one_line_without_a_worker_traceback(tiny_world, tmp_path, capsys):
    data = _copy_world(tiny_world, tmp_path)
    _bomb_png(tmp_path / "images" / "img5.png")
    out = tmp_path / "mined.jsonl"
    args = _mine_args(tiny_world, data, out)
    args[args.index("--num-workers") + 1] = "2"
    assert main(args) == 0
    assert "Traceback" not in capsys.readouterr().err
    skipped = {s["id"]: s for s in _records(out.with_name("mined.skipped.jsonl"))}
    assert list(skipped) == ["img5"]
    reason = skipped["img5"]["reason"]
    assert "img5.png" in reason and "\n" not in reason and "DataLoader" not in reason


def test_mine_counts_truncated_sentences_without_transformers_length_warnings(tiny_world, tmp_path, capsys):
    long_sentence = "A red square is drawn here with a plain white background and nothing else in it at all."
    records = _records(tiny_world.captions)
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
        record["caption"] += " " + long_sentence
    data = _write(tmp_path / "captions.jsonl", records)
    out = tmp_path / "mined.jsonl"
    assert main(_mine_args(tiny_world, data, out)) == 0
    captured = capsys.readouterr()
    assert "Token indices sequence length" not in captured.out + captured.err
    summary = json.loads(out.with_name("mined.summary.json").read_text())
    assert summary["truncated_sentences"] == len(records)


def test_a_launch_whose_processes_did_not_join_is_refused_rather_than_repeated(monkeypatch):
    """WORLD_SIZE=2 but no process group (e.g. a CUDA device asked for on CPU ranks): an error, not 2x work."""
    from accelerate import PartialState

    from goalclip.core.processes import process_state

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    fresh = not PartialState._shared_state  # a state made here must not leak a CUDA device into later tests
    try:
        with pytest.raises(RuntimeError, match="did not join one process group"):
            process_state("cuda")
    finally:
        if fresh:
            PartialState._reset_state()
