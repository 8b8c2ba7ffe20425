"""Promises of `goalclip train`, one test each: the name states the promise.

Most tests drive the CLI (`goalclip.cli.main`) on the tiny world from tests/conftest.py, the
way a user runs it; the two-process tests start real processes of the CLI.
"""

from __future__ import annotations

import errno
import json
import logging
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import goalclip.training.trainer as trainer_module
from goalclip.cli import main
from goalclip.models.clip import load_clip, save_clip
from goalclip.training.config import LossWeights, TrainConfig
from goalclip.training.step import training_step
from goalclip.training.trainer import train

TINY = ["--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0", "--no-progress", "--log-every", "1"]


def _cli(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["train", *args])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def _args(tiny_world, out: Path, *extra: str, data: Path | None = None) -> list[str]:
    return ["--model", str(tiny_world.model), "--data", str(data or tiny_world.mined), "--out", str(out),
            "--batch-size", "2", *TINY, *extra]


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


def _assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], atol: float = 0.0) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.allclose(value, b[key], atol=atol, rtol=0), key


# ----------------------------------------------------------------------------- several processes


def launch_two_trainings(launch_ranks, args: list[str], use_cpu_flag: bool) -> None:
    """Two `goalclip train` ranks on CPU (gloo on the loopback), with or without ACCELERATE_USE_CPU."""
    env = {"ACCELERATE_USE_CPU": "1"} if use_cpu_flag else {}
    done = launch_ranks(["-m", "goalclip.cli", "train", *args], CUDA_VISIBLE_DEVICES="", **env)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.multiprocess
@pytest.mark.parametrize("use_cpu_flag", [True, False], ids=["ACCELERATE_USE_CPU", "plain-env"])
def test_two_processes_at_batch_b_train_exactly_like_one_process_at_batch_2b(
    tiny_world, tmp_path, launch_ranks, use_cpu_flag: bool
) -> None:
    """Same LR at every step, same logged loss, same final weights; never two independent runs."""
    common = ["--method", "goal", "--max-steps", "3", "--lr", "1e-3", "--warmup-steps", "1", "--no-epoch-checkpoints"]
    single, double = tmp_path / "one", tmp_path / "two"
    train(TrainConfig(model=str(tiny_world.model), data=str(tiny_world.mined), out=str(single), method="goal",
                      max_steps=3, lr=1e-3, warmup_steps=1, checkpoint_epochs=False, batch_size=4,
                      max_text_len=52, keep_positions=4, num_workers=0, progress=False, log_every=1))
    launch_two_trainings(launch_ranks, ["--model", str(tiny_world.model), "--data", str(tiny_world.mined), "--out",
                                        str(double), "--batch-size", "2", *TINY, *common], use_cpu_flag)

    one, two = _metrics(single), _metrics(double)
    assert [m["step"] for m in two] == [1, 2, 3]  # one line per step: not two independent runs
    assert [m["lr"] for m in two] == pytest.approx([m["lr"] for m in one], rel=1e-9)
    assert [m["loss"] for m in two] == pytest.approx([m["loss"] for m in one], rel=1e-4)
    start, w1, w2 = load_file(str(tiny_world.model / "model.safetensors")), _weights(single), _weights(double)
    moved = max((w1[k] - start[k]).abs().max().item() for k in start if "position" not in k)
    assert moved > 1e-3  # the tolerance below is far smaller than the update
    # Attention key biases get a zero gradient in exact arithmetic (softmax ignores a shift shared
    # by all keys); Adam scales their rounding noise up to full-size steps, so they carry no signal.
    signal = [k for k in w1 if not k.endswith("k_proj.bias")]
    _assert_same_weights({k: w1[k] for k in signal}, {k: w2[k] for k in signal}, atol=1e-6)
    assert json.loads((double / "train_config.json").read_text())["derived"]["num_processes"] == 2


# ----------------------------------------------------------------------------- losses


def _openai_style_model(tiny_world, folder: Path) -> Path:
    """The tiny model with OpenAI's stored temperature, logit_scale = ln(100)."""
    bundle = load_clip(str(tiny_world.model))
    with torch.no_grad():
        bundle.model.logit_scale.fill_(math.log(100.0))
    return save_clip(bundle, folder)


def test_logit_scale_learns_from_an_openai_init(tiny_world, tmp_path) -> None:
    model = _openai_style_model(tiny_world, tmp_path / "openai")
    out = tmp_path / "out"
    train(TrainConfig(model=str(model), data=str(tiny_world.captions), out=str(out), method="global",
                      batch_size=4, max_steps=2, lr=1e-2, max_text_len=16, num_workers=0, progress=False))
    trained = float(_weights(out)["logit_scale"])
    assert trained < math.log(100.0) - 1e-4  # moved down from the ceiling
    assert trained <= math.log(100.0)  # and the ceiling is kept


def test_logit_scale_gets_a_gradient_at_the_openai_ceiling(tiny_world, tmp_path) -> None:
    from goalclip.training.data import Collate, TrainDataset, load_examples

    bundle = load_clip(str(_openai_style_model(tiny_world, tmp_path / "openai")))
    examples = load_examples(tiny_world.captions, need_local=False)
    dataset = TrainDataset(examples, bundle, need_local=False)
    batch = dataset.to_device(Collate(pad_id=bundle.tokenizer.pad_token_id)([dataset[i] for i in range(4)]), "cpu")
    loss, _ = training_step(bundle.model, batch, "global", LossWeights())
    loss.backward()
    assert bundle.model.logit_scale.grad is not None and bundle.model.logit_scale.grad.abs().item() > 0


def test_method_local_trains_on_the_local_loss_alone_with_weight_one(tiny_world) -> None:
    from goalclip.training.data import Collate, TrainDataset, load_examples

    bundle = load_clip(str(tiny_world.model))
    examples = load_examples(tiny_world.mined, need_local=True)
    dataset = TrainDataset(examples, bundle, need_local=True)
    batch = dataset.to_device(Collate(pad_id=bundle.tokenizer.pad_token_id)([dataset[i] for i in range(4)]), "cpu")
    with torch.no_grad():
        loss, logs = training_step(bundle.model, batch, "local", LossWeights())
        goal, goal_logs = training_step(bundle.model, batch, "wo-tsl", LossWeights())
    assert float(loss) == pytest.approx(float(logs["loss_local"]), rel=1e-6)
    # GOAL's combination keeps its 0.5 local weight
    assert float(goal) == pytest.approx(float(goal_logs["loss_global"]) + 0.5 * float(goal_logs["loss_local"]),
                                        rel=1e-6)


# ----------------------------------------------------------------------------- trackers


def test_report_to_a_tracker_that_is_not_installed_fails_before_training(
    tiny_world, tmp_path, capsys, monkeypatch
) -> None:
    import accelerate.tracking

    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", list)
    rc, _, err = _cli(capsys, *_args(tiny_world, tmp_path / "out", "--max-steps", "1", "--report-to", "tensorboard"))
    assert rc == 1
    assert "tensorboard" in err and "not installed" in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists()


def test_tracker_hparams_include_the_loss_weights(tiny_world, tmp_path, capsys, monkeypatch) -> None:
    import accelerate.tracking
    from accelerate import Accelerator
    from accelerate.utils import LoggerType

    seen: dict = {}
    monkeypatch.setattr(accelerate.tracking, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    monkeypatch.setattr(Accelerator, "init_trackers", lambda self, name, config=None, **kw: seen.update(config))
    monkeypatch.setattr(Accelerator, "log", lambda self, *a, **kw: None)
    rc, _, err = _cli(capsys, *_args(tiny_world, tmp_path / "out", "--max-steps", "1", "--report-to", "tensorboard",
                                     "--w-local", "0.25"))
    assert rc == 0, err
    assert seen["w_global"] == 1.0 and seen["w_local"] == 0.25 and seen["w_tsl"] == 1.0
    assert seen["method"] == "goal" and seen["batch_size"] == 2


# ----------------------------------------------------------------------------- the run record


def test_a_run_can_be_rerun_from_its_recorded_config(tiny_world, tmp_path, capsys) -> None:
    first, again = tmp_path / "first", tmp_path / "again"
    rc, _, err = _cli(capsys, *_args(tiny_world, first, "--max-steps", "2", "--lr", "1e-3", "--w-tsl", "0.5"))
    assert rc == 0, err
    record = json.loads((first / "train_config.json").read_text())
    assert record["config"]["lr"] == 1e-3 and record["config"]["weights"]["tsl"] == 0.5
    assert record["derived"]["total_steps"] == 2 and record["derived"]["examples"] == 8
    assert {"goalclip", "torch", "transformers", "accelerate", "python"} <= record["versions"].keys()
    assert "git_commit" in record

    rc, _, err = _cli(capsys, "--config", str(first / "train_config.json"), "--out", str(again))
    assert rc == 0, err
    _assert_same_weights(_weights(first), _weights(again))
    assert json.loads((again / "train_config.json").read_text())["config"] == {**record["config"], "out": str(again)}


def test_flags_given_with_config_override_the_file(tiny_world, tmp_path, capsys) -> None:
    first = tmp_path / "first"
    assert _cli(capsys, *_args(tiny_world, first, "--max-steps", "2"))[0] == 0
    rc, _, err = _cli(capsys, "--config", str(first / "train_config.json"), "--out", str(tmp_path / "b"),
                      "--max-steps", "1", "--w-local", "0.75")
    assert rc == 0, err
    config = json.loads((tmp_path / "b" / "train_config.json").read_text())["config"]
    assert config["max_steps"] == 1 and config["weights"] == {"global_": 1.0, "local": 0.75, "tsl": 1.0}
    assert config["batch_size"] == 2  # from the file


# ----------------------------------------------------------------------------- output folders


def _model_bytes(folder: Path) -> bytes:
    return (folder / "model.safetensors").read_bytes()


@pytest.mark.parametrize("case", ["max-steps-inside-epoch-1", "no-epoch-checkpoints", "just-a-model"])
def test_train_refuses_an_out_holding_a_model_without_overwrite(tiny_world, tmp_path, capsys, case: str) -> None:
    out = tmp_path / "out"
    if case == "just-a-model":
        shutil.copytree(tiny_world.model, out)
    else:
        extra = ["--max-steps", "1"] if case == "max-steps-inside-epoch-1" else ["--epochs", "1",
                                                                                 "--no-epoch-checkpoints"]
        assert _cli(capsys, *_args(tiny_world, out, *extra))[0] == 0
    before = _model_bytes(out)
    rc, _, err = _cli(capsys, *_args(tiny_world, out, "--max-steps", "1", "--lr", "1e-3"))
    assert rc == 1 and "--overwrite" in err and str(out) in err
    assert _model_bytes(out) == before


def test_train_refuses_out_equal_to_model(tiny_world, tmp_path, capsys) -> None:
    model = tmp_path / "model"
    shutil.copytree(tiny_world.model, model)
    before = _model_bytes(model)
    for extra in ([], ["--overwrite"]):
        rc, _, err = _cli(capsys, "--model", str(model), "--data", str(tiny_world.mined), "--out", str(model),
                          "--batch-size", "2", "--max-steps", "1", *TINY, *extra)
        assert rc == 1 and "--model" in err
        assert _model_bytes(model) == before


def test_overwrite_replaces_the_old_run_and_starts_a_fresh_record(tiny_world, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert _cli(capsys, *_args(tiny_world, out, "--max-steps", "3", "--checkpoint-every", "1"))[0] == 0
    before = _model_bytes(out)
    rc, _, err = _cli(capsys, *_args(tiny_world, out, "--max-steps", "2", "--lr", "1e-3", "--overwrite"))
    assert rc == 0, err
    assert [m["step"] for m in _metrics(out)] == [1, 2]  # not appended to the old run's lines
    assert _model_bytes(out) != before
    assert not (out / "checkpoints" / "step-3").exists()
    assert json.loads((out / "train_config.json").read_text())["derived"]["total_steps"] == 2


# ----------------------------------------------------------------------------- bad images mid-run


def _manifest_with_truncated_image(tiny_world, folder: Path, fmt: str) -> tuple[Path, Path]:
    """The mined manifest with img3 replaced by a truncated file whose header still reads."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    suffix = "jpg" if fmt == "jpeg" else "png"
    full = folder / f"full.{suffix}"
    Image.open(tiny_world.root / "images" / "img3.png").convert("RGB").save(full)
    bad = folder / f"bad.{suffix}"
    data = full.read_bytes()
    # cut inside the pixel data: a JPEG just after its start-of-scan marker (every header table intact)
    cut = data.index(b"\xff\xda") + 24 if fmt == "jpeg" else len(data) // 2
    bad.write_bytes(data[:cut])
    with Image.open(bad) as image:
        assert image.size == (48, 64)  # validation (the header) passes; decoding fails later
    rows = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    for row in rows:
        row["image"] = str(tiny_world.root / row["image"])
    rows[3]["image"] = str(bad)
    manifest = folder / "mined.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, bad


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_an_image_failing_to_decode_mid_run_stops_with_one_line_naming_it(
    tiny_world, tmp_path, capsys, fmt: str, workers: str
) -> None:
    data, bad = _manifest_with_truncated_image(tiny_world, tmp_path / "data", fmt)
    rc, _, err = _cli(capsys, *_args(tiny_world, tmp_path / "out", "--batch-size", "4", "--max-steps", "2",
                                     "--num-workers", workers, data=data))
    assert rc == 1
    lines = [line for line in err.splitlines() if str(bad) in line]  # (transformers' own bars aside)
    assert len(lines) == 1 and lines[0].startswith("goalclip train: error:") and "--skip-invalid" in lines[0], err
    assert "Traceback" not in err


@pytest.mark.parametrize("workers", ["0", "2"])
@pytest.mark.parametrize("fmt", ["png", "jpeg"])
def test_skip_invalid_skips_and_counts_an_image_failing_to_decode_mid_run(
    tiny_world, tmp_path, capsys, fmt: str, workers: str
) -> None:
    data, bad = _manifest_with_truncated_image(tiny_world, tmp_path / "data", fmt)
    out = tmp_path / "out"
    rc, printed, err = _cli(capsys, *_args(tiny_world, out, "--batch-size", "4", "--max-steps", "2",
                                           "--num-workers", workers, "--skip-invalid", data=data))
    assert rc == 0, err
    assert "(1 skipped)" in printed
    result = json.loads((out / "train_config.json").read_text())["result"]
    assert result["steps"] == 2 and result["skipped"] == 1
    assert any(str(bad) in reason for reason in result["skipped_reasons"])


# ----------------------------------------------------------------------------- resume


def test_resume_refuses_changed_defining_settings_naming_each(tiny_world, tmp_path, capsys, monkeypatch,
                                                              crash_at_step) -> None:
    out = tmp_path / "out"
    args = _args(tiny_world, out, "--max-steps", "3", "--checkpoint-every", "1")
    crash_at_step(3)
    assert main(["train", *args]) == 130  # interrupted: the CLI says so and exits 130
    monkeypatch.undo()
    record_before = (out / "train_config.json").read_text()
    rc, _, err = _cli(capsys, *args, "--resume", "--batch-size", "4", "--lr", "1e-3", "--method", "global")
    assert rc == 1
    assert "batch_size" in err and "lr" in err and "method" in err
    assert (out / "train_config.json").read_text() == record_before
    # safe settings may change
    rc, _, err = _cli(capsys, *args, "--resume", "--num-workers", "1", "--log-every", "2")
    assert rc == 0, err


def test_resume_of_a_finished_run_says_so_and_leaves_the_model_alone(tiny_world, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    args = _args(tiny_world, out, "--max-steps", "2", "--checkpoint-every", "1")
    assert _cli(capsys, *args)[0] == 0
    before, stat = _model_bytes(out), (out / "model.safetensors").stat()
    rc, printed, err = _cli(capsys, *args, "--resume")
    assert rc == 0, err
    assert "finished" in printed
    assert _model_bytes(out) == before and (out / "model.safetensors").stat().st_mtime_ns == stat.st_mtime_ns


def test_metrics_hold_each_step_once_after_a_resume(tiny_world, tmp_path, capsys, monkeypatch, crash_at_step) -> None:
    out = tmp_path / "out"
    args = _args(tiny_world, out, "--max-steps", "4", "--checkpoint-every", "2", "--no-epoch-checkpoints")
    crash_at_step(4)  # steps 1-3 logged, checkpoint at step 2
    assert main(["train", *args]) == 130  # interrupted: the CLI says so and exits 130
    monkeypatch.undo()
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3]
    with (out / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 4, "lo')  # a line torn by the kill
    rc, _, err = _cli(capsys, *args, "--resume")
    assert rc == 0, err
    assert [m["step"] for m in _metrics(out)] == [1, 2, 3, 4]


# ----------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("failure", ["torch-writer", "enospc"])
def test_disk_full_while_checkpointing_says_no_space_naming_the_checkpoint(
    tiny_world, tmp_path, capsys, monkeypatch, failure: str
) -> None:
    from accelerate import Accelerator

    def full_disk(self, *args, **kwargs):
        if failure == "enospc":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4096 vs 0")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, *_args(tiny_world, out, "--max-steps", "2", "--checkpoint-every", "1"))
    assert rc == 1
    assert "no space left" in err.lower() and "step-1" in err
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_keep_checkpoints_flag_limits_the_checkpoints_kept(tiny_world, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    rc, _, err = _cli(capsys, *_args(tiny_world, out, "--max-steps", "3", "--checkpoint-every", "1",
                                     "--keep-checkpoints", "1"))
    assert rc == 0, err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-3"]


def test_resume_removes_temporary_checkpoint_folders_left_by_a_killed_run(tiny_world, tmp_path, capsys,
                                                                          monkeypatch, crash_at_step) -> None:
    out = tmp_path / "out"
    args = _args(tiny_world, out, "--max-steps", "3", "--checkpoint-every", "1", "--no-epoch-checkpoints")
    crash_at_step(3)
    assert main(["train", *args]) == 130
    monkeypatch.undo()
    stale = [out / "checkpoints" / ".tmp-step-7", out / ".export-tmp"]  # a kill during a save or the export
    for folder in stale:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"half")
    rc, _, err = _cli(capsys, *args, "--resume")
    assert rc == 0, err
    assert not any(folder.exists() for folder in stale)


def test_over_long_captions_are_counted_once_without_a_warning_per_caption(tiny_world, tmp_path, capsys,
                                                                           caplog) -> None:
    out = tmp_path / "out"
    args = ["--model", str(tiny_world.model), "--data", str(tiny_world.mined), "--out", str(out),
            "--batch-size", "2", "--max-steps", "1", "--max-text-len", "16", "--num-workers", "0", "--no-progress"]
    with caplog.at_level(logging.WARNING):
        rc, _, err = _cli(capsys, *args)
    assert rc == 0, err
    text = caplog.text + err
    assert "Token indices sequence length" not in text  # transformers' per-caption warning
    assert "8 of 8 captions are longer than the 16-token context" in text
    assert json.loads((out / "train_config.json").read_text())["derived"]["truncated_captions"] == 8


def test_every_process_returns_only_after_the_model_is_exported(tiny_world, tmp_path, monkeypatch) -> None:
    """Under several processes only the main one exports; the others must wait for it before they
    return (a script may load the model on every rank) and before the process group is torn down
    (a rank leaving while its peer still works is how gloo aborts at exit)."""
    events: list[str] = []
    export = trainer_module.export_model
    monkeypatch.setattr(trainer_module, "export_model", lambda *a, **k: (events.append("export"), export(*a, **k))[1])
    wait = trainer_module.Accelerator.wait_for_everyone
    monkeypatch.setattr(trainer_module.Accelerator, "wait_for_everyone",
                        lambda self: (events.append("wait"), wait(self))[1])
    end = trainer_module.Accelerator.end_training
    monkeypatch.setattr(trainer_module.Accelerator, "end_training",
                        lambda self: (events.append("end"), end(self))[1])
    train(TrainConfig(model=str(tiny_world.model), data=str(tiny_world.captions), out=str(tmp_path / "out"),
                      method="global", batch_size=4, max_steps=1, max_text_len=16, num_workers=0, progress=False))
    assert "export" in events
    after_export = events[len(events) - 1 - events[::-1].index("export"):]
    assert after_export[:2] == ["export", "wait"] and after_export[-1] == "end", events
