"""Split and protocol tools: seeded test sampling with train exclusion, published id lists, DCI's
long-caption filter, DOCCI's test + qual_test split and the papers' K presets."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from goalclip.cli import main
from goalclip.core.manifest import ManifestError, write_jsonl
from goalclip.core.records import read_manifest
from goalclip.datasets.splits import filter_min_words, read_id_list, split_records


def _records(n: int = 20) -> list[dict]:
    # caption i has i + 1 words, so a word threshold keeps a known tail
    return [{"id": f"sa_{i}", "image": f"photos/sa_{i}.jpg", "caption": " ".join(["word"] * (i + 1))} for i in range(n)]


def _manifest(tmp_path: Path, n: int = 20) -> Path:
    path = tmp_path / "all.jsonl"
    write_jsonl(path, _records(n))
    return path


def test_sampling_is_seeded_disjoint_and_excludes_train_ids() -> None:
    records = _records()
    exclude = {f"sa_{i}" for i in range(0, 20, 2)}  # the even ids were trained on
    test, rest = split_records(records, test_size=5, seed=3, exclude=exclude)
    # independent: the same draw by hand
    eligible = [r["id"] for r in records if r["id"] not in exclude]
    want = set(random.Random(3).sample(eligible, 5))
    assert {r["id"] for r in test} == want
    assert [r["id"] for r in test] == [r["id"] for r in records if r["id"] in want]  # manifest order
    assert not exclude & {r["id"] for r in test}
    assert {r["id"] for r in test} | {r["id"] for r in rest} == {r["id"] for r in records}
    assert not {r["id"] for r in test} & {r["id"] for r in rest}
    assert split_records(records, test_size=5, seed=3, exclude=exclude)[0] == test  # reproducible
    assert split_records(records, test_size=5, seed=4, exclude=exclude)[0] != test
    with pytest.raises(ValueError, match="test size 11 exceeds the 10 records left after excluding 10"):
        split_records(records, test_size=11, seed=0, exclude=exclude)


def test_ids_from_reuses_a_published_list_in_its_formats(tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("# published DCI test\nsa_3\n\nsa_1\n")
    assert read_id_list(tmp_path / "ids.txt") == ["sa_3", "sa_1"]
    write_jsonl(tmp_path / "ids.jsonl", [{"id": "sa_3", "image": "x", "caption": "c"}])
    assert read_id_list(tmp_path / "ids.jsonl") == ["sa_3"]
    # the GOAL repo's test JSON: file names (crop entries of a joint file are not images of the test)
    goal = [{"filename": "../DCI/photos/sa_5.jpg", "caption": "c"},
            {"filename": "../p/sa_5.jpg_results/sa_5_max_1.png", "caption": "s", "similarity_score": 20.0}]
    (tmp_path / "DCI_test.json").write_text(json.dumps(goal))
    assert read_id_list(tmp_path / "DCI_test.json") == ["sa_5"]
    (tmp_path / "list.json").write_text(json.dumps(["sa_2", "sa_4"]))
    assert read_id_list(tmp_path / "list.json") == ["sa_2", "sa_4"]
    test, rest = split_records(_records(), ids=["sa_3", "sa_1", "sa_99"])
    assert [r["id"] for r in test] == ["sa_1", "sa_3"] and len(rest) == 18
    with pytest.raises(ValueError, match="also in the excluded .*sa_1"):
        split_records(_records(), ids=["sa_1"], exclude={"sa_1"})
    with pytest.raises(ManifestError, match=r"list\.json: .*\[0\]"):
        (tmp_path / "list.json").write_text(json.dumps([3]))
        read_id_list(tmp_path / "list.json")


def test_min_words_filter_keeps_long_captions() -> None:
    kept, dropped = filter_min_words(_records(), 15)
    assert [r["id"] for r in kept] == [f"sa_{i}" for i in range(14, 20)]
    assert len(dropped) == 14 and dropped[0] == "sa_0"


def test_data_split_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _manifest(tmp_path)
    write_jsonl(tmp_path / "train.jsonl", [{"id": "sa_19", "image": "photos/sa_19.jpg", "caption": "c"}])
    argv = ["data", "split", "--data", str(data), "--test-size", "4", "--seed", "1", "--min-words", "5",
            "--exclude", str(tmp_path / "train.jsonl"), "--out-test", str(tmp_path / "t.jsonl"),
            "--out-rest", str(tmp_path / "r.jsonl")]
    assert main(argv) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("split 20 records: 4 min-words filtered out, 4 test -> ")
    test = read_manifest(tmp_path / "t.jsonl")
    rest = read_manifest(tmp_path / "r.jsonl")
    assert len(test) == 4 and len(rest) == 12
    assert "sa_19" not in {r["id"] for r in test} and all(len(r["caption"].split()) >= 5 for r in test + rest)
    assert test[0]["image"] == str(tmp_path / "photos" / f"{test[0]['id']}.jpg")  # paths stay right
    summary = json.loads((tmp_path / "t.split.json").read_text())
    assert summary["seed"] == 1 and summary["test"] == 4 and summary["filtered"] == 4
    assert main(argv[:4] + ["--out-test", str(tmp_path / "t2.jsonl")]) == 1  # neither --test-size nor --ids-from
    assert "--test-size or --ids-from" in capsys.readouterr().err


def test_docci_test_plus_qual_test(tmp_path: Path) -> None:
    from PIL import Image

    from goalclip.datasets.long_captions import convert_docci

    lines = []
    for split, n in (("train", 2), ("test", 3), ("qual_test", 2), ("qual_dev", 1)):
        for i in range(n):
            rid = f"{split}_{i:05d}"
            lines.append({"example_id": rid, "split": split, "image_file": f"{rid}.jpg", "description": f"D {rid}."})
            (tmp_path / "images").mkdir(exist_ok=True)
            Image.new("RGB", (4, 4)).save(tmp_path / "images" / f"{rid}.jpg")
    (tmp_path / "docci_descriptions.jsonlines").write_text("".join(json.dumps(x) + "\n" for x in lines))
    records = convert_docci(tmp_path, "test+qual_test")
    assert [r["id"] for r in records] == [f"test_{i:05d}" for i in range(3)] + [f"qual_test_{i:05d}" for i in range(2)]
    with pytest.raises(ValueError, match=r"unknown split 'test\+nope'"):
        convert_docci(tmp_path, "test+nope")


def test_ks_presets(tmp_path: Path, tiny_world) -> None:
    out = tmp_path / "m.json"
    base = ["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--no-progress",
            "--device", "cpu", "--out", str(out)]
    assert main([*base, "--ks-preset", "fastgoal-coco"]) == 0
    assert json.loads(out.read_text())["ks"] == [1, 5, 10, 15]
    assert main([*base, "--ks-preset", "goal"]) == 0
    assert json.loads(out.read_text())["ks"] == [1, 5, 25, 50]
    with pytest.raises(SystemExit):
        main([*base, "--ks-preset", "goal", "--ks", "1"])


def test_data_split_refuses_to_overwrite_an_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = _manifest(tmp_path)
    train = tmp_path / "train.jsonl"
    write_jsonl(train, [{"id": "sa_1", "image": "photos/sa_1.jpg", "caption": "c"}])
    before = train.read_bytes()
    assert main(["data", "split", "--data", str(data), "--test-size", "2", "--exclude", str(train),
                 "--out-test", str(tmp_path / "t.jsonl"), "--out-rest", str(train)]) == 1
    assert "--out-rest" in capsys.readouterr().err and train.read_bytes() == before
