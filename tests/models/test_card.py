"""Model cards: every exported model folder (the run's and best/) has a README.md that huggingface_hub's
ModelCard parser accepts, with the run's facts; ``goalclip eval --card`` adds (and replaces) its table."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from tests.conftest import TINY_TRAIN
from huggingface_hub import ModelCard

from goalclip.cli import main
from goalclip.models.card import write_model_card


@pytest.fixture(scope="module")
def trained(tiny_world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("card") / "run"
    flags = {**TINY_TRAIN, "model": tiny_world.model, "data": tiny_world.mined, "out": out, "method": "goal",
             "max_steps": 2, "val_data": tiny_world.captions, "keep_best": "t2i@1"}
    flags.pop("progress")
    argv = ["train", "--no-progress", *(f"--{k.replace('_', '-')}={v}" for k, v in flags.items())]
    assert main(argv) == 0
    return out


def _val_lines(out: Path) -> list[dict]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [line for line in lines if "val" in line]


@pytest.mark.parametrize("folder", ["", "best"])
def test_every_export_has_a_card_that_huggingface_hub_parses(trained, tiny_world, folder):
    card_file = trained / folder / "README.md"
    card = ModelCard.load(card_file)
    assert card.data.library_name == "transformers"
    assert card.data.pipeline_tag == "zero-shot-image-classification"
    assert {"clip", "goalclip", "goal"} <= set(card.data.tags)
    assert card.data.base_model is None  # trained from a local folder, not a hub id
    # the validation of the exported weights: the last one for the run, the best one for best/
    best_step = json.loads((trained / "train_config.json").read_text())["result"]["best"]["step"]
    line = _val_lines(trained)[-1] if not folder else next(v for v in _val_lines(trained) if v["step"] == best_step)
    assert {r.metric_type: r.metric_value for r in card.data.eval_results} == pytest.approx(line["val"], abs=1e-4)
    sha1 = hashlib.sha1(tiny_world.mined.read_bytes()).hexdigest()
    assert f"sha1 {sha1}" in card.text
    assert f"- steps: {line['step']} " in card.text
    assert "- method: `goal`" in card.text and "- text context: 52 tokens" in card.text
    assert "CLIPModel.from_pretrained" in card.text


def test_eval_card_adds_the_table_once(trained, tiny_world, tmp_path, capsys):
    argv = ["eval", "--model", str(trained), "--data", str(tiny_world.captions), "--ks", "1", "5", "--no-progress",
            "--out", str(tmp_path / "eval.json"), "--card", str(trained)]
    assert main(argv) == 0
    assert main(argv) == 0  # a rerun replaces the table rather than adding a second one
    card = ModelCard.load(trained / "README.md")
    assert card.text.count("## Evaluation") == 1
    metrics = json.loads((tmp_path / "eval.json").read_text())["models"][0]["metrics"]
    row = next(line for line in card.text.splitlines() if line.startswith(f"| {trained.name} |"))
    assert [float(c) for c in row.strip("| ").split(" | ")[1:]] == pytest.approx(list(metrics.values()), abs=0.006)
    assert card.data.library_name == "transformers"  # the header survives the edit
    assert f"model card: {trained / 'README.md'}" in capsys.readouterr().out


def test_eval_card_must_be_an_evaluated_model(trained, tiny_world, tmp_path, capsys):
    code = main(["eval", "--model", str(trained), "--data", str(tiny_world.captions), "--card", str(tmp_path)])
    assert code == 1
    assert f"--card {tmp_path}: not one of the --model folders evaluated" in capsys.readouterr().err


def test_base_model_is_the_hub_id_the_run_started_from_even_through_an_export(tmp_path):
    data = tmp_path / "mined.jsonl"
    data.write_text('{"id": "a", "image": "a.png", "caption": "A cat."}\n')

    def run(name: str, model: str) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        record = {"config": {"model": model, "data": str(data), "method": "goal"}, "derived": {"total_steps": 3}}
        (folder / "train_config.json").write_text(json.dumps(record))
        write_model_card(folder, folder)
        return folder

    first = run("first", "openai/clip-vit-base-patch16")
    assert ModelCard.load(first / "README.md").data.base_model == "openai/clip-vit-base-patch16"
    second = run("second", str(first))  # trained further from the exported folder
    assert ModelCard.load(second / "README.md").data.base_model == "openai/clip-vit-base-patch16"
    assert "- steps: 3 " in (second / "README.md").read_text()  # no metrics.jsonl: the planned steps


def test_a_siglip_runs_card_loads_it_as_siglip_with_texts_padded_to_its_context(tmp_path):
    """CLIPModel cannot load a SigLIP folder, and SigLIP's texts pad to the context (``padding=True`` would not)."""
    from goalclip.models.card import build_card

    record = {"config": {"model": "google/siglip-base-patch16-224", "method": "goal", "data": "pairs.jsonl",
                         "max_text_len": None, "keep_positions": 20},
              "derived": {"backbone": "siglip", "context_length": 196}}
    (tmp_path / "train_config.json").write_text(json.dumps(record))
    card = build_card(tmp_path, tmp_path)
    assert "CLIPModel" not in card and "padding=True" not in card
    assert "model = AutoModel.from_pretrained(" in card and "processor = AutoProcessor.from_pretrained(" in card
    assert 'padding="max_length", max_length=196, truncation=True' in card
    assert "A SigLIP model fine-tuned" in card
