"""LISM's whole-image rule as the GOAL authors' pipeline applies it (issue #20, item 1).

Their ``*_del_org.json`` files drop the *sentences* whose best region is the whole image and train
on the best remaining pair; an image loses its local pair only when every sentence chose the whole
image, and then it still trains the global loss.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from goalclip.cli import main as cli_main
from goalclip.core.records import read_manifest
from goalclip.mining.mine import match_pairs
from goalclip.mining.boxes import Region
from goalclip.training.data import Collate, load_examples

from tests.conftest import TINY_TRAIN

BOX = Region((0.0, 0.0, 10.0, 10.0), "grid")
WHOLE = Region((0.0, 0.0, 20.0, 10.0), "whole")


def test_whole_image_winning_the_top_sentence_keeps_the_best_box_pair() -> None:
    # (a) s0 scores highest and picks the whole image; s1 picks the box: the box pair is kept.
    similarity = torch.tensor([[0.2, 0.9], [0.7, 0.6], [0.1, 0.3]])
    match = match_pairs(similarity, ["s0", "s1", "s2"], [BOX, WHOLE], top_k=5)
    assert match.best == {"sentence": "s1", "box": [0.0, 0.0, 10.0, 10.0], "score": 0.7, "source": "grid"}
    assert [c["sentence"] for c in match.candidates] == ["s0", "s1", "s2"]  # candidates as before
    # today's rule, kept behind --whole-wins drop-image
    old = match_pairs(similarity, ["s0", "s1", "s2"], [BOX, WHOLE], top_k=5, whole_wins="drop-image")
    assert old.best is None and old.discarded


def test_every_sentence_choosing_the_whole_image_leaves_no_pair_but_keeps_the_image() -> None:
    match = match_pairs(torch.tensor([[0.2, 0.9], [0.1, 0.6]]), ["s0", "s1"], [BOX, WHOLE], top_k=1)
    assert match.best is None and not match.discarded
    assert [c["source"] for c in match.candidates] == ["whole"]


def _mine_with_whole(tiny_world, tmp_path: Path) -> Path:
    """Mine with external boxes for img0..img5 only: img6 and img7 have the whole image as only region."""
    boxes = [json.loads(line) for line in tiny_world.boxes.read_text().splitlines()]
    box_path = tmp_path / "boxes.jsonl"
    box_path.write_text("".join(json.dumps(b) + "\n" for b in boxes if b["id"] not in ("img6", "img7")))
    data = tmp_path / "captions.jsonl"
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    data.write_text("".join(json.dumps({**r, "image": str(tiny_world.root / r["image"])}) + "\n" for r in records))
    out = tmp_path / "mined.jsonl"
    assert cli_main(["mine", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out),
                     "--regions", "external,whole", "--boxes", str(box_path), "--num-workers", "0",
                     "--no-progress", "--batch-size", "4"]) == 0
    return out


def test_mine_keeps_every_image_and_global_and_goal_train_on_the_same_images(tiny_world, tmp_path, capsys) -> None:
    # (b) no image leaves the mined manifest; --method global and --method goal see the same images
    out = _mine_with_whole(tiny_world, tmp_path)
    records = read_manifest(out)
    assert [r["id"] for r in records] == list(tiny_world.ids)
    without = [r["id"] for r in records if r["local"] is None]
    assert {"img6", "img7"} <= set(without)
    summary = json.loads(out.with_name("mined.summary.json").read_text())
    assert summary["images"] == 8 and summary["without_local_pair"] == len(without)
    assert summary["pairs"] == 8 - len(without)
    assert not out.with_name("mined.skipped.jsonl").read_text().strip()

    goal = load_examples(out, need_local=True)
    assert [e.id for e in goal] == [e.id for e in load_examples(out, need_local=False)] == list(tiny_world.ids)
    assert {e.id for e in goal if not e.pairs} == set(without)

    seen = {}
    for method in ("global", "goal"):
        run = tmp_path / method
        args = ["train", "--model", str(tiny_world.model), "--data", str(out), "--out", str(run),
                "--method", method, "--max-steps", "4", "--batch-size", "2", "--max-text-len",
                str(TINY_TRAIN["max_text_len"]), "--keep-positions", str(TINY_TRAIN["keep_positions"]),
                "--num-workers", "0", "--no-progress"]
        assert cli_main(args) == 0
        record = json.loads((run / "train_config.json").read_text())
        seen[method] = record["derived"]["examples"]
        if method == "goal":
            assert record["derived"]["examples_without_local_pair"] == len(without)
    assert seen["global"] == seen["goal"] == 8

    # the joint test on these pairs leaves the images without a pair out and names them, as data joint does
    from goalclip.evaluation.items import joint_items

    items = joint_items(str(out))
    assert items.without_pair == without and len(items.group_ids) == 8 - len(without)


def test_a_batch_whose_images_have_no_local_pair_trains_the_global_loss_only(tiny_world, tiny_bundle) -> None:
    from goalclip.training.config import LossWeights
    from goalclip.training.data import TrainDataset
    from goalclip.training.step import training_step

    examples = load_examples(tiny_world.mined, need_local=True)[:3]
    examples[0].pairs.clear()
    examples[1].pairs.clear()
    dataset = TrainDataset(examples, tiny_bundle, need_local=True)
    collate = Collate(pad_id=tiny_bundle.tokenizer.pad_token_id)
    mixed = dataset.to_device(collate([dataset[0], dataset[1], dataset[2]]), "cpu")
    assert mixed["pair_owner"].tolist() == [2]
    loss, logs = training_step(tiny_bundle.model, mixed, "goal", LossWeights())
    assert torch.isfinite(loss)
    empty = dataset.to_device(collate([dataset[0], dataset[1]]), "cpu")
    assert empty["sentence_ids"].shape[0] == 0
    loss, logs = training_step(tiny_bundle.model, empty, "goal", LossWeights())
    assert torch.isfinite(loss) and float(logs["loss_local"]) == 0.0 and float(logs["loss_tsl_image"]) == 0.0
    loss.backward()
    assert float(loss.detach()) == float(logs["loss_global"])


def test_mine_help_lists_every_region_kind_and_the_whole_image_rule(capsys) -> None:
    import pytest

    from goalclip.mining.regions import REGION_KINDS

    with pytest.raises(SystemExit):
        cli_main(["mine", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")
    start = text.index("--regions REGIONS region proposer")
    regions = text[start : text.index("--boxes BOXES", start)]
    assert all(kind in regions for kind in REGION_KINDS), regions
    assert "--whole-wins {drop-sentence,drop-image}" in text
