"""The papers' evaluation protocols: long-context eval of short-context models, the authors' joint
test with crop files, split tools and K presets, each checked against an independent computation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from goalclip.cli import main
from goalclip.core.manifest import write_jsonl
from goalclip.evaluation import retrieval as ev
from goalclip.evaluation.items import joint_items
from goalclip.models.clip import load_clip, save_clip
from goalclip.models.clip import prepare_text_positions


def _config(world, data: str, **kwargs) -> ev.EvalConfig:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("batch_size", 4)
    return ev.EvalConfig(models=[str(world.model)], data=data, **kwargs)


# ----------------------------------------------------------------------------- 13.5: --context


def test_context_stretch_equals_a_model_stretched_at_training_time_and_saved(tiny_world, tmp_path):
    # the training-time stretch, saved as a folder: the independent side
    bundle = load_clip(str(tiny_world.model))
    assert prepare_text_positions(bundle, 58, 2) == 58  # 4*16 - 3*2
    stretched = str(save_clip(bundle, tmp_path / "stretched"))
    cache = tmp_path / "cache"
    want = ev.evaluate(ev.EvalConfig(models=[stretched], data=str(tiny_world.mined), joint=str(tiny_world.mined),
                                     progress=False, batch_size=4, cache_dir=str(cache)))
    got = ev.evaluate(_config(tiny_world, str(tiny_world.mined), joint=str(tiny_world.mined), context=58,
                              keep_positions=2, cache_dir=str(cache)))
    assert got["models"][0]["text_len"] == want["models"][0]["text_len"] == 58
    assert got["models"][0]["metrics"] == want["models"][0]["metrics"]
    assert not got["models"][0]["from_cache"]  # the stretched source is its own cache entry
    files = sorted(cache.glob("*.safetensors"))
    assert len(files) == 4  # (stretched folder, stretched on the fly) x (retrieval, joint)
    from safetensors.torch import load_file

    by_kind: dict[str, list[dict]] = {}
    for path in files:
        by_kind.setdefault(path.name.split("-")[0], []).append(load_file(str(path)))
    for pair in by_kind.values():
        assert pair[0]["texts"].equal(pair[1]["texts"]) and pair[0]["images"].equal(pair[1]["images"])


def test_context_lengths_cache_key_and_models_already_long_enough(tiny_world, tmp_path):
    data = str(tiny_world.captions)
    short = ev.evaluate(_config(tiny_world, data, context=40, keep_positions=2, cache_dir=str(tmp_path)))
    assert short["models"][0]["text_len"] == 40  # a target below 4L - 3*keep shortens the stretched table
    full = ev.evaluate(_config(tiny_world, data, context=58, keep_positions=2, cache_dir=str(tmp_path)))
    assert full["models"][0]["text_len"] == 58
    plain = ev.evaluate(_config(tiny_world, data, cache_dir=str(tmp_path)))
    assert plain["models"][0]["text_len"] == 16
    assert len(list(tmp_path.glob("*.safetensors"))) == 3  # the stretched length is part of the key
    # a model at or above the context is left alone (and texts use the context asked for)
    same = ev.evaluate(_config(tiny_world, data, context=12, keep_positions=2))
    assert same["models"][0]["text_len"] == 12
    assert same["models"][0]["metrics"] == ev.evaluate(_config(tiny_world, data, max_text_len=12))["models"][0][
        "metrics"]


def test_context_refuses_bad_keep_positions_with_a_clear_message(tiny_world, capsys):
    with pytest.raises(ValueError, match="--keep-positions 58 must be smaller than --context 58"):
        ev.evaluate(_config(tiny_world, str(tiny_world.captions), context=58, keep_positions=58))
    with pytest.raises(ValueError, match=r"cannot stretch .* to 248 positions.*(limit|between)"):
        ev.evaluate(_config(tiny_world, str(tiny_world.captions), context=248, keep_positions=20))
    code = main(["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--context", "248",
                 "--no-progress", "--device", "cpu"])
    assert code == 1
    err = capsys.readouterr().err
    assert "goalclip eval: error:" in err and "keep" in err and "Traceback" not in err


def test_context_cli_reports_the_stretched_length(tiny_world, tmp_path):
    out = tmp_path / "m.json"
    assert main(["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--context", "58",
                 "--keep-positions", "2", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["models"][0]["text_len"] == 58
    assert results["config"]["context"] == 58 and results["config"]["keep_positions"] == 2


# ----------------------------------------------------------------------------- 13.8: crop files in the joint test


def _crop_joint(world, root: Path, *, whole_for: tuple[int, ...] = ()) -> tuple[str, str]:
    """The tiny world's box-based joint test and the same test with each local item as a crop FILE.

    The crop files are the box crops saved as PNG (pixel-identical); records listed in
    ``whole_for`` get a whole-image pair (box = the image, source "whole") in both files.
    """
    (root / "crops").mkdir(parents=True, exist_ok=True)
    boxed, cropped = [], []
    for line in Path(world.mined).read_text().splitlines():
        record = json.loads(line)
        record["image"] = str(Path(world.mined).parent / record["image"])
        image = Image.open(record["image"]).convert("RGB")
        index = int(record["id"].removeprefix("img"))
        if index in whole_for:
            record["local"] = {**record["local"], "box": [0, 0, *image.size], "source": "whole"}
            boxed.append(record)
            cropped.append(record)
            continue
        crop = root / "crops" / f"{record['id']}.png"
        image.crop(tuple(int(v) for v in record["local"]["box"])).save(crop)
        boxed.append(record)
        local = {k: v for k, v in record["local"].items() if k != "box"}
        cropped.append({**record, "local": {**local, "image": f"crops/{crop.name}", "source": "sam"}})
    write_jsonl(root / "boxed.jsonl", boxed)
    write_jsonl(root / "cropped.jsonl", cropped)
    return str(root / "boxed.jsonl"), str(root / "cropped.jsonl")


def test_joint_test_scores_crop_files_like_the_same_box_crops(tiny_world, tmp_path):
    boxed, cropped = _crop_joint(tiny_world, tmp_path)
    data = str(tiny_world.captions)
    want = ev.evaluate(_config(tiny_world, data, joint=boxed))
    got = ev.evaluate(_config(tiny_world, data, joint=cropped))
    assert got["sets"]["joint"]["image_items"] == 16 and got["sets"]["joint"]["text_items"] == 16
    for key in ("i2t_map@10", "t2i_map@10"):
        assert got["models"][0]["metrics"][key] == pytest.approx(want["models"][0]["metrics"][key], abs=1e-9)
    items = joint_items(cropped)
    assert items.image_paths[1] == str(tmp_path / "crops" / "img0.png") and items.image_boxes[1] is None


def test_joint_whole_image_pairs_are_kept_by_default_and_dropped_on_request(tiny_world, tmp_path, capsys):
    _, cropped = _crop_joint(tiny_world, tmp_path, whole_for=(1, 4))
    data = str(tiny_world.captions)
    kept = ev.evaluate(_config(tiny_world, data, joint=cropped))
    assert kept["sets"]["joint"]["records"] == 8 and kept["sets"]["joint"]["whole_pairs"] == 2
    dropped = ev.evaluate(_config(tiny_world, data, joint=cropped, joint_keep_whole=False))
    assert dropped["sets"]["joint"]["records"] == 6 and dropped["sets"]["joint"]["image_items"] == 12
    assert dropped["sets"]["joint"]["whole_pairs_dropped"] == ["img1", "img4"]
    # independent: the manifest without those records gives the same numbers
    lines = [line for line in Path(cropped).read_text().splitlines() if json.loads(line)["id"] not in ("img1", "img4")]
    (tmp_path / "six.jsonl").write_text("\n".join(lines) + "\n")
    six = ev.evaluate(_config(tiny_world, data, joint=str(tmp_path / "six.jsonl")))
    assert six["models"][0]["metrics"] == dropped["models"][0]["metrics"]
    # a box covering the whole image counts as whole even without source "whole"
    records = [json.loads(line) for line in Path(cropped).read_text().splitlines()]
    records[1]["local"]["source"] = "external"
    write_jsonl(tmp_path / "covering.jsonl", records)
    assert joint_items(str(tmp_path / "covering.jsonl"), keep_whole=False).group_ids == [
        r["id"] for r in records if r["id"] not in ("img1", "img4")]
    assert main(["eval", "--model", str(tiny_world.model), "--data", data, "--joint", cropped,
                 "--no-joint-keep-whole", "--no-progress", "--device", "cpu"]) == 0
    assert "joint: 12 images / 12 texts" in capsys.readouterr().out


def test_joint_crop_file_errors_name_the_line(tiny_world, tmp_path):
    _, cropped = _crop_joint(tiny_world, tmp_path)
    records = [json.loads(line) for line in Path(cropped).read_text().splitlines()]
    records[2]["local"]["image"] = 7
    write_jsonl(tmp_path / "bad.jsonl", records)
    from goalclip.core.manifest import ManifestError

    with pytest.raises(ManifestError, match=r"bad\.jsonl:3: field 'local.image' must be a path string"):
        joint_items(str(tmp_path / "bad.jsonl"))
    records[2]["local"] = {"sentence": "x"}
    write_jsonl(tmp_path / "bad.jsonl", records)
    with pytest.raises(ManifestError, match=r"bad\.jsonl:3: field 'local.box'"):
        joint_items(str(tmp_path / "bad.jsonl"))
