"""Local pair mining: matching on hand-built similarities, mine() end to end, resume, joint test."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import goalclip.mining.mine as mining_module
from goalclip.core.records import read_manifest
from goalclip.mining.config import MineConfig
from goalclip.mining.mine import build_joint_test, match_pairs, mine
from goalclip.models.clip import load_clip
from goalclip.mining.boxes import Region
from goalclip.core.text import split_sentences

# ----------------------------------------------------------------------------- match_pairs

REGIONS = [
    Region((0.0, 0.0, 10.0, 10.0), "grid"),
    Region((10.0, 0.0, 20.0, 10.0), "grid"),
    Region((2.123456, 3.987654, 7.5, 9.25), "external"),
]
SENTENCES = ["s0", "s1", "s2"]
SIMILARITY = torch.tensor(
    [
        [0.1, 0.5, 0.3],  # s0 -> region 1 (0.5)
        [0.7, 0.2, 0.6],  # s1 -> region 0 (0.7): the best pair overall
        [0.2, 0.3, 0.4],  # s2 -> region 2 (0.4)
    ]
)


def test_match_pairs_best_region_per_sentence_and_top_k() -> None:
    match = match_pairs(SIMILARITY, SENTENCES, REGIONS, top_k=5)
    assert not match.discarded
    assert [(c["sentence"], c["box"], c["source"]) for c in match.candidates] == [
        ("s1", [0.0, 0.0, 10.0, 10.0], "grid"),
        ("s0", [10.0, 0.0, 20.0, 10.0], "grid"),
        ("s2", [2.12, 3.99, 7.5, 9.25], "external"),
    ]
    assert [c["score"] for c in match.candidates] == pytest.approx([0.7, 0.5, 0.4])
    assert match.best == match.candidates[0]
    top2 = match_pairs(SIMILARITY, SENTENCES, REGIONS, top_k=2)
    assert [c["sentence"] for c in top2.candidates] == ["s1", "s0"]
    assert top2.best["sentence"] == "s1"


def test_match_pairs_single_sentence_and_region() -> None:
    match = match_pairs(torch.tensor([[0.25]]), ["only"], REGIONS[2:], top_k=5)
    assert match.best == {"sentence": "only", "box": [2.12, 3.99, 7.5, 9.25], "score": 0.25, "source": "external"}


def test_match_pairs_drop_image_discards_when_whole_image_wins() -> None:
    regions = [*REGIONS[:2], Region((0.0, 0.0, 20.0, 10.0), "whole")]
    whole_wins = torch.tensor([[0.1, 0.5, 0.9], [0.7, 0.2, 0.6], [0.2, 0.3, 0.4]])
    match = match_pairs(whole_wins, SENTENCES, regions, top_k=5, whole_wins="drop-image")
    assert match.discarded and match.best is None
    assert match.candidates[0] == {"sentence": "s0", "box": [0.0, 0.0, 20.0, 10.0], "score": 0.9, "source": "whole"}
    # The whole image winning for a sentence that is not the best pair does not discard it.
    whole_second = torch.tensor([[0.1, 0.5, 0.65], [0.7, 0.2, 0.6], [0.2, 0.3, 0.4]])
    kept = match_pairs(whole_second, SENTENCES, regions, top_k=5, whole_wins="drop-image")
    assert not kept.discarded and kept.best["sentence"] == "s1" and kept.best["source"] == "grid"
    assert [c["source"] for c in kept.candidates] == ["grid", "whole", "whole"]  # s1, s0, s2


# ----------------------------------------------------------------------------- mine()

EXTERNAL_IDS = ("img0", "img1", "img2", "img3", "img4", "img5")  # img6, img7: grid regions only


@pytest.fixture(scope="module")
def mine_inputs(tiny_world, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("mine_inputs")
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
    records.append({"id": "gone", "image": str(folder / "missing.png"), "caption": "A lost picture. It is gone."})
    data = folder / "captions.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    boxes = [json.loads(line) for line in tiny_world.boxes.read_text().splitlines()]
    box_path = folder / "boxes.jsonl"
    box_path.write_text("".join(json.dumps(b) + "\n" for b in boxes if b["id"] in EXTERNAL_IDS))
    return {"data": data, "boxes": box_path}


def _config(tiny_world, mine_inputs, out: Path, **overrides) -> MineConfig:
    values = dict(
        model=str(tiny_world.model), data=str(mine_inputs["data"]), out=str(out), regions="external,grid",
        boxes=str(mine_inputs["boxes"]), top_k=3, batch_size=3, crop_batch_size=16, num_workers=0, progress=False,
    )
    values.update(overrides)
    return MineConfig(**values)


def _hand_regions(image_id: str, width: int, height: int,
                  boxes: dict[str, list[float]]) -> list[tuple[list[float], str]]:
    quadrants = [
        [0, 0, width / 2, height / 2], [width / 2, 0, width, height / 2],
        [0, height / 2, width / 2, height], [width / 2, height / 2, width, height],
        [width / 4, height / 4, 3 * width / 4, 3 * height / 4],
    ]
    external = [(boxes[image_id], "external")] if image_id in boxes else []
    return external + [(q, "grid") for q in quadrants]


@pytest.fixture(scope="module")
def mined_once(tiny_world, mine_inputs, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("mined") / "mined.jsonl"
    summary = mine(_config(tiny_world, mine_inputs, out))
    return {"out": out, "summary": summary}


def test_mine_end_to_end(tiny_world, mine_inputs, mined_once) -> None:
    out, summary = mined_once["out"], mined_once["summary"]
    records = read_manifest(out)
    assert [r["id"] for r in records] == list(tiny_world.ids)  # manifest order, the missing one left out
    assert summary["images"] == 9 and summary["pairs"] == 8 and summary["skipped"] == 1
    assert summary["skipped_reasons"] == {"unreadable image": 1}
    assert sum(summary["sources"].values()) == 8
    assert json.loads(out.with_name("mined.summary.json").read_text())["pairs"] == 8
    skipped = [json.loads(line) for line in out.with_name("mined.skipped.jsonl").read_text().splitlines()]
    assert [s["id"] for s in skipped] == ["gone"] and "missing.png" in skipped[0]["reason"]
    assert not list(out.parent.glob("mined.jsonl.part*"))
    # Image paths in the output are relative to its folder and still resolve.
    raw = json.loads(out.read_text().splitlines()[0])
    assert not Path(raw["image"]).is_absolute() and Path(records[0]["image"]).is_file()

    # Recompute every image's best pair with the model's own feature functions.
    bundle = load_clip(str(tiny_world.model))
    model, tokenizer, processor = bundle.model.eval(), bundle.tokenizer, bundle.image_processor
    lines = mine_inputs["boxes"].read_text().splitlines()
    boxes = {json.loads(line)["id"]: json.loads(line)["boxes"][0] for line in lines}
    for record in records:
        image = Image.open(record["image"]).convert("RGB")
        regions = _hand_regions(record["id"], image.width, image.height, boxes)
        sentences = [s.text for s in split_sentences(record["caption"])]
        assert len(sentences) == 3
        with torch.no_grad():
            pixels = processor(images=[image.crop(tuple(round(v) for v in b)) for b, _ in regions], return_tensors="pt")
            crops = model.get_image_features(pixel_values=pixels["pixel_values"]).pooler_output
            tokens = tokenizer(sentences, padding=True, return_tensors="pt")
            texts = model.get_text_features(**tokens).pooler_output
        crops = crops / crops.norm(dim=-1, keepdim=True)
        texts = texts / texts.norm(dim=-1, keepdim=True)
        similarity = texts @ crops.T
        local = record["local"]
        # Plain-background quadrants give identical crops, so exact ties are common: the mined
        # pair must be one of the best-scoring (sentence, region) pairs.
        s = sentences.index(local["sentence"])
        r = [(pytest.approx(box), source) for box, source in regions].index((local["box"], local["source"]))
        assert float(similarity[s, r]) == pytest.approx(float(similarity.max()), abs=1e-5)
        assert local["score"] == pytest.approx(float(similarity.max()), abs=1e-5)
        scores = [c["score"] for c in record["candidates"]]
        assert len(scores) == 3 and scores == sorted(scores, reverse=True)
        assert record["candidates"][0] == local
        per_sentence_best = sorted(similarity.max(dim=1).values.tolist(), reverse=True)
        assert scores == pytest.approx(per_sentence_best, abs=1e-4)
        if record["id"] not in EXTERNAL_IDS:
            assert all(c["source"] == "grid" for c in record["candidates"])


def test_mine_refuses_to_overwrite(tiny_world, mine_inputs, mined_once) -> None:
    with pytest.raises(FileExistsError, match="--resume"):
        mine(_config(tiny_world, mine_inputs, mined_once["out"]))


def test_mine_resume_after_interruption_has_no_duplicates(tiny_world, mine_inputs, mined_once, tmp_path,
                                                          monkeypatch) -> None:
    out = tmp_path / "mined.jsonl"
    first = mine(_config(tiny_world, mine_inputs, out, max_images=3))
    assert first["pairs"] == 3
    first_lines = out.read_text().splitlines()
    # An interrupted later run: its part file holds a record already merged, then a torn line.
    torn = json.dumps(json.loads(mined_once["out"].read_text().splitlines()[5]))
    part = out.with_name("mined.jsonl.part0")
    part.write_text(first_lines[0] + "\n" + torn[: len(torn) // 2])

    mined_ids: list[str] = []
    real_batch = mining_module.match_batch

    def recording_batch(bundle, records, *args, **kwargs):
        mined_ids.extend(r["id"] for r in records)
        return real_batch(bundle, records, *args, **kwargs)

    monkeypatch.setattr(mining_module, "match_batch", recording_batch)
    summary = mine(_config(tiny_world, mine_inputs, out, resume=True))
    ids = [json.loads(line)["id"] for line in out.read_text().splitlines()]
    assert ids == list(tiny_world.ids)  # every id exactly once, in manifest order
    assert sorted(mined_ids) == ["img3", "img4", "img5", "img6", "img7"]  # done ones were not redone
    assert summary["pairs"] == 8 and summary["skipped"] == 1
    assert not part.exists()
    # The resumed output holds the same pairs as one uninterrupted run.
    for resumed, once in zip(read_manifest(out), read_manifest(mined_once["out"]), strict=True):
        assert Path(resumed["image"]).resolve() == Path(once["image"]).resolve()
        assert resumed["local"]["sentence"] == once["local"]["sentence"]
        assert resumed["local"]["score"] == pytest.approx(once["local"]["score"], abs=1e-5)


# ----------------------------------------------------------------------------- joint test


def test_build_joint_test_counts(tiny_world, mined_once, tmp_path) -> None:
    mined_lines = mined_once["out"].read_text().splitlines()
    partial = tmp_path / "mined_subset.jsonl"
    rows = [json.loads(line) for line in mined_lines[:5]]
    for row in rows:
        row["image"] = str(mined_once["out"].parent / row["image"])
    no_local = {k: v for k, v in rows[4].items() if k not in ("local", "candidates")}
    partial.write_text("".join(json.dumps(r) + "\n" for r in [*rows[:4], no_local]))
    out = tmp_path / "joint" / "joint.jsonl"
    result = build_joint_test(str(tiny_world.captions), str(partial), str(out))
    assert result == {"out": str(out), "images": 8, "joint_items": 4, "without_pair": 4}
    joint = read_manifest(out)
    assert [r["id"] for r in joint] == ["img0", "img1", "img2", "img3"]
    for record, source in zip(joint, rows):
        assert record["local"] == source["local"]
        assert record["caption"] == source["caption"]
        assert Path(record["image"]).resolve() == (tiny_world.root / "images" / f"{record['id']}.png").resolve()
