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
from goalclip.models.clip import load_clip, save_clip
from goalclip.training.trainer import prepare_text_positions


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
