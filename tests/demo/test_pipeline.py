"""The demo's own measurements: mined pairs scored against the world's truth, and the ablation table."""

import contextlib
import dataclasses
import io
import json
import re

import pytest
from PIL import Image

from goalclip.demo.ablation import ablation_table, summarise
from goalclip.demo.pipeline import (
    EXTRA_ROWS,
    FINETUNE_METHODS,
    DemoPlan,
    iou,
    mining_accuracy,
    run_demo,
)


def test_iou_hand_cases():
    assert iou([0, 0, 10, 10], [0, 0, 10, 10]) == 1.0
    assert iou([0, 0, 10, 10], [5, 0, 15, 10]) == pytest.approx(50 / 150)
    assert iou([0, 0, 10, 10], [20, 20, 30, 30]) == 0.0


def test_mining_accuracy_counts_tight_and_containing_regions(tmp_path):
    objects = [{"sentence": "A red circle.", "box": [8, 8, 24, 24]},
               {"sentence": "A blue square.", "box": [40, 40, 56, 56]}]
    truth = [{"id": f"i{k}", "image": "x.png", "caption": "A red circle. A blue square. Grey.", "objects": objects}
             for k in range(4)]
    locals_ = [
        {"sentence": "A red circle.", "box": [8, 8, 24, 24]},     # tight: hit, contains
        {"sentence": "A blue square.", "box": [32, 32, 64, 64]},  # quadrant holding the object: contains only
        {"sentence": "A red circle.", "box": [32, 32, 64, 64]},   # wrong place: neither
        {"sentence": "Grey.", "box": [0, 0, 32, 32]},             # scene sentence: neither
    ]
    mined = [{**t, "local": {**loc, "score": 0.5, "source": "grid"}} for t, loc in zip(truth, locals_)]
    for name, records in (("truth.jsonl", truth), ("mined.jsonl", mined)):
        (tmp_path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    result = mining_accuracy(tmp_path / "truth.jsonl", tmp_path / "mined.jsonl")
    assert (result["pairs"], result["box_matches_sentence"], result["region_contains_object"]) == (4, 1, 2)
    assert result["scene_sentence_chosen"] == 1
    assert result["rate"] == 0.25 and result["contains_rate"] == 0.5


def test_ablation_cells_show_mean_and_sample_std_and_single_runs_alone():
    results = {"models": [{"metrics": {"t2i@1": v}} for v in (5.0, 10.0, 20.0, 30.0)]}
    summary = summarise(results, ["pretrained", "goal", "goal", "global"])
    assert list(summary) == ["pretrained", "goal", "global"]
    assert summary["goal"]["t2i@1"]["mean"] == 15.0
    assert summary["goal"]["t2i@1"]["std"] == pytest.approx(7.0711, abs=1e-4)
    table = ablation_table(summary, ["t2i@1"]).splitlines()
    assert table[0] == "| model | runs | t2i@1 |"
    assert table[2:] == ["| pretrained | 1 | 5.00 |", "| goal | 2 | 15.00 ± 7.07 |", "| global | 1 | 30.00 |"]
    with pytest.raises(ValueError, match="3 labels for 4"):
        summarise(results, ["a", "b", "c"])


TINY = DemoPlan(n_pretrain=24, n_train=16, n_test=8, image_size=32, width=32, layers=1, pretrain_steps=2,
                pretrain_batch=8, finetune_epochs=1, finetune_batch=8, finetune_seeds=2, finetune_extra_rows=True)
ROWS = [*FINETUNE_METHODS, *(row.label for row in EXTRA_ROWS)]


@pytest.fixture(scope="module")
def tiny_demo(tmp_path_factory):
    """One tiny demo run (two fine-tune seeds) shared by the tests below: its folder, summary and stdout."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    capture = io.StringIO()
    with contextlib.redirect_stdout(capture):
        summary = run_demo(out, plan=TINY, progress=False)
    return out, summary, capture.getvalue()


@pytest.mark.slow
def test_demo_prints_the_ablation_table_over_seeds_and_draws_its_bars(tiny_demo):
    out, summary, printed = tiny_demo
    assert summary["table"] in printed
    rows = [line.split(" | ")[0].strip("| ") for line in printed.splitlines() if line.startswith("| ")]
    assert rows == 3 * ["model", "pretrained", *ROWS]  # retrieval, joint mAP@10, resolution-gap probe
    headers = [line for line in printed.splitlines() if line.startswith("| model ")]
    assert headers == ["| model | runs | t2i@1 | t2i@5 | i2t@1 | i2t@5 |", "| model | runs | i2t_map@10 | t2i_map@10 |",
                       "| model | runs | marking_crop | marking_global |"]
    assert "| pretrained | 1 |" in printed and "| goal | 2 |" in printed
    assert re.search(r"\| goal \| 2 \| \d+\.\d\d ± \d+\.\d\d \|", printed)
    metrics = json.loads((out / "metrics.json").read_text())
    ablation = metrics["ablation"]["summary"]
    assert list(ablation) == ["pretrained", *ROWS]
    assert all(ablation[m]["t2i@1"]["n"] == 2 for m in ROWS)
    assert len(metrics["models"]) == 1 + 2 * len(ROWS)
    with Image.open(out / "figures" / "ablation.png") as image:
        assert image.format == "PNG" and image.width > 200


@pytest.mark.slow
def test_demo_rerun_reuses_its_pretrained_checkpoint_when_only_fine_tuning_changes(tiny_demo):
    out, first, _ = tiny_demo
    weights = (out / "models" / "pretrained" / "model.safetensors").read_bytes()
    again = run_demo(out, plan=dataclasses.replace(TINY, finetune_seeds=1, finetune_extra_rows=False), progress=False)
    assert "pretrain" in first["times_s"] and "pretrain" not in again["times_s"]
    assert (out / "models" / "pretrained" / "model.safetensors").read_bytes() == weights


@pytest.mark.slow
def test_demo_renders_at_four_times_the_model_input_and_trains_the_extra_rows_on_their_pairs(tiny_demo):
    out, summary, _ = tiny_demo
    with Image.open(out / "world" / "images" / "train-000000.png") as image:
        assert image.size == (4 * TINY.image_size, 4 * TINY.image_size)
    with Image.open(out / "world" / "images" / "pretrain-000000.png") as image:
        assert image.size == (TINY.image_size, TINY.image_size)
    boxes_only = [json.loads(line) for line in (out / "mined" / "train_boxes.jsonl").read_text().splitlines()]
    assert boxes_only and all(r["local"]["source"] == "external" for r in boxes_only)
    configs = {row: json.loads((out / "models" / row.replace(" ", "_") / "seed0" / "train_config.json").read_text())
               for row in ROWS}
    assert configs["goal boxes-only"]["config"]["data"].endswith("train_boxes.jsonl")
    assert configs["goal"]["config"]["data"].endswith("train.jsonl")
    assert (configs["goal top-3 weighted"]["config"]["local_pairs"],
            configs["goal top-3 weighted"]["config"]["pair_weighting"]) == (3, "similarity")
    assert {k: v for k, v in summary["plan"].items() if k.startswith("finetune_")} == {
        k: v for k, v in dataclasses.asdict(TINY).items() if k.startswith("finetune_")}


def test_quick_and_full_plans_run_the_four_loss_methods_and_extra_rows_only_on_request(tmp_path, monkeypatch):
    from goalclip.cli import main
    from goalclip.demo import pipeline

    assert [row.label for row in pipeline.ablation_rows(pipeline.QUICK)] == list(FINETUNE_METHODS)
    assert pipeline.QUICK.finetune_seeds == 1 and DemoPlan().finetune_seeds == 3
    assert [row.label for row in pipeline.ablation_rows(DemoPlan())] == list(FINETUNE_METHODS)
    seen = []
    monkeypatch.setattr(pipeline, "run_demo", lambda out, **kw: seen.append(kw) or {"summary": "done"})
    main(["demo", "--quick", "--out", str(tmp_path)])
    main(["demo", "--extra-rows", "--out", str(tmp_path)])
    assert [(kw["quick"], kw["extra_rows"]) for kw in seen] == [(True, False), (False, True)]


@pytest.mark.slow
def test_marking_probe_swaps_only_the_objects_marking_and_scores_every_object(tiny_demo):
    from goalclip.core.records import read_manifest
    from goalclip.demo.probe import _swapped, marking_probe

    obj = {"shape": "circle", "marking": "spots", "sentence": "A red circle with spots sits in the top left."}
    swapped = _swapped(obj["sentence"], obj, "vertical stripes")
    assert swapped == "A red circle with vertical stripes sits in the top left."
    plain = "A red circle sits in the top left."
    with pytest.raises(ValueError, match="does not name its marking"):
        _swapped(plain, {**obj, "sentence": plain}, "spots")
    out, _, _ = tiny_demo
    test = read_manifest(out / "world" / "test.jsonl")
    counts = {"marking_crop": sum(len(r["objects"]) for r in test), "marking_global": len(test)}
    (scores,) = marking_probe([str(out / "models" / "goal" / "seed0")], str(out / "world" / "test.jsonl"),
                              context=TINY.max_text_len, keep_positions=TINY.keep_positions)
    assert set(scores) == {"marking_crop", "marking_global"}
    for metric, value in scores.items():  # a percentage of whole objects: all of them, or one per image
        assert 0 <= value <= 100 and round(value * counts[metric] / 100, 6).is_integer()
    recorded = json.loads((out / "metrics.json").read_text())["ablation"]["summary"]["goal"]
    assert recorded["marking_crop"]["values"][0] == pytest.approx(scores["marking_crop"])
