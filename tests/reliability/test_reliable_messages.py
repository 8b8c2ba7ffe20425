"""Bad input gets one line naming the file, line, field or flag: usage errors exit 2, other failures
exit 1, never "unexpected error", and nothing is written (cases 6, 7, 8, 11, 12 of issue 21)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from goalclip.cli import main


def _usage_error(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    return capsys.readouterr().err


def _manifest(folder: Path) -> Path:
    Image.new("RGB", (16, 16), (200, 40, 40)).save(folder / "a.png")
    path = folder / "m.jsonl"
    path.write_text(json.dumps({"id": "a", "image": "a.png", "caption": "A red square."}) + "\n")
    return path


@pytest.mark.parametrize(("argv", "flag"), [
    (["data", "sample", "--n", "-2"], "--n"),
    (["data", "sample", "--n", "0"], "--n"),
    (["data", "split", "--test-size", "0", "--out-test", "t.jsonl"], "--test-size"),
    (["data", "score", "--model", "m", "--min-score", "5", "--out", "o.jsonl"], "--min-score"),
    (["data", "score", "--model", "m", "--min-score", "nan", "--out", "o.jsonl"], "--min-score"),
])
def test_impossible_values_are_usage_errors(tmp_path, capsys, argv, flag):
    data = _manifest(tmp_path)
    err = _usage_error([*argv, "--data", str(data)], capsys)
    assert flag in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "m.jsonl"]


def test_data_score_where_no_image_decodes_fails_and_writes_nothing(tiny_world, tmp_path, capsys):
    data = _manifest(tmp_path)
    (tmp_path / "a.png").write_bytes(b"not an image")
    out, scores = tmp_path / "kept.jsonl", tmp_path / "scores.jsonl"
    assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(data), "--min-score", "0",
                 "--out", str(out), "--scores-out", str(scores), "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "could be scored" in err and "a.png" in err
    assert not out.exists() and not scores.exists()


def _colour_folders(root: Path, empty: str | None = None) -> Path:
    for i, name in enumerate(("blue", "green", "red")):
        (root / name).mkdir(parents=True)
        if name != empty:
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(root / name / "x.png")
    return root


def test_classify_refuses_class_names_shared_by_several_folders(tiny_world, tmp_path, capsys):
    root = _colour_folders(tmp_path / "classes")
    names = tmp_path / "names.txt"
    names.write_text("colour\ncolour\ncolour\n")
    assert main(["eval", "--task", "classify", "--data", str(root), "--class-names", str(names), "--model",
                 str(tiny_world.model), "--no-progress"]) == 1
    assert f"{names}: class name 'colour' is given to 3 classes" in capsys.readouterr().err


def test_classify_refuses_an_empty_class_folder(tiny_world, tmp_path, capsys):
    root = _colour_folders(tmp_path / "classes", empty="green")
    assert main(["eval", "--task", "classify", "--data", str(root), "--model", str(tiny_world.model),
                 "--no-progress"]) == 1
    assert f"{root / 'green'}: class folder without images" in capsys.readouterr().err


@pytest.mark.parametrize("template", ["a photo of {the} {}.", "a photo of a {}}.", "a {} and a {}.", "{0}"])
def test_a_template_with_stray_braces_names_file_and_line(tiny_world, tmp_path, capsys, template):
    root = _colour_folders(tmp_path / "classes")
    templates = tmp_path / "t.txt"
    templates.write_text("a photo of a {}.\n" + template + "\n")
    assert main(["eval", "--task", "classify", "--data", str(root), "--templates", str(templates), "--model",
                 str(tiny_world.model), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{templates}:2: a template needs exactly one" in err and "unexpected error" not in err


def _sa1b(root: Path, width: float, bbox: str) -> Path:
    folder = root / "sa_000000"
    folder.mkdir(parents=True)
    Image.new("RGB", (100, 80)).save(folder / "sa_1.jpg")
    (folder / "sa_1.json").write_text(
        f'{{"image": {{"width": {width}, "height": 80}}, "annotations": [{{"bbox": {bbox}, "area": 800}}, '
        '{"bbox": [10, 10, 40, 20], "area": 800}]}')
    return root


def test_sa1b_mask_boxes_that_are_not_finite_are_counted_not_written(tmp_path, capsys):
    root = _sa1b(tmp_path / "sa1b", 100, "[NaN, 10, 40, 20]")
    out, boxes = tmp_path / "sa1b.jsonl", tmp_path / "boxes.jsonl"
    assert main(["data", "convert", "--format", "sa1b", "--root", str(root), "--split", "all", "--out", str(out),
                 "--boxes-out", str(boxes)]) == 0

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    lines = [json.loads(line, parse_constant=refuse) for line in boxes.read_text().splitlines()]
    assert lines == [{"id": "sa_1", "boxes": [[10.0, 10.0, 50.0, 30.0]]}]


def test_sa1b_with_a_zero_width_names_file_and_field_and_writes_nothing(tmp_path, capsys):
    root = _sa1b(tmp_path / "sa1b", 0, "[10, 10, 40, 20]")
    out = tmp_path / "sa1b.jsonl"
    assert main(["data", "convert", "--format", "sa1b", "--root", str(root), "--split", "all", "--out", str(out),
                 "--boxes-out", str(tmp_path / "boxes.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "sa_1.json" in err and "'width' must be a positive number" in err
    assert not out.exists()


@pytest.mark.parametrize(("config", "weights"), [
    ({"model_cfg": {"embed_dim": 24, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8},
                    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}},
      "preprocess_cfg": {}}, b"not safetensors"),
    ({"model_cfg": 3, "preprocess_cfg": {}}, None),
], ids=["corrupt-weights", "corrupt-config"])
def test_a_corrupt_open_clip_folder_names_the_spec(tiny_world, tmp_path, capsys, config, weights):
    pytest.importorskip("open_clip")
    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    if weights is not None:
        (folder / "open_clip_model.safetensors").write_bytes(weights)
    spec = f"open_clip:local-dir:{folder}"
    assert main(["eval", "--model", spec, "--data", str(tiny_world.captions), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{spec}: open_clip cannot load it" in err and "unexpected error" not in err


def test_compressed_data_is_named_as_such(tiny_world, tmp_path, capsys):
    import gzip

    data = tmp_path / "x.tar.gz"
    data.write_bytes(gzip.compress(b"anything"))
    assert main(["eval", "--model", str(tiny_world.model), "--data", str(data), "--no-progress"]) == 1
    assert f"{data}: a gzip-compressed file; compressed manifests and shards are not supported" in \
        capsys.readouterr().err


@pytest.mark.parametrize("command", ["caption", "mine"])
def test_a_model_path_that_does_not_exist_is_named(tmp_path, capsys, command):
    data = _manifest(tmp_path)
    assert main([command, "--model", "./no-such-model", "--data", str(data), "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "--model ./no-such-model: no such folder or file" in capsys.readouterr().err
    assert not (tmp_path / "o.jsonl").exists()


def test_mine_resume_onto_a_captioned_manifest_names_its_line(tiny_world, tmp_path, capsys):
    out = tmp_path / "captions-copy.jsonl"
    out.write_bytes(tiny_world.captions.read_bytes())
    before = out.read_bytes()
    assert main(["mine", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--out", str(out),
                 "--regions", "grid", "--resume", "--device", "cpu", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert f"{out}:1: a record without 'local'" in err and "unexpected error" not in err
    assert out.read_bytes() == before
