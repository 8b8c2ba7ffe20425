"""Promises about reading images and manifests and writing outputs, one test per promise.

Each test name states what a user can rely on; the fixtures are real files written by PIL or by
hand (a 16-bit PNG, an EXIF-rotated JPEG, a PNG whose header claims a decompression-bomb size,
non-UTF-8 manifest bytes, a lock held by a live process) and most go through ``goalclip.cli.main``.
"""

from __future__ import annotations

import colorsys
import json
import logging
import os
import socket
import struct
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goalclip.cli import main
from goalclip.core.images import load_rgb
from goalclip.core.manifest import ManifestError, atomic_write
from goalclip.core.records import read_manifest

# ----------------------------------------------------------------------------- helpers

GREY = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (8, 1))  # 8 x 16 ramp, 0..240
ALPHA = np.tile(np.array([0, 64, 128, 255], dtype=np.uint8).repeat(4), (8, 1))  # 8 x 16


def _rgb_ramp() -> np.ndarray:
    rgb = np.zeros((8, 16, 3), dtype=np.uint8)
    rgb[..., 0] = GREY
    rgb[..., 1] = 255 - GREY
    rgb[..., 2] = np.arange(8, dtype=np.uint8)[:, None] * 30
    return rgb


def _image(mode: str, pixels: np.ndarray) -> Image.Image:
    """An image of ``mode`` holding ``pixels`` (H x W x bands, uint8) byte for byte."""
    return Image.frombytes(mode, (pixels.shape[1], pixels.shape[0]), np.ascontiguousarray(pixels).tobytes())


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255
    return np.rint(rgb.astype(np.float64) * a + 255 * (1 - a))


def _grey3(values: np.ndarray) -> np.ndarray:
    return np.repeat(np.asarray(values, dtype=np.float64)[..., None], 3, axis=-1)


def _lab_grey(lightness: np.ndarray) -> np.ndarray:
    """sRGB grey level of CIE L* (PIL's LAB stores L* x 255/100), computed from the CIE formulas."""
    lstar = lightness.astype(np.float64) * 100 / 255
    fy = (lstar + 16) / 116
    y = np.where(fy**3 > 0.008856, fy**3, (lstar / 903.3))
    srgb = np.where(y <= 0.0031308, 12.92 * y, 1.055 * y ** (1 / 2.4) - 0.055)
    return _grey3(np.rint(np.clip(srgb, 0, 1) * 255))


def _mode_case(mode: str) -> tuple[Image.Image, str | None, np.ndarray, int]:
    """(image in ``mode``, file format to save it in or None for in-memory, expected RGB, tolerance)."""
    rgb = _rgb_ramp()
    v16 = GREY.astype(np.uint16) * 257 + 100  # 16-bit values whose top byte is not the 8-bit answer
    expected16 = _grey3(np.rint(v16 / 257))
    if mode == "1":
        bits = GREY >= 128
        return Image.fromarray(bits), "PNG", _grey3(bits * 255), 0
    if mode == "L":
        return _image("L", GREY), "PNG", _grey3(GREY), 0
    if mode in ("LA", "La"):
        image = _image("LA", np.dstack([GREY, ALPHA]))
        if mode == "La":
            return image.convert("La"), None, _over_white(_grey3(GREY), ALPHA), 2
        return image, "PNG", _over_white(_grey3(GREY), ALPHA), 1
    if mode in ("RGBA", "RGBa"):
        image = _image("RGBA", np.dstack([rgb, ALPHA]))
        if mode == "RGBa":
            return image.convert("RGBa"), None, _over_white(rgb, ALPHA), 2
        return image, "PNG", _over_white(rgb, ALPHA), 1
    if mode == "RGB":
        return _image("RGB", rgb), "PNG", rgb.astype(np.float64), 0
    if mode in ("P", "P+transparency", "PA"):
        palette = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (250, 250, 0)]
        index = (np.arange(16)[None, :] // 4).repeat(8, axis=0).astype(np.uint8)
        image = Image.frombytes("P", (16, 8), index.tobytes())
        image.putpalette([c for colour in palette for c in colour])
        expected = np.array(palette, dtype=np.float64)[index]
        if mode == "P+transparency":
            image.info["transparency"] = 1  # palette entry 1 is fully transparent
            expected[index == 1] = 255
        if mode == "PA":
            image = image.convert("PA")
            image.putalpha(_image("L", ALPHA))
            expected = _over_white(expected, ALPHA)
            return image, "TIFF", expected, 1
        return image, "PNG", expected, 0
    if mode == "CMYK":
        cmyk = np.dstack([255 - rgb, np.zeros((8, 16), dtype=np.uint8)])
        return _image("CMYK", cmyk), "TIFF", rgb.astype(np.float64), 0
    if mode == "YCbCr":  # in memory: pillow 10.0 (our floor) cannot read back its own YCbCr TIFF
        return _image("RGB", rgb).convert("YCbCr"), None, rgb.astype(np.float64), 3
    if mode == "LAB":
        neutral = np.zeros((8, 16), dtype=np.uint8)  # raw LAB bytes hold a*, b* as signed: 0 is neutral
        return _image("LAB", np.dstack([GREY, neutral, neutral])), "TIFF", _lab_grey(GREY), 3
    if mode == "HSV":
        hsv = np.dstack([GREY, np.full((8, 16), 200, np.uint8), np.full((8, 16), 220, np.uint8)])
        expected = np.array(
            [[colorsys.hsv_to_rgb(*(px / 255)) for px in row] for row in hsv.astype(np.float64)]
        ) * 255
        return _image("HSV", hsv), None, np.rint(expected), 2
    if mode == "I;16":
        return Image.fromarray(v16), "PNG", expected16, 0  # uint16 gives I;16
    if mode == "I;16B":
        return Image.fromarray(v16.astype(">u2")), "TIFF", expected16, 0  # I;16B
    if mode == "I":
        return Image.fromarray(v16.astype(np.int32)), "TIFF", expected16, 0  # I
    if mode == "F":
        unit = GREY.astype(np.float32) / 255  # float images hold intensities in [0, 1]
        return Image.fromarray(unit), "TIFF", _grey3(GREY), 0  # F
    raise AssertionError(mode)


MODES = ["1", "L", "LA", "La", "P", "P+transparency", "PA", "RGB", "RGBA", "RGBa", "CMYK", "YCbCr", "LAB",
         "HSV", "I", "I;16", "I;16B", "F"]


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` x ``height`` (no pixel data): enough for PIL to refuse it."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def _absolute(world_manifest: Path, out: Path, extra: list[dict] | None = None) -> Path:
    """A copy of a tiny-world manifest with absolute image paths (plus ``extra`` records)."""
    records = [json.loads(line) for line in world_manifest.read_text().splitlines()]
    for record in records:
        record["image"] = str(world_manifest.parent / record["image"])
    out.write_text("".join(json.dumps(r) + "\n" for r in records + (extra or [])))
    return out


@pytest.fixture
def pil_limit() -> Iterator[None]:
    """Restore PIL's process-wide pixel limit after a test that changes it."""
    saved = Image.MAX_IMAGE_PIXELS
    yield
    Image.MAX_IMAGE_PIXELS = saved


@pytest.fixture
def live_pid() -> Iterator[int]:
    """The pid of a live process that this test started (and ends)."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield sleeper.pid
    sleeper.kill()
    sleeper.wait()


def _dead_pid() -> int:
    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()
    return finished.pid


def _mine_args(tiny_world, data: Path, out: Path) -> list[str]:
    return ["mine", "--model", str(tiny_world.model), "--data", str(data), "--regions", "grid",
            "--out", str(out), "--num-workers", "0", "--no-progress"]


def _train_args(tiny_world, data: Path, out: Path) -> list[str]:
    return ["train", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out), "--max-steps", "1",
            "--batch-size", "2", "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0",
            "--no-progress", "--no-epoch-checkpoints"]


# ----------------------------------------------------------------------------- decoding


@pytest.mark.parametrize("mode", MODES)
def test_every_pil_mode_decodes_to_its_source_pixels(mode: str, tmp_path: Path) -> None:
    image, fmt, expected, tolerance = _mode_case(mode)
    if fmt is None:
        from goalclip.core.images import to_rgb

        decoded = to_rgb(image)
    else:
        path = tmp_path / f"image.{fmt.lower()}"
        image.save(path, fmt)
        decoded = load_rgb(str(path))
    assert decoded.mode == "RGB" and decoded.size == (16, 8)
    error = np.abs(np.asarray(decoded, dtype=np.float64) - expected).max()
    assert error <= tolerance, f"{mode}: max pixel error {error}"


def test_sixteen_bit_greyscale_png_is_grey_not_white(tmp_path: Path) -> None:
    path = tmp_path / "depth.png"
    Image.fromarray(np.full((4, 4), 32768, dtype=np.uint16)).save(path)
    assert load_rgb(str(path)).getpixel((0, 0)) == (128, 128, 128)


def _rotated_jpeg(path: Path) -> Path:
    """Stored 128 wide x 64 high, left half red and right half blue, EXIF orientation 6."""
    stored = Image.new("RGB", (128, 64), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 64, 64))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    stored.save(path, "JPEG", exif=exif, quality=95)
    return path


def test_exif_rotated_jpeg_decodes_in_displayed_orientation(tmp_path: Path) -> None:
    from goalclip.core.images import image_size

    path = _rotated_jpeg(tmp_path / "rotated.jpg")
    image = load_rgb(str(path))
    assert image.size == (64, 128) and image_size(str(path)) == (64, 128)
    red, blue = image.getpixel((32, 10)), image.getpixel((32, 118))  # stored left half is displayed on top
    assert red[0] > 200 and red[2] < 60 and blue[2] > 200 and blue[0] < 60
    png = tmp_path / "rotated.png"
    Image.open(path).save(png, exif=Image.open(path).getexif())
    assert load_rgb(str(png)).size == image_size(str(png)) == (64, 128)


def test_training_accepts_a_box_drawn_on_the_displayed_image(tmp_path: Path) -> None:
    from goalclip.training.data import load_examples

    path = _rotated_jpeg(tmp_path / "rotated.jpg")
    caption = "A photo standing upright. A red block is on top. A blue block is below."
    local = {"sentence": "A red block is on top.", "box": [0, 0, 64, 120], "score": 1.0, "source": "external"}
    record = {"id": "r", "image": str(path), "caption": caption, "local": local}
    manifest = tmp_path / "mined.jsonl"
    manifest.write_text(json.dumps(record) + "\n")
    (example,) = load_examples(manifest, need_local=True)
    assert example.box == [0.0, 0.0, 64.0, 120.0]


def test_goal_json_whole_image_pair_uses_the_displayed_size(tmp_path: Path) -> None:
    from goalclip.datasets.goal_json import convert_goal_json

    (tmp_path / "photos").mkdir()
    _rotated_jpeg(tmp_path / "photos" / "sa_1.jpg")
    entries = [{"filename": "photos/sa_1.jpg", "caption": "A block. It is red."},
               {"filename": "x/sa_1.jpg_results/original_image.png", "caption": "It is red.",
                "similarity_score": 30.0}]
    (tmp_path / "j.json").write_text(json.dumps(entries))
    (record,) = convert_goal_json(tmp_path, "j")
    assert record["local"]["box"] == [0.0, 0.0, 64.0, 128.0]


# ----------------------------------------------------------------------------- decompression bombs


def test_decompression_bomb_is_an_unreadable_image_with_its_size(tmp_path: Path) -> None:
    from goalclip.core.images import ImageError

    bomb = _png_header_only(tmp_path / "bomb.png", 40000, 40000)
    with pytest.raises(ImageError, match=r"bomb\.png: .*1600000000 pixels"):
        load_rgb(str(bomb))


def test_mine_skips_and_counts_a_decompression_bomb(tiny_world, tmp_path: Path, capsys) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 40000, 40000)
    data = _absolute(tiny_world.captions, tmp_path / "data.jsonl",
                     [{"id": "bomb", "image": str(bomb), "caption": "A huge picture. Nothing to see."}])
    out = tmp_path / "mined.jsonl"
    assert main(_mine_args(tiny_world, data, out)) == 0
    assert "from 9 images (1 skipped" in capsys.readouterr().out
    (entry,) = [json.loads(line) for line in (tmp_path / "mined.skipped.jsonl").read_text().splitlines()]
    assert entry["id"] == "bomb" and "1600000000 pixels" in entry["reason"]


def test_train_with_skip_invalid_skips_a_decompression_bomb(tiny_world, tmp_path: Path, capsys) -> None:
    bomb = _png_header_only(tmp_path / "bomb.png", 40000, 40000)
    mined = json.loads(tiny_world.mined.read_text().splitlines()[0])
    data = _absolute(tiny_world.mined, tmp_path / "data.jsonl", [{**mined, "id": "bomb", "image": str(bomb)}])
    assert main([*_train_args(tiny_world, data, tmp_path / "run"), "--skip-invalid"]) == 0
    assert "on 8 examples (1 skipped)" in capsys.readouterr().out


def test_max_image_pixels_flag_sets_the_limit_on_every_image_command(tiny_world, tmp_path: Path, capsys,
                                                                    pil_limit) -> None:
    from goalclip.cli import build_parser

    parser = build_parser()
    for argv in (["mine", "--model", "m", "--data", "d", "--out", "o"],
                 ["train", "--model", "m", "--data", "d", "--out", "o"],
                 ["eval", "--model", "m", "--data", "d"],
                 ["search", "--model", "m", "--images", "i", "--query", "q"],
                 ["viz", "pairs", "--data", "d", "--out", "o"]):
        assert parser.parse_args([*argv, "--max-image-pixels", "1000"]).max_image_pixels == 1000
    data = _absolute(tiny_world.captions, tmp_path / "data.jsonl")
    # every tiny-world image has more than 2 x 1000 pixels: all are refused, the run says so
    assert main([*_mine_args(tiny_world, data, tmp_path / "mined.jsonl"), "--max-image-pixels", "1000"]) == 0
    assert "from 8 images (8 skipped" in capsys.readouterr().out


# ----------------------------------------------------------------------------- output locks


def _hold_lock(out: Path, pid: int, host: str | None = None) -> Path:
    lock = out.with_name(out.name + ".lock")
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname()}))
    return lock


def test_second_mine_on_the_same_out_fails_naming_the_holder(tiny_world, tmp_path: Path, capsys,
                                                             live_pid: int) -> None:
    out = tmp_path / "mined.jsonl"
    lock = _hold_lock(out, live_pid)
    assert main(_mine_args(tiny_world, tiny_world.captions, out)) == 1
    err = capsys.readouterr().err
    assert f"pid {live_pid}" in err and socket.gethostname() in err and str(lock) in err
    assert not out.exists() and not list(tmp_path.glob("mined.jsonl.part*")) and lock.exists()


def test_train_refuses_an_out_locked_by_a_live_run(tiny_world, tmp_path: Path, capsys, live_pid: int) -> None:
    out = tmp_path / "run"
    _hold_lock(out, live_pid)
    data = _absolute(tiny_world.mined, tmp_path / "data.jsonl")
    assert main(_train_args(tiny_world, data, out)) == 1
    assert f"pid {live_pid}" in capsys.readouterr().err
    assert not (out / "model.safetensors").exists()


def test_stale_lock_of_a_dead_process_is_taken_over_with_a_warning(tiny_world, tmp_path: Path, capsys,
                                                                   caplog) -> None:
    out = tmp_path / "mined.jsonl"
    dead = _dead_pid()
    lock = _hold_lock(out, dead)
    with caplog.at_level(logging.WARNING):
        assert main(_mine_args(tiny_world, tiny_world.captions, out)) == 0
    assert f"pid {dead}" in caplog.text and "stale" in caplog.text
    assert out.exists() and not lock.exists()


def test_lock_of_another_host_is_never_taken_over(tmp_path: Path) -> None:
    from goalclip.core.manifest import OutputLocked, output_lock

    out = tmp_path / "mined.jsonl"
    _hold_lock(out, _dead_pid(), host="some-other-host")
    with pytest.raises(OutputLocked, match="some-other-host"), output_lock(out):
        pass


def test_output_lock_is_released_after_the_run_and_after_an_error(tmp_path: Path) -> None:
    from goalclip.core.manifest import output_lock

    out = tmp_path / "run"
    lock = tmp_path / "run.lock"
    with output_lock(out):
        assert json.loads(lock.read_text()) == {"pid": os.getpid(), "host": socket.gethostname()}
    assert not lock.exists()
    with pytest.raises(RuntimeError), output_lock(out):
        raise RuntimeError("boom")
    assert not lock.exists()


# ----------------------------------------------------------------------------- manifests


def test_non_utf8_manifest_line_is_named_and_stops_training(tiny_world, tmp_path: Path, capsys) -> None:
    data = _absolute(tiny_world.mined, tmp_path / "data.jsonl")
    lines = data.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"picture", b"pictur\xe9")
    data.write_bytes(b"".join(lines))
    assert main(_train_args(tiny_world, data, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert f"{data}:3: not UTF-8 text" in err and "0xe9" in err


def test_non_utf8_manifest_line_is_skipped_with_skip_invalid(tiny_world, tmp_path: Path, capsys) -> None:
    data = _absolute(tiny_world.mined, tmp_path / "data.jsonl")
    lines = data.read_bytes().splitlines(keepends=True)
    lines[2] = lines[2].replace(b"picture", b"pictur\xe9")
    data.write_bytes(b"".join(lines))
    assert main([*_train_args(tiny_world, data, tmp_path / "run"), "--skip-invalid"]) == 0
    assert "on 7 examples (1 skipped)" in capsys.readouterr().out


def test_nan_box_is_reported_as_not_finite(tmp_path: Path) -> None:
    record = {"id": "a", "image": "a.png", "caption": "A cat. It sleeps.",
              "local": {"sentence": "It sleeps.", "box": [0, 0, float("nan"), 4], "score": 1.0, "source": "grid"}}
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps(record) + "\n")  # json writes NaN, as numpy-based tools do
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: field 'local\.box': box .* is not finite"):
        read_manifest(path)


def test_malformed_json_message_keeps_the_error_position(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"id": "a", "image": "a.png", "caption": "tab\there"}\n')
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: malformed JSON \(Invalid control character at column 46\)"):
        read_manifest(path)


# ----------------------------------------------------------------------------- written files


def test_written_manifest_honours_the_umask(tmp_path: Path) -> None:
    from goalclip.core.manifest import write_manifest

    old = os.umask(0o022)
    try:
        write_manifest(tmp_path / "m.jsonl", [{"id": "a", "image": str(tmp_path / "a.png"), "caption": "x"}])
        with atomic_write(tmp_path / "r.json") as handle:
            handle.write("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "m.jsonl").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o644


def test_temp_file_left_by_a_killed_writer_is_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "index.pt"
    dead_tmp = tmp_path / f".index.pt.{_dead_pid()}.ab12cd34.tmp"
    dead_tmp.write_text("half a file")
    live_tmp = tmp_path / f".index.pt.{os.getpid()}.ef56ab78.tmp"  # a live writer's temp is left alone
    live_tmp.write_text("being written")
    other = tmp_path / ".other.pt.1.ab12cd34.tmp"
    other.write_text("another target's temp")
    with atomic_write(target) as handle:
        handle.write("done")
    assert target.read_text() == "done"
    assert not dead_tmp.exists() and live_tmp.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live_tmp.name, other.name])


def test_killed_writer_leaves_no_partial_target_and_its_temp_names_its_pid(tmp_path: Path) -> None:
    target = tmp_path / "m.jsonl"
    with pytest.raises(KeyboardInterrupt), atomic_write(target) as handle:
        temps = list(tmp_path.glob(".m.jsonl.*.tmp"))
        handle.write("partial")
        raise KeyboardInterrupt
    assert [p.name.split(".")[3] for p in temps] == [str(os.getpid())]
    assert not target.exists() and not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------- dataset conversion


def _goal_json(root: Path, found: int, missing: int) -> None:
    (root / "photos").mkdir(parents=True)
    entries = []
    for i in range(found + missing):
        if i < found:
            Image.new("RGB", (8, 8)).save(root / "photos" / f"sa_{i}.jpg")
        entries.append({"filename": f"../DCI/photos/sa_{i}.jpg" if i >= found else f"photos/sa_{i}.jpg",
                        "caption": f"Picture {i}. It is dark."})
    (root / "DCI_test.json").write_text(json.dumps(entries))


def test_convert_that_finds_no_image_fails_naming_a_path_and_image_root(tmp_path: Path, capsys) -> None:
    _goal_json(tmp_path / "GOAL", found=0, missing=3)
    out = tmp_path / "out.jsonl"
    code = main(["data", "convert", "--format", "goal-json", "--root", str(tmp_path / "GOAL"), "--split",
                 "DCI_test", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1 and not out.exists()
    assert "no records" in err and str(tmp_path / "DCI" / "photos" / "sa_0.jpg") in err and "--image-root" in err


def test_convert_skipping_most_images_fails_unless_allow_skips(tmp_path: Path, capsys) -> None:
    _goal_json(tmp_path / "GOAL", found=1, missing=3)
    out = tmp_path / "out.jsonl"
    argv = ["data", "convert", "--format", "goal-json", "--root", str(tmp_path / "GOAL"), "--split", "DCI_test",
            "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "3 of 4 records" in err and "--allow-skips" in err and not out.exists()
    assert main([*argv, "--allow-skips"]) == 0
    assert [r["id"] for r in read_manifest(out)] == ["sa_0"]


# Plain writes that are not a command's output: a marker file naming a live process, a file inside a
# temporary folder that atomic_folder renames as a whole, the tar stream inside an atomic shard file.
PLAIN_WRITES_ALLOWED = {
    ("core/processes.py", "self._marker(self.state.process_index).write_text(self.token, encoding=\"utf-8\")"),
    ("training/checkpoints.py", "(tmp / \"progress.json\").write_text(json.dumps(progress))"),
    ("datasets/shards.py", "tar = stack.enter_context(tarfile.open(fileobj=handle, mode=\"w\", "
                           "format=tarfile.USTAR_FORMAT))"),
}


def test_every_file_a_command_writes_goes_through_the_atomic_writers() -> None:
    """A summary or README written with a plain open/write_text is half a file after a crash: every write in
    the package goes through core.manifest's atomic_write/atomic_path/atomic_folder, is an append to a
    resumable log, or is listed above."""
    import re

    import goalclip

    package = Path(goalclip.__file__).parent
    # "w" modes only: the "a" appends are the resumable logs (parts, metrics.jsonl), whose readers drop a torn line
    plain = re.compile(r"\.write_text\(|\.write_bytes\(|\bopen\(.*[\"']wb?[\"']")
    found = set()
    for path in package.rglob("*.py"):
        for line in path.read_text(encoding="utf-8").splitlines():
            if plain.search(line) and not line.lstrip().startswith("#"):
                found.add((path.relative_to(package).as_posix(), line.strip()))
    assert found - PLAIN_WRITES_ALLOWED == set()
