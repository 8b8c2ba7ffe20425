"""``goalclip train --model <a SigLIP folder> --method goal`` end to end, the export, and every command on it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from PIL import Image
from transformers import AutoModel, AutoProcessor, SiglipModel, SiglipTokenizer

from goalclip.cli import main
from goalclip.models.clip import load_clip
from goalclip.models.embed import embed_image_files, embed_text_strings

pytestmark = pytest.mark.slow
LABELS = ["a red square", "a blue circle", "a green square"]


# The zero-shot pipeline pads SigLIP texts to 64 tokens whatever the tokenizer says (and drops
# tokenizer_kwargs), so the export is checked there at a 64-token context (16 stretched, keep 0).
@pytest.fixture(scope="module")
def trained(tiny_world, tiny_siglip, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("siglip_goal") / "goal"
    assert main(["train", "--model", str(tiny_siglip), "--data", str(tiny_world.mined), "--method", "goal",
                 "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--max-text-len", "64",
                 "--keep-positions", "0", "--num-workers", "0", "--no-progress", "--checkpoint-every", "1"]) == 0
    return out


def test_the_run_records_the_backbone_and_trains_the_bias(trained, tiny_siglip) -> None:
    record = json.loads((trained / "train_config.json").read_text())
    assert record["derived"]["backbone"] == "siglip" and record["derived"]["context_length"] == 64
    metrics = [json.loads(line) for line in (trained / "metrics.jsonl").read_text().splitlines()]
    assert {"loss_global", "loss_local", "loss_tsl_image", "loss_tsl_text", "logit_bias"} <= set(metrics[-1])
    before, after = SiglipModel.from_pretrained(tiny_siglip), SiglipModel.from_pretrained(trained)
    assert not torch.equal(before.logit_bias, after.logit_bias)


def test_export_loads_in_transformers_and_the_pipeline_with_equal_embeddings(trained, tiny_world) -> None:
    bundle = load_clip(str(trained))
    auto = AutoModel.from_pretrained(trained).eval()
    assert isinstance(auto, SiglipModel) and auto.config.text_config.max_position_embeddings == 64
    processor = AutoProcessor.from_pretrained(trained)
    image_path = tiny_world.root / "images" / "img0.png"
    inputs = processor(text=LABELS, images=[Image.open(image_path)], padding="max_length", max_length=64,
                       return_tensors="pt")
    assert set(inputs) == {"input_ids", "pixel_values"}  # SigLIP's text tower takes no attention mask
    with torch.no_grad():
        text = F.normalize(auto.get_text_features(input_ids=inputs["input_ids"]).pooler_output, dim=-1)
        image = F.normalize(auto.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output, dim=-1)
    ours_text = embed_text_strings(bundle, LABELS)
    ours_image, _, _ = embed_image_files(bundle, [str(image_path)])
    torch.testing.assert_close(ours_text, text, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_image, image, atol=1e-5, rtol=0)

    pipe = transformers.pipeline("zero-shot-image-classification", model=str(trained))
    scores = {row["label"]: row["score"] for row in pipe(str(image_path), candidate_labels=LABELS)}
    prompts = embed_text_strings(bundle, [f"This is a photo of {label}." for label in LABELS])
    want = torch.sigmoid(auto.logit_scale.exp() * ours_image @ prompts.T + auto.logit_bias)[0]
    assert [scores[label] for label in LABELS] == pytest.approx(want.tolist(), abs=1e-5)


def test_every_command_accepts_the_siglip_folder(trained, tiny_world, tmp_path, capsys) -> None:
    model, captions = str(trained), str(tiny_world.captions)
    commands = {
        "eval": ["eval", "--model", model, "--data", captions, "--ks", "1", "--out", str(tmp_path / "m.json"),
                 "--no-progress"],
        "mine": ["mine", "--model", model, "--data", captions, "--regions", "flism", "--boxes",
                 str(tiny_world.boxes), "--out", str(tmp_path / "mined.jsonl"), "--num-workers", "0", "--no-progress"],
        "search": ["search", "--model", model, "--images", str(tiny_world.root / "images"), "--query",
                   "a red square", "--k", "2", "--out", str(tmp_path / "s.json"), "--index-dir", str(tmp_path / "i")],
        "viz attention": ["viz", "attention", "--model", model, "--images", str(tiny_world.root / "images"),
                          "--out", str(tmp_path / "a.png")],
        "viz attention patch": ["viz", "attention", "--kind", "patch", "--model", model, "--images",
                                str(tiny_world.root / "images"), "--out", str(tmp_path / "p.png")],
        "viz retrieval": ["viz", "retrieval", "--model", model, "--data", captions, "--out", str(tmp_path / "r")],
        "data score": ["data", "score", "--model", model, "--data", captions, "--sample", "0", "--no-progress"],
    }
    for name, argv in commands.items():
        code = main(argv)
        assert code == 0, (name, capsys.readouterr().err[-2000:])
    mined = [json.loads(line) for line in (tmp_path / "mined.jsonl").read_text().splitlines()]
    assert len(mined) == len(tiny_world.ids)
    assert len(json.loads((tmp_path / "s.json").read_text())["results"][0]["hits"]) == 2


def test_resume_is_exact_for_siglip(trained, tiny_world, tiny_siglip, tmp_path, monkeypatch, crash_at_step) -> None:
    """A run killed at step 2 and resumed from its step-1 checkpoint ends with the uninterrupted run's weights."""
    out = tmp_path / "resumed"
    argv = ["train", "--model", str(tiny_siglip), "--data", str(tiny_world.mined), "--method", "goal",
            "--out", str(out), "--max-steps", "2", "--batch-size", "4", "--max-text-len", "64",
            "--keep-positions", "0", "--num-workers", "0", "--no-progress", "--checkpoint-every", "1"]
    crash_at_step(2)
    assert main(argv) != 0  # the CLI turns the interrupt into an exit code
    monkeypatch.undo()
    assert not (out / "model.safetensors").exists()
    assert main([*argv, "--resume"]) == 0
    whole = SiglipModel.from_pretrained(trained).state_dict()
    for key, value in SiglipModel.from_pretrained(out).state_dict().items():
        torch.testing.assert_close(value, whole[key], atol=1e-6, rtol=0, msg=key)


def test_separate_tsl_heads_are_refused_for_siglip_with_one_line(tiny_world, tiny_siglip, tmp_path, capsys) -> None:
    code = main(["train", "--model", str(tiny_siglip), "--data", str(tiny_world.mined), "--method", "goal",
                 "--out", str(tmp_path / "heads"), "--tsl-heads", "separate", "--max-steps", "1", "--batch-size", "4",
                 "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and "Traceback" not in err
    assert "a siglip model pools regions with its own attention head: use --tsl-heads shared" in err


@pytest.mark.multiprocess
def test_two_processes_at_batch_b_train_siglip_like_one_process_at_2b(tiny_world, tiny_siglip, tmp_path,
                                                                     launch_ranks) -> None:
    """The whole run, sigmoid loss gathered across processes: the same losses and final weights."""
    common = ["--model", str(tiny_siglip), "--data", str(tiny_world.mined), "--method", "goal", "--max-steps", "2",
              "--lr", "1e-3", "--warmup-steps", "1", "--no-epoch-checkpoints", "--max-text-len", "40",
              "--keep-positions", "4", "--num-workers", "0", "--no-progress", "--log-every", "1"]
    single, double = tmp_path / "one", tmp_path / "two"
    assert main(["train", *common, "--out", str(single), "--batch-size", "4"]) == 0
    done = launch_ranks(["-m", "goalclip.cli", "train", *common, "--out", str(double), "--batch-size", "2"],
                        CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    losses = [[json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
              for out in (single, double)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-4)
    one, two = (SiglipModel.from_pretrained(out).state_dict() for out in (single, double))
    start = SiglipModel.from_pretrained(tiny_siglip).state_dict()
    assert max((one[k] - start[k]).abs().max().item() for k in start if "position" not in k) > 1e-3
    for key, value in one.items():
        # key biases get a zero gradient in exact arithmetic (softmax ignores a shift shared by all keys):
        # Adam scales their rounding noise to full steps, so they carry no signal
        if key.endswith("k_proj.bias"):
            continue
        if key.endswith("in_proj_bias"):  # the pooling head's packed q, k, v biases: drop k
            third = value.shape[0] // 3
            value, other = (torch.cat([v[:third], v[2 * third:]]) for v in (value, two[key]))
        else:
            other = two[key]
        torch.testing.assert_close(other, value, atol=1e-6, rtol=0, msg=key)


def test_a_hub_siglip_v1_folder_trains_at_its_default_context_and_evaluates(hub_siglip, tiny_world, tmp_path,
                                                                             capsys) -> None:
    """No text flags: a 64-position SigLIP stretches to 196 keeping 20 (CLIP's 248 is past its stretch limit);
    the SentencePiece-only folder trains and evaluates, and the trained folder keeps the slow tokenizer's ids."""
    out = tmp_path / "hub"
    assert main(["train", "--model", str(hub_siglip), "--data", str(tiny_world.mined), "--method", "goal",
                 "--out", str(out), "--max-steps", "1", "--batch-size", "4", "--num-workers", "0",
                 "--no-progress"]) == 0, capsys.readouterr().err[-2000:]
    record = json.loads((out / "train_config.json").read_text())
    assert record["derived"]["context_length"] == 196 and record["config"]["keep_positions"] == 20
    for model in (hub_siglip, out):
        assert main(["eval", "--model", str(model), "--data", str(tiny_world.captions), "--ks", "1", "--out",
                     str(tmp_path / f"{model.name}.json"), "--no-progress"]) == 0, capsys.readouterr().err[-2000:]
    texts = list(tiny_world.texts)
    assert load_clip(str(out)).tokenizer(texts)["input_ids"] == SiglipTokenizer.from_pretrained(hub_siglip)(texts)[
        "input_ids"]


def test_a_given_context_past_the_stretch_limit_is_refused_with_what_fits(hub_siglip, tiny_world, tmp_path,
                                                                          capsys) -> None:
    code = main(["train", "--model", str(hub_siglip), "--data", str(tiny_world.mined), "--method", "goal",
                 "--out", str(tmp_path / "long"), "--max-text-len", "248", "--max-steps", "1", "--batch-size", "4",
                 "--num-workers", "0", "--no-progress"])
    err = " ".join(capsys.readouterr().err.split())
    assert code != 0 and "Traceback" not in err
    assert "max_text_len=248 exceeds the stretch limit 4*64-3*20=196" in err
    assert "ask for at most 196, or keep at most 2 positions (--keep-positions)" in err
