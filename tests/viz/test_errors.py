"""``goalclip viz errors``: image->text failures by margin, checked against a per-image loop."""

import json

import pytest
import torch
from PIL import Image
from transformers import AutoTokenizer, CLIPImageProcessor, CLIPModel

from goalclip.cli import main
from goalclip.core.records import read_manifest
from goalclip.core.text import clean_text
from goalclip.viz.errors import find_failures, word_diff


def test_word_diff_marks_only_the_words_that_differ():
    truth, retrieved = word_diff("A red square sits on the left.", "A blue square sits on the left side.")
    assert [w for w, d in truth if d] == ["red"]
    assert [w for w, d in retrieved if d] == ["blue", "side."]
    assert [w for w, _ in truth] == "A red square sits on the left.".split()


@torch.no_grad()
def _reference_failures(model_dir, manifest):
    """Per image: its score against every caption, one forward at a time, straight from transformers."""
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    records = read_manifest(manifest)

    def unit(x):
        x = x.pooler_output if hasattr(x, "pooler_output") else x
        return x[0] / x[0].norm()

    captions = [unit(model.get_text_features(**tokenizer([clean_text(r["caption"])], return_tensors="pt",
                                                         truncation=True, max_length=16))) for r in records]
    failures = []
    for i, record in enumerate(records):
        image = unit(model.get_image_features(**processor(images=[Image.open(record["image"])], return_tensors="pt")))
        scores = [float(image @ c) for c in captions]
        top = max(range(len(scores)), key=scores.__getitem__)
        if top != i:
            failures.append((record["id"], records[top]["id"], scores[top] - scores[i]))
    return sorted(failures, key=lambda f: f[2], reverse=True)


def test_failures_and_margins_equal_a_per_image_loop(tiny_world):
    failures, queried = find_failures(str(tiny_world.model), tiny_world.captions)
    want = _reference_failures(tiny_world.model, tiny_world.captions)
    assert queried == len(tiny_world.ids)
    assert len(want) > 0, "the tiny random model should make mistakes"
    assert [(f.id, f.retrieved_id) for f in failures] == [(a, b) for a, b, _ in want]
    assert [f.margin for f in failures] == pytest.approx([m for *_, m in want], abs=1e-5)


def test_cli_draws_the_largest_margins_and_writes_the_list(tiny_world, tmp_path, capsys):
    out = tmp_path / "errors.png"
    assert main(["viz", "errors", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                 "--limit", "2", "--out", str(out), "--no-progress"]) == 0
    listed = json.loads(out.with_suffix(".json").read_text())
    assert len(listed["shown"]) == min(2, listed["failures"])
    assert listed["shown"][0]["margin"] >= listed["shown"][-1]["margin"] > 0
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.width > 600
    assert capsys.readouterr().out.strip().startswith(f"viz errors: {listed['failures']} of 8 images fail")
