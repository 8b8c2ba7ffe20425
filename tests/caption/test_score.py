"""``goalclip data score`` against cosines computed by hand with plain transformers calls."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from goalclip.caption.score import ScoreConfig, score_manifest
from goalclip.cli import main
from goalclip.models.clip import load_clip


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="module")
def by_hand(tiny_world) -> dict[str, float]:
    """Each record's image-caption cosine from CLIPModel's own towers, one record at a time."""
    model = CLIPModel.from_pretrained(tiny_world.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_world.model)
    processor = AutoImageProcessor.from_pretrained(tiny_world.model)
    scores = {}
    with torch.no_grad():
        for record in _read(tiny_world.captions):
            tokens = tokenizer(record["caption"], truncation=True, max_length=16, return_tensors="pt")
            text = model.text_projection(model.text_model(**tokens).pooler_output)
            pixels = processor(images=Image.open(tiny_world.root / record["image"]).convert("RGB"),
                               return_tensors="pt")["pixel_values"]
            image = model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output)
            scores[record["id"]] = float(F.cosine_similarity(text, image).item())
    return scores


def test_score_all_matches_cosines_computed_by_hand(tiny_world, by_hand, tmp_path: Path, capsys) -> None:
    scores = tmp_path / "scores.jsonl"
    assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                 "--sample", "0", "--scores-out", str(scores), "--batch-size", "3", "--no-progress"]) == 0
    rows = {r["id"]: r["score"] for r in _read(scores)}
    # 1e-4: goalclip decodes with the PIL image-processor backend, the hand computation with the default one.
    assert rows == pytest.approx(by_hand, abs=1e-4)
    line = capsys.readouterr().out
    printed = float(line.split("mean image-caption cosine ")[1].split()[0])
    assert printed == pytest.approx(sum(by_hand.values()) / len(by_hand), abs=2e-4)
    assert "over 8 of 8 records" in line and "truncated at 16" in line


def test_score_sample_is_seeded(tiny_world, tmp_path: Path) -> None:
    def ids(seed: int, name: str) -> list[str]:
        out = tmp_path / name
        assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                     "--sample", "3", "--seed", str(seed), "--scores-out", str(out), "--no-progress"]) == 0
        return [r["id"] for r in _read(out)]

    first = ids(1, "a.jsonl")
    assert len(first) == 3 and ids(1, "b.jsonl") == first
    assert any(ids(seed, f"s{seed}.jsonl") != first for seed in (2, 3, 4))


def test_min_score_writes_the_records_scoring_at_least_it(tiny_world, by_hand, tmp_path: Path) -> None:
    ranked = sorted(by_hand.values())
    threshold = (ranked[3] + ranked[4]) / 2  # midway between two scores: float rounding cannot move a record
    out = tmp_path / "kept" / "kept.jsonl"
    assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                 "--min-score", str(threshold), "--out", str(out), "--no-progress"]) == 0
    kept = _read(out)
    assert [r["id"] for r in kept] == [i for i in tiny_world.ids if by_hand[i] >= threshold]
    assert len(kept) == 4 and (out.parent / kept[0]["image"]).is_file()


def test_min_score_with_a_sample_is_refused(tiny_world, tmp_path: Path, capsys) -> None:
    assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                 "--min-score", "0.1", "--sample", "5", "--out", str(tmp_path / "o.jsonl")]) == 1
    assert "--min-score filters every record" in capsys.readouterr().err


def test_score_stretches_a_short_context_when_asked(tiny_world, tmp_path: Path, capsys) -> None:
    assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                 "--sample", "0", "--max-text-len", "40", "--keep-positions", "4", "--no-progress"]) == 0
    assert "0 captions truncated at 40 tokens" in capsys.readouterr().out


def test_score_counts_unreadable_images(tiny_world, tmp_path: Path, capsys) -> None:
    records = _read(tiny_world.captions)[:3]
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"no image")
    records[1]["image"] = str(bad)
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))
    scores = tmp_path / "s.jsonl"
    assert main(["data", "score", "--model", str(tiny_world.model), "--data", str(manifest), "--sample", "0",
                 "--scores-out", str(scores), "--no-progress"]) == 0
    assert [r["id"] for r in _read(scores)] == [records[0]["id"], records[2]["id"]]
    assert "over 2 of 3 records (1 unreadable" in capsys.readouterr().out


def test_score_preprocesses_in_the_loader_workers(tiny_world, by_hand, tmp_path: Path, monkeypatch) -> None:
    """With workers, the image processor never runs in the main process, and the scores are the same."""
    main_pid = os.getpid()
    processor_class = type(load_clip(str(tiny_world.model)).image_processor)
    real = processor_class.__call__

    def guarded(self, *args, **kwargs):
        assert os.getpid() != main_pid, "the image processor ran in the main process"
        return real(self, *args, **kwargs)

    monkeypatch.setattr(processor_class, "__call__", guarded)
    scores = tmp_path / "scores.jsonl"
    score_manifest(ScoreConfig(model=str(tiny_world.model), data=str(tiny_world.captions), sample=0,
                               scores_out=str(scores), batch_size=3, num_workers=2, progress=False))
    assert {r["id"]: r["score"] for r in _read(scores)} == pytest.approx(by_hand, abs=1e-4)
