"""Validation during training (--val-data / --val-joint / --val-every / --keep-best).

The metrics logged at a step must be what ``goalclip eval`` reports for the weights saved at that
step; validating must not change what is trained; best/ must hold the weights of the best
validation and keep them across a resume.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator, PartialState
from tests.conftest import TINY_TRAIN
from safetensors.torch import load_file, save_file

from goalclip.cli import main
from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.retrieval import evaluate
from goalclip.models.clip import load_clip
from goalclip.training import validation
from goalclip.training.config import TrainConfig, metric_names
from goalclip.training.trainer import train

RETRIEVAL_NAMES = ["i2t@1", "i2t@5", "t2i@1", "t2i@5"]
JOINT_NAMES = ["i2t_map@10", "t2i_map@10"]


def _config(tiny_world, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(tiny_world.model), data=str(tiny_world.mined), out=str(out), **TINY_TRAIN)
    values.update(overrides)
    return TrainConfig(**values)


def _lines(out: Path) -> tuple[list[dict], list[dict]]:
    """(training lines, validation lines) of metrics.jsonl."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [m for m in lines if "val" not in m], [m for m in lines if "val" in m]


def _checkpoint_clip(out: Path, step: int) -> dict[str, torch.Tensor]:
    """The CLIP weights of the checkpoint saved at ``step`` (the step module's ``clip.`` keys)."""
    state = load_file(str(out / "checkpoints" / f"step-{step}" / "model.safetensors"))
    return {k.removeprefix("clip."): v for k, v in state.items() if k.startswith("clip.")}


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key, value in want.items():
        assert torch.equal(got[key], value), key


@pytest.fixture(scope="module")
def six_examples(tiny_world, tmp_path_factory) -> Path:
    """6 examples at batch 2: 3 steps per epoch."""
    path = tmp_path_factory.mktemp("six") / "mined6.jsonl"
    rows = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()[:6]]
    for row in rows:
        row["image"] = str(tiny_world.root / row["image"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ----------------------------------------------------------------------------- the real metrics


@pytest.fixture(scope="module")
def validated_run(tiny_world, tmp_path_factory) -> Path:
    """3 steps at a large learning rate (so the scores move), validated and checkpointed every step."""
    out = tmp_path_factory.mktemp("validated") / "run"
    logged: list[tuple[dict, int]] = []
    real_log = Accelerator.log

    def spy(self, values, step=None, log_kwargs=None):
        logged.append((dict(values), step))
        return real_log(self, values, step=step, log_kwargs=log_kwargs or {})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Accelerator, "log", spy)
        train(_config(tiny_world, out, method="global", lr=3e-3, max_steps=3, val_data=str(tiny_world.captions),
                      val_joint=str(tiny_world.mined), val_every=1, keep_best="t2i@1", checkpoint_every=1,
                      keep_checkpoints=5, val_batch_size=3))
    (out / "tracker_calls.json").write_text(json.dumps(logged))
    return out


def test_val_lines_at_each_step_equal_goalclip_eval_of_that_steps_weights(tiny_world, validated_run, tmp_path):
    out = validated_run
    train_lines, val_lines = _lines(out)
    assert [m["step"] for m in train_lines] == [1, 2, 3]
    assert [m["step"] for m in val_lines] == [1, 2, 3]
    assert all(m["epoch"] == 0 for m in val_lines)
    for line in val_lines:
        weights = tmp_path / f"step{line['step']}.safetensors"
        save_file(_checkpoint_clip(out, line["step"]), str(weights))
        results = evaluate(EvalConfig(models=[str(weights)], base=str(out), data=str(tiny_world.captions),
                                      joint=str(tiny_world.mined), ks=[1, 5], progress=False))
        want = results["models"][0]["metrics"]
        assert list(line["val"]) == RETRIEVAL_NAMES + JOINT_NAMES
        assert line["val"] == pytest.approx(want, abs=1e-6), line["step"]
    assert len({json.dumps(m["val"]) for m in val_lines}) > 1, "the scores did not move: the test would be blind"


def test_val_metrics_reach_the_trackers_under_val_prefix(validated_run):
    _, val_lines = _lines(validated_run)
    calls = json.loads((validated_run / "tracker_calls.json").read_text())
    val_calls = [(values, step) for values, step in calls if any(k.startswith("val/") for k in values)]
    assert [step for _, step in val_calls] == [1, 2, 3]
    for (values, _), line in zip(val_calls, val_lines):
        assert values == {f"val/{k}": v for k, v in line["val"].items()}


def test_best_folder_holds_the_best_steps_weights_and_the_record_says_which(validated_run):
    out = validated_run
    _, val_lines = _lines(out)
    scores = [m["val"]["t2i@1"] for m in val_lines]
    best_step = val_lines[scores.index(max(scores))]["step"]  # the first of equal scores
    record = json.loads((out / "train_config.json").read_text())
    assert record["result"]["best"] == {"metric": "t2i@1", "value": max(scores), "step": best_step}
    best = load_clip(str(out / "best"))  # a loadable model folder, like the final export
    assert best.max_text_len == 52
    _assert_same_weights(load_file(str(out / "best" / "model.safetensors")), _checkpoint_clip(out, best_step))


# ----------------------------------------------------------------------------- the trajectory


# bf16 weights: exporting best/ mid-run must not turn the model being trained into fp32
@pytest.mark.parametrize(("precision", "keep_best"), [("no", None), ("bf16-weights", "t2i@5")])
def test_validation_each_epoch_and_at_the_end_leaves_training_unchanged(
    tiny_world, six_examples, tmp_path, precision, keep_best
):
    common = {"data": str(six_examples), "max_steps": 4, "lr": 1e-3, "method": "global", "precision": precision}
    train(_config(tiny_world, tmp_path / "plain", **common))
    train(_config(tiny_world, tmp_path / "val", val_data=str(tiny_world.captions), keep_best=keep_best, **common))
    _, val_lines = _lines(tmp_path / "val")
    assert [(m["step"], m["epoch"]) for m in val_lines] == [(3, 0), (4, 1)]  # epoch end, then the last step
    assert list(val_lines[0]["val"]) == RETRIEVAL_NAMES
    assert (tmp_path / "val" / "best").exists() == (keep_best is not None)
    _assert_same_weights(load_file(str(tmp_path / "val" / "model.safetensors")),
                         load_file(str(tmp_path / "plain" / "model.safetensors")))


def test_scoring_restores_train_mode_and_leaves_the_random_state_alone(tiny_world):
    bundle = load_clip(str(tiny_world.model))
    bundle.model.train()
    validator = validation.Validator(str(tiny_world.captions), None, None, batch_size=3, num_workers=0,
                                     state=PartialState(cpu=True), device=torch.device("cpu"))
    modes = []
    real_score = validation.score_bundle

    def spy(model_bundle, *args, **kwargs):
        modes.append((model_bundle.model.training, torch.is_grad_enabled()))
        return real_score(model_bundle, *args, **kwargs)

    before = torch.get_rng_state()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(validation, "score_bundle", spy)
        scores = validator.score(bundle, step=7)
    assert modes == [(False, False)]
    assert bundle.model.training
    assert torch.equal(torch.get_rng_state(), before)
    assert list(scores) == RETRIEVAL_NAMES


# ----------------------------------------------------------------------------- keep-best across resume

SCRIPT = {1: 50.0, 2: 20.0, 3: 30.0, 4: 40.0}  # best at step 1; every later score is worse


def _scripted(self, bundle, step):
    return {name: SCRIPT[step] for name in metric_names(joint=False)}


def test_resume_keeps_the_best_so_far(tiny_world, six_examples, tmp_path, monkeypatch, crash_at_step):
    config = {"data": str(six_examples), "max_steps": 4, "checkpoint_every": 2, "lr": 1e-3, "method": "global",
                  "val_data": str(tiny_world.captions), "val_every": 1, "keep_best": "val/i2t@5"}
    monkeypatch.setattr(validation.Validator, "score", _scripted)
    train(_config(tiny_world, tmp_path / "whole", **config))
    whole_best = load_file(str(tmp_path / "whole" / "best" / "model.safetensors"))

    out = tmp_path / "resumed"
    with monkeypatch.context() as crash:
        crash_at_step(3, crash)
        with pytest.raises(KeyboardInterrupt):
            train(_config(tiny_world, out, **config))
    assert json.loads((out / "checkpoints" / "step-2" / "progress.json").read_text())["validation"]["best"] == {
        "metric": "i2t@5", "value": 50.0, "step": 1}
    summary = train(_config(tiny_world, out, resume=True, **config))
    assert summary["best"] == {"metric": "i2t@5", "value": 50.0, "step": 1}
    _, val_lines = _lines(out)
    assert [m["step"] for m in val_lines] == [1, 2, 3, 4]
    _assert_same_weights(load_file(str(out / "best" / "model.safetensors")), whole_best)


# ----------------------------------------------------------------------------- settings


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"keep_best": "t2i@1"}, "--keep-best needs --val-data"),
        ({"val_data": "v.jsonl", "keep_best": "t2i_R@1"}, "i2t@1, i2t@5, t2i@1, t2i@5"),
        ({"val_data": "v.jsonl", "keep_best": "t2i_map@10"}, "t2i_map@10 needs --val-joint"),
        ({"val_joint": "j.jsonl"}, "--val-joint needs --val-data"),
        ({"val_data": "v.jsonl", "val_every": -1}, "--val-every"),
    ],
)
def test_bad_validation_settings_fail_before_training(tiny_world, tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(tiny_world, tmp_path, **overrides).validate()


@pytest.mark.parametrize("source", ["flags", "config file"])
def test_cli_names_the_valid_metrics(tiny_world, tmp_path, capsys, source):
    settings = {"model": str(tiny_world.model), "data": str(tiny_world.mined), "out": str(tmp_path / "out"),
                "val_data": str(tiny_world.captions), "keep_best": "recall"}
    if source == "config file":
        config = tmp_path / "config.json"
        config.write_text(json.dumps(settings))
        code = main(["train", "--config", str(config)])
    else:
        code = main(["train", *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items())])
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "--keep-best recall" in err and "t2i@1" in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- two processes


@pytest.mark.multiprocess
def test_two_process_validation_equals_one_process_eval_of_the_same_weights(tiny_world, tmp_path, launch_ranks):
    """Under torchrun each process encodes its share of the validation items; the gathered scores
    must be those of a plain one-process ``goalclip eval`` of the exported model."""
    out = tmp_path / "run"
    done = launch_ranks([
        "-m", "goalclip.cli", "train", "--model", str(tiny_world.model), "--data", str(tiny_world.mined),
        "--out", str(out), "--method", "global", "--batch-size", "2", "--max-steps", "2", "--lr", "3e-3",
        "--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0", "--no-progress",
        "--val-data", str(tiny_world.captions), "--val-joint", str(tiny_world.mined), "--val-batch-size", "3",
        "--keep-best", "val/i2t_map@10"], timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "train_config.json").read_text())
    assert record["derived"]["num_processes"] == 2
    _, val_lines = _lines(out)
    assert [m["step"] for m in val_lines] == [2]  # one epoch of 8 examples at 2 x 2 per step
    results = evaluate(EvalConfig(models=[str(out)], data=str(tiny_world.captions), joint=str(tiny_world.mined),
                                  ks=[1, 5], progress=False))
    assert val_lines[0]["val"] == pytest.approx(results["models"][0]["metrics"], abs=1e-6)
    value = val_lines[0]["val"]["i2t_map@10"]
    assert f"; best i2t_map@10 {value:.2f} at step 2 -> {out}/best" in done.stdout
    _assert_same_weights(load_file(str(out / "best" / "model.safetensors")), load_file(str(out / "model.safetensors")))


def test_a_best_folder_is_an_earlier_run_and_overwrite_clears_it(tiny_world, tmp_path):
    (tmp_path / "best").mkdir()
    (tmp_path / "best" / "model.safetensors").write_bytes(b"an earlier run's best model")
    with pytest.raises(FileExistsError, match="best"):
        train(_config(tiny_world, tmp_path, method="global", max_steps=1))
    train(_config(tiny_world, tmp_path, method="global", max_steps=1, overwrite=True))
    assert not (tmp_path / "best").exists()  # not a stale best/ beside a new run without --keep-best
