"""``goalclip caption`` on a tiny random LLaVA-NeXT built offline: batching, records, resume, sharding,
clean-up, the backend seam and the messages for bad inputs. Random weights write noise; these tests
check the plumbing, not the prose."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import types
from pathlib import Path
from typing import ClassVar

import pytest
import torch
from PIL import Image

from goalclip.caption.clean import clean_caption
from goalclip.caption.engines import TransformersEngine
from goalclip.caption.generate import CaptionConfig, caption
from goalclip.caption.prompt import DEFAULT_PROMPT
from goalclip.caption.tiny import build_tiny_llava_next, build_tiny_tokenizer
from goalclip.cli import main

MAX_NEW = 24
# Different sizes and aspect ratios: LLaVA-NeXT gives them different numbers of image tokens, so a
# batch is really left-padded.
SIZES = [(64, 48), (40, 80), (50, 50), (70, 30), (33, 61), (80, 80)]
COLOURS = [(200, 10, 10), (10, 10, 200), (10, 200, 10), (100, 100, 10), (240, 240, 240), (20, 20, 20)]


@pytest.fixture(scope="session")
def tiny_llava(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_llava_next(tmp_path_factory.mktemp("llava") / "model")


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    for i, (size, colour) in enumerate(zip(SIZES, COLOURS)):
        image = Image.new("RGB", size, colour)
        image.paste((255 - colour[0], 128, colour[2]), (size[0] // 4, size[1] // 4, size[0] // 2, size[1] // 2))
        image.save(folder / f"p{i}.png")
    return folder


def _images(folder: Path) -> list[Image.Image]:
    return [Image.open(folder / f"p{i}.png").convert("RGB") for i in range(len(SIZES))]


def _args(data: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return ["caption", "--data", str(data), "--out", str(out), "--model", str(model), "--max-new-tokens",
            str(MAX_NEW), "--batch-size", "4", "--num-workers", "0", "--no-progress", *extra]


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@pytest.fixture(scope="session")
def reference_run(tiny_llava: Path, image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One uninterrupted single-process run over the folder, to compare the others with."""
    out = tmp_path_factory.mktemp("ref") / "captions.jsonl"
    assert main(_args(image_folder, out, tiny_llava)) == 0
    return _read(out) + _read(out.with_name("captions.skipped.jsonl"))


# ----------------------------------------------------------------------------- clean-up


def test_clean_caption_strips_prompt_echo_role_label_and_whitespace() -> None:
    prompt = "Describe the image."
    # a line break stays one (a sentence boundary for mining, a space to the tokenizer)
    assert clean_caption("Describe the image.  ASSISTANT:  A red  square.\n\nIt is small.", prompt, False).text \
        == "A red square.\nIt is small."
    assert clean_caption("[/INST] A cat sits.", prompt, False).text == "A cat sits."


def test_clean_caption_drops_a_last_sentence_cut_off_by_the_token_limit() -> None:
    cut = clean_caption("A red square sits left. A blue circle is on the", "p", hit_limit=True)
    assert cut.text == "A red square sits left." and cut.cut_sentence
    finished = clean_caption("A red square sits left. A blue circle.", "p", hit_limit=True)
    assert finished.text == "A red square sits left. A blue circle." and not finished.cut_sentence
    stopped = clean_caption("A red square sits left. A blue circle is on the", "p", hit_limit=False)
    assert stopped.text.endswith("on the") and not stopped.cut_sentence  # ended by EOS: nothing was cut
    only = clean_caption("A blue circle is on the", "p", hit_limit=True)
    assert only.text == "" and only.cut_sentence


# ----------------------------------------------------------------------------- transformers backend


def test_batched_greedy_generation_equals_one_image_at_a_time(tiny_llava: Path, image_folder: Path) -> None:
    engine = TransformersEngine(str(tiny_llava), device=torch.device("cpu"), dtype=torch.float32,
                                max_new_tokens=MAX_NEW)
    images = _images(image_folder)
    batched = engine.generate(images, DEFAULT_PROMPT)
    single = [engine.generate([image], DEFAULT_PROMPT)[0] for image in images]
    assert batched == single
    assert len({g.text for g in batched}) > 1  # not a degenerate constant output


def test_caption_writes_every_image_once_with_its_meta(reference_run: list[dict], tiny_llava: Path) -> None:
    captioned = [r for r in reference_run if "caption" in r]
    assert sorted(r["id"] for r in reference_run) == [f"p{i}" for i in range(len(SIZES))]
    assert captioned, "the tiny model should caption at least one image"
    for record in captioned:
        assert record["caption"].strip() == record["caption"] and record["image"].endswith(".png")
        meta = record["caption_meta"]
        assert meta["prompt_sha256"] == hashlib.sha256(DEFAULT_PROMPT.encode()).hexdigest()
        assert meta["model"] == str(tiny_llava) and meta["backend"] == "transformers"
        assert meta["max_new_tokens"] == MAX_NEW and meta["decoding"] == "greedy" and meta["dtype"] == "float32"
        if meta["cut_sentence"]:
            assert record["caption"][-1] in ".!?"


def test_caption_accepts_a_manifest_without_captions_and_keeps_its_fields(
        tiny_llava: Path, image_folder: Path, tmp_path: Path, reference_run: list[dict]) -> None:
    manifest = tmp_path / "images.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"p{i}", "image": str(image_folder / f"p{i}.png"),
                                            "width": SIZES[i][0]}) + "\n" for i in range(2)))
    out = tmp_path / "out" / "captions.jsonl"
    assert main(_args(manifest, out, tiny_llava)) == 0
    records = _read(out)
    reference = {r["id"]: r.get("caption") for r in reference_run}
    assert all(r["width"] == SIZES[int(r["id"][1:])][0] for r in records)
    assert {r["id"]: r["caption"] for r in records} == {k: v for k, v in reference.items()
                                                        if k in ("p0", "p1") and v is not None}
    assert (out.parent / records[0]["image"]).resolve() == (image_folder / f"{records[0]['id']}.png").resolve()


def test_caption_records_the_prompt_file_hash(tiny_llava: Path, image_folder: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.txt"
    prompt.write_text("Describe the picture.\n")
    out = tmp_path / "c.jsonl"
    assert main(_args(image_folder, out, tiny_llava, "--prompt-file", str(prompt), "--max-images", "2")) == 0
    records = _read(out)
    assert records and all(r["caption_meta"]["prompt_sha256"] == hashlib.sha256(b"Describe the picture.").hexdigest()
                           for r in records)


def test_caption_refuses_an_existing_out_without_resume(tiny_llava: Path, image_folder: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "c.jsonl"
    out.write_text("")
    assert main(_args(image_folder, out, tiny_llava)) == 1
    assert "pass --resume" in capsys.readouterr().err


def test_the_processor_runs_in_the_loader_workers_and_captions_equal_the_in_process_ones(
        tiny_llava: Path, image_folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine's processor (the CPU part of generation) runs in the loader workers; captions are the same as
    ``engine.generate`` on the same images in this process."""
    engine = TransformersEngine(str(tiny_llava), device=torch.device("cpu"), dtype=torch.float32,
                                max_new_tokens=MAX_NEW)
    in_process = [clean_caption(g.text, DEFAULT_PROMPT, g.hit_limit).text
                  for g in engine.generate(_images(image_folder), DEFAULT_PROMPT)]
    main_pid = os.getpid()
    real = type(engine.processor).__call__

    def guarded(self, *args, **kwargs):
        assert os.getpid() != main_pid, "the caption processor ran in the main process"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(type(engine.processor), "__call__", guarded)
    out = tmp_path / "c.jsonl"
    config = CaptionConfig(data=str(image_folder), out=str(out), batch_size=len(SIZES), num_workers=2,
                           device="cpu", max_new_tokens=MAX_NEW, progress=False)
    caption(config, engine=engine)
    assert {r["id"]: r["caption"] for r in _read(out)} == {f"p{i}": text for i, text in enumerate(in_process) if text}


# ----------------------------------------------------------------------------- resume and sharding


def test_resume_after_a_kill_writes_every_id_once(tiny_llava: Path, image_folder: Path, tmp_path: Path,
                                                  reference_run: list[dict], monkeypatch: pytest.MonkeyPatch) -> None:
    real_generate = TransformersEngine.generate_prepared
    calls = {"n": 0}

    def dies_on_second_batch(self, inputs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real_generate(self, inputs)

    out = tmp_path / "c.jsonl"
    monkeypatch.setattr(TransformersEngine, "generate_prepared", dies_on_second_batch)
    assert main(_args(image_folder, out, tiny_llava)) == 130
    monkeypatch.setattr(TransformersEngine, "generate_prepared", real_generate)
    part = tmp_path / "c.jsonl.part0"
    assert part.exists() and not out.exists()
    with part.open("a") as handle:  # the kill tore a line in half
        handle.write('{"id": "p5", "image": "p5.pn')
    assert main(_args(image_folder, out, tiny_llava, "--resume")) == 0
    records = _read(out) + _read(tmp_path / "c.skipped.jsonl")
    assert sorted(r["id"] for r in records) == sorted(r["id"] for r in reference_run)
    assert {r["id"]: r.get("caption") for r in records} == {r["id"]: r.get("caption") for r in reference_run}
    assert not list(tmp_path.glob("c.jsonl.part*"))


@pytest.mark.multiprocess
def test_two_process_sharding_gives_the_same_records_as_one(tiny_llava: Path, image_folder: Path, tmp_path: Path,
                                                            reference_run: list[dict], launch_ranks) -> None:
    out = tmp_path / "c.jsonl"
    # torchrun: `accelerate launch --cpu --num_processes 2` starts a single process (its simple launcher)
    done = launch_ranks(["-m", "goalclip.cli", *_args(image_folder, out, tiny_llava)])
    assert done.returncode == 0, done.stderr[-3000:]
    assert _read(out) == [r for r in reference_run if "caption" in r]
    assert "captioned" in done.stdout
    assert done.stderr.count("captioning 3 images") == 2, done.stderr[-3000:]  # each rank its own half


# ----------------------------------------------------------------------------- backend seam


class _FakeOutput:
    def __init__(self, text: str, finish_reason: str):
        self.outputs = [types.SimpleNamespace(text=text, finish_reason=finish_reason)]


class _FakeLLM:
    """Stands in for ``vllm.LLM``: records what it was given, answers by image width."""

    instances: ClassVar[list[_FakeLLM]] = []

    def __init__(self, model: str, **kwargs):
        self.model, self.kwargs, self.requests = model, kwargs, []
        _FakeLLM.instances.append(self)

    def generate(self, requests, sampling, use_tqdm=True):
        self.requests += requests
        self.sampling = sampling
        return [_FakeOutput(f"A picture {r['multi_modal_data']['image'].width} wide. Its top is",
                            "length" if r["multi_modal_data"]["image"].width > 50 else "stop") for r in requests]


def test_vllm_backend_seam_with_a_fake_engine(tiny_llava: Path, image_folder: Path, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("vllm")
    fake.LLM = _FakeLLM
    fake.SamplingParams = lambda **kw: types.SimpleNamespace(**kw)
    monkeypatch.setitem(sys.modules, "vllm", fake)
    out = tmp_path / "c.jsonl"
    assert main(_args(image_folder, out, tiny_llava, "--backend", "vllm")) == 0
    llm = _FakeLLM.instances[-1]
    assert llm.model == str(tiny_llava) and llm.sampling.temperature == 0.0 and llm.sampling.max_tokens == MAX_NEW
    assert len(llm.requests) == len(SIZES) and llm.requests[0]["prompt"].count("<image>") == 1
    assert DEFAULT_PROMPT in llm.requests[0]["prompt"]
    records = {r["id"]: r for r in _read(out)}
    assert records["p0"]["caption"] == "A picture 64 wide." and records["p0"]["caption_meta"]["cut_sentence"]
    assert records["p1"]["caption"] == "A picture 40 wide. Its top is"  # stopped by the model: kept whole
    assert records["p1"]["caption_meta"]["backend"] == "vllm"


def test_vllm_backend_not_installed_is_a_clear_error(tiny_llava: Path, image_folder: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)
    assert main(_args(image_folder, tmp_path / "c.jsonl", tiny_llava, "--backend", "vllm")) == 1
    assert "needs the vllm package" in capsys.readouterr().err


# ----------------------------------------------------------------------------- bad inputs


def test_unreadable_image_and_empty_generation_are_skipped_and_counted(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        (folder / f"p{i}.png").write_bytes((image_folder / f"p{i}.png").read_bytes())
    (folder / "broken.jpg").write_bytes(b"not a jpeg")

    class Engine:
        def generate(self, images, prompt):
            from goalclip.caption.engines import Generation

            return [Generation("" if image.width == 40 else "  A thing. It is", image.width == 64)
                    for image in images]

    out = tmp_path / "c.jsonl"
    summary = caption(CaptionConfig(data=str(folder), out=str(out), num_workers=0, progress=False), engine=Engine())
    assert summary["captioned"] == 2 and summary["skipped"] == 2 and summary["cut_sentences"] == 1
    assert summary["skipped_reasons"] == {"unreadable image": 1, "empty generation": 1}
    skipped = {r["id"]: r for r in _read(tmp_path / "c.skipped.jsonl")}
    assert "broken.jpg" in skipped["broken"]["reason"] and skipped["p1"]["kind"] == "empty generation"
    assert {r["id"]: r["caption"] for r in _read(out)} == {"p0": "A thing.", "p2": "A thing. It is"}


def test_model_without_chat_template_is_refused_with_a_clear_message(
        image_folder: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = build_tiny_llava_next(tmp_path / "no_template", chat_template=False)
    assert main(_args(image_folder, tmp_path / "c.jsonl", model)) == 1
    err = capsys.readouterr().err
    assert "goalclip caption: error:" in err and "no chat template" in err and str(model) in err


def test_text_only_model_is_refused_with_a_clear_message(image_folder: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tiny_tokenizer()
    model = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                         num_attention_heads=2, vocab_size=len(tokenizer)))
    model.save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    assert main(_args(image_folder, tmp_path / "c.jsonl", tmp_path / "llama")) == 1
    assert "is not an image-text-to-text model" in capsys.readouterr().err


# ----------------------------------------------------------------------------- the whole pipeline


@pytest.mark.slow
def test_pipeline_sa1b_sample_caption_score_mine_train_two_stages(tiny_llava: Path, tiny_world, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture) -> None:
    """SA-1B layout -> data convert -> data sample -> caption -> data score (filter) -> mine with the masks'
    boxes -> train stage 1 -> train stage 2 on a target set, all through the CLI on tiny offline models."""
    root = tmp_path / "sa1b" / "sa_000000"
    root.mkdir(parents=True)
    for i, (size, colour) in enumerate(zip(SIZES, COLOURS), start=1):
        image = Image.new("RGB", (96, 72), colour)
        image.paste((255 - colour[0], 128, colour[2]), (10 + 5 * i, 8, 50 + 5 * i, 48))
        image.save(root / f"sa_{i}.jpg")
        masks = [{"bbox": [10 + 5 * i, 8, 40, 40], "area": 1600}, {"bbox": [0, 50, 96, 22], "area": 2112}]
        info = {"image_id": i, "width": 96, "height": 72, "file_name": f"sa_{i}.jpg"}
        (root / f"sa_{i}.json").write_text(json.dumps({"image": info, "annotations": masks}))
    work = tmp_path / "work"
    steps = [
        ["data", "convert", "--format", "sa1b", "--root", str(root.parent), "--split", "all",
         "--out", str(work / "sa1b.jsonl"), "--boxes-out", str(work / "boxes.jsonl")],
        ["data", "sample", "--data", str(work / "sa1b.jsonl"), "--n", "5", "--seed", "0",
         "--out", str(work / "sample.jsonl")],
        _args(work / "sample.jsonl", work / "captions.jsonl", tiny_llava),
        ["data", "score", "--model", str(tiny_world.model), "--data", str(work / "captions.jsonl"),
         "--min-score", "-1", "--out", str(work / "kept.jsonl"), "--scores-out", str(work / "scores.jsonl"),
         "--no-progress"],
        ["mine", "--model", str(tiny_world.model), "--data", str(work / "kept.jsonl"), "--out",
         str(work / "mined.jsonl"), "--regions", "external", "--boxes", str(work / "boxes.jsonl"),
         "--num-workers", "0", "--no-progress"],
        ["train", "--model", str(tiny_world.model), "--data", str(work / "mined.jsonl"), "--out",
         str(work / "stage1"), "--max-steps", "2", "--batch-size", "2", "--max-text-len", "52",
         "--keep-positions", "4", "--num-workers", "0", "--no-progress"],
        ["train", "--model", str(work / "stage1"), "--data", str(tiny_world.mined), "--out", str(work / "stage2"),
         "--max-steps", "2", "--batch-size", "2", "--max-text-len", "52", "--num-workers", "0", "--no-progress"],
    ]
    for argv in steps:
        assert main(argv) == 0, f"{argv[0]} {argv[1]} failed: {capsys.readouterr().err[-2000:]}"
    captioned = _read(work / "captions.jsonl")
    mined = _read(work / "mined.jsonl")
    assert len(_read(work / "sample.jsonl")) == 5 and len(captioned) >= 2
    assert [r["id"] for r in _read(work / "kept.jsonl")] == [r["id"] for r in captioned]
    assert mined and all(r["local"]["source"] == "external" and r["local"]["sentence"] in r["caption"]
                         for r in mined)
    boxes = {r["id"]: r["boxes"] for r in _read(work / "boxes.jsonl")}
    assert all(r["local"]["box"] in boxes[r["id"]] for r in mined)
    for stage in ("stage1", "stage2"):
        config = json.loads((work / stage / "train_config.json").read_text())
        assert config["derived"]["total_steps"] == 2 and (work / stage / "model.safetensors").is_file()


def test_vllm_backend_under_several_processes_is_refused(image_folder: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from goalclip.caption import generate

    class TwoProcesses:
        num_processes, process_index, is_main_process, device = 2, 0, True, torch.device("cpu")

    monkeypatch.setattr(generate, "process_state", lambda device: TwoProcesses())
    with pytest.raises(ValueError, match="--backend vllm runs as one process"):
        caption(CaptionConfig(data=str(image_folder), out=str(tmp_path / "c.jsonl"), backend="vllm"))


def test_cli_default_model_is_the_library_default() -> None:
    from goalclip.cli import build_parser

    args = build_parser().parse_args(["caption", "--data", "images", "--out", "c.jsonl"])
    assert args.model == CaptionConfig(data="images", out="c.jsonl").model
