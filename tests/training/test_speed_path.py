"""The GPU speed path: SDPA attention, fused AdamW, pinned memory, ``--compile``, and the line that says which is on.

No GPU here: the CPU run must say fused AdamW and pinned memory are off, and ``--compile`` is
checked with dynamo's ``eager`` backend (real graph capture of the step, no C++ code generation,
which takes ~45 s per graph on this machine) standing in for the default inductor backend.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from goalclip.cli import main
from goalclip.core.images import load_rgb
from goalclip.core.text import clean_text, split_sentences
from goalclip.mining.mine import mine_batch
from goalclip.mining.regions import build_proposer
from goalclip.models.clip import load_clip
from goalclip.models.embed import count_truncated, tokenize, tokenize_counted
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.config import LossWeights, TrainConfig
from goalclip.training.optimizer import build_optimizer, fused_adamw_supported
from goalclip.training.step import training_step
from goalclip.training.trainer import train

TINY = {"batch_size": 2, "max_text_len": 40, "keep_positions": 4, "num_workers": 0, "progress": False, "log_every": 1}


def _batch(bundle, manifest: Path) -> dict[str, torch.Tensor]:
    examples = load_examples(manifest, need_local=True)[:4]
    dataset = TrainDataset(examples, bundle, need_local=True)
    return dataset.to_device(Collate(pad_id=bundle.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))]),
                             "cpu")


def _loss_and_grads(model, batch):
    model.zero_grad(set_to_none=True)
    loss, _ = training_step(model, batch, "goal", LossWeights())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_sdpa_and_eager_attention_give_the_same_loss_and_gradients(tiny_world) -> None:
    sdpa = load_clip(str(tiny_world.model), attn_implementation="sdpa")
    eager = load_clip(str(tiny_world.model), attn_implementation="eager")
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert eager.model.config._attn_implementation == "eager"
    batch = _batch(sdpa, tiny_world.mined)
    loss_s, grads_s = _loss_and_grads(sdpa.model, batch)
    loss_e, grads_e = _loss_and_grads(eager.model, batch)
    assert torch.allclose(loss_s, loss_e, atol=1e-6, rtol=1e-6)
    assert grads_s.keys() == grads_e.keys()
    for name in grads_s:
        assert torch.allclose(grads_s[name], grads_e[name], atol=1e-6, rtol=1e-4), name


def test_fused_adamw_only_when_every_parameter_is_on_cuda() -> None:
    def on(kind: str) -> SimpleNamespace:
        return SimpleNamespace(device=torch.device(kind), is_floating_point=lambda: True)

    assert fused_adamw_supported([on("cuda"), on("cuda")])
    assert not fused_adamw_supported([on("cuda"), on("cpu")])
    assert not fused_adamw_supported([])
    model = torch.nn.Linear(3, 2)
    for decay_all in (True, False):
        optimizer = build_optimizer(model, 1e-3, 0.05, decay_all)
        assert not any(group.get("fused") for group in optimizer.param_groups)


def _record(out: Path) -> dict:
    return json.loads((out / "train_config.json").read_text())


def test_cpu_run_logs_and_records_what_is_on(tiny_world, tmp_path, caplog) -> None:
    out = tmp_path / "plain"
    with caplog.at_level(logging.INFO, logger="goalclip.training.trainer"):
        train(TrainConfig(model=str(tiny_world.model), data=str(tiny_world.mined), out=str(out), max_steps=1, **TINY))
    expected = {"attention": "sdpa", "fused_adamw": False, "pin_memory": False, "compile": False}
    assert _record(out)["derived"]["speed_path"] == expected
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("speed path:")]
    assert line == "speed path: attention sdpa, fused AdamW off, pinned memory off, compile off"


def test_compile_flag_compiles_the_tower_encoders_and_trains(tiny_world, tmp_path, monkeypatch, caplog) -> None:
    compiled = []
    real_compile = torch.compile

    def eager_compile(target, *args, **kwargs):  # dynamo's graph capture without inductor's C++ build
        compiled.append(target)
        return real_compile(target, *args, **{**kwargs, "backend": "eager"})

    monkeypatch.setattr(torch, "compile", eager_compile)
    out = tmp_path / "compiled"
    with caplog.at_level(logging.INFO, logger="goalclip.training.trainer"):
        assert main(["train", "--model", str(tiny_world.model), "--data", str(tiny_world.mined), "--out", str(out),
                     "--batch-size", "2", "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0",
                     "--no-progress", "--log-every", "1", "--max-steps", "2", "--compile"]) == 0
    owners = [type(getattr(target, "__self__", None)).__name__ for target in compiled]
    assert owners == ["CLIPEncoder", "CLIPEncoder"]  # the two towers' encoders (vision, text), not the step
    record = _record(out)
    assert record["config"]["compile"] is True and record["derived"]["speed_path"]["compile"] is True
    assert any("compile on" in r.getMessage() for r in caplog.records)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2] and all(math.isfinite(m["loss"]) for m in metrics)


def test_compile_help_and_default(capsys) -> None:
    assert TrainConfig(model="m", data="d", out="o").compile is False
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "--compile" in capsys.readouterr().out


# ----------------------------------------------------------------------------- overhead removed (issue 15.5)


class _CountingTokenizer:
    """Forwards to a tokenizer and counts the texts it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.texts = tokenizer, 0

    def __call__(self, texts, *args, **kwargs):
        self.texts += len(texts)
        return self.tokenizer(texts, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_tokenize_cuts_exactly_like_the_tokenizer_and_counts_what_it_cut(tiny_world) -> None:
    bundle = load_clip(str(tiny_world.model))
    texts = ["A red square.", "A blue circle is drawn here. Nothing else is in it. " * 3, "A green square is drawn.",
             "The picture has a plain white background."]
    for max_len in (4, 9, 16):
        tokens, cut = tokenize_counted(bundle, texts, max_len)
        expected = bundle.tokenizer(texts, padding="longest", truncation=True, max_length=max_len, return_tensors="pt")
        assert torch.equal(tokens["input_ids"], expected["input_ids"]), max_len
        assert torch.equal(tokens["attention_mask"], expected["attention_mask"]), max_len
        assert cut == count_truncated(bundle, texts, max_len)
        assert torch.equal(tokenize(bundle, texts, max_len)["input_ids"], expected["input_ids"])


def test_mine_batch_tokenises_each_sentence_once(tiny_world) -> None:
    bundle = load_clip(str(tiny_world.model))
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    images = [load_rgb(tiny_world.root / r["image"]) for r in records]
    bundle.tokenizer = counting = _CountingTokenizer(bundle.tokenizer)
    mined = mine_batch(bundle, build_proposer("grid"), records, images, top_k=3, crop_batch_size=16,
                       device=torch.device("cpu"))
    sentences = sum(len(split_sentences(clean_text(r["caption"]))) for r in records)
    assert counting.texts == sentences  # was twice: once to embed, once more to count truncation
    assert mined.truncated == 0 and all(match is not None for _, match, _ in mined.results)
