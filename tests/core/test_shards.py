"""WebDataset shards: ``goalclip data shard`` and every command reading shards as it reads JSONL."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from tests.conftest import TINY_TRAIN
from PIL import Image
from safetensors.torch import load_file

from goalclip.caption.engines import Generation
from goalclip.caption.generate import CaptionConfig, caption
from goalclip.cli import build_parser, main
from goalclip.core.manifest import ManifestError, SkipReport
from goalclip.core.records import read_manifest
from goalclip.core.shards import (
    expand_urls,
    is_shards,
    read_member,
    split_by_rank,
    split_records,
)
from goalclip.datasets.shards import write_shards
from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.retrieval import evaluate
from goalclip.mining.config import MineConfig
from goalclip.mining.mine import mine
from goalclip.training.config import TrainConfig
from goalclip.training.trainer import train


def _absolute(tiny_world, source: Path, folder: Path, name: str) -> Path:
    """A copy of a tiny-world manifest with absolute image paths (so outputs beside it compare)."""
    rows = [json.loads(line) for line in source.read_text().splitlines()]
    for row in rows:
        row["image"] = str(tiny_world.root / row["image"])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / name


@pytest.fixture(scope="module")
def sharded(tiny_world, tmp_path_factory) -> dict:
    """The mined and captions manifests of the tiny world as 3-record shards."""
    root = tmp_path_factory.mktemp("sharded")
    mined = write_shards(tiny_world.mined, root / "mined" / "train", max_count=3, progress=False)
    captions = write_shards(tiny_world.captions, root / "captions" / "cap", max_count=3, progress=False)
    return {"root": root, "mined": mined, "captions": captions}


def _without_image(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "image"} for r in records]


# ----------------------------------------------------------------------------- writing


def test_round_trip_keeps_records_order_and_image_bytes(tiny_world, sharded) -> None:
    summary = sharded["mined"]
    assert summary["shards"] == 3 and summary["records_per_shard"] == [3, 3, 2] and summary["skipped"] == 0
    assert summary["data"].endswith("train-{000000..000002}.tar") and is_shards(summary["data"])
    original = read_manifest(tiny_world.mined)
    from_shards = read_manifest(summary["data"])
    assert _without_image(from_shards) == _without_image(original)
    for ours, theirs in zip(from_shards, original):
        assert read_member(ours["image"]) == Path(theirs["image"]).read_bytes()
    # plain WebDataset reads them: one sample per record, keyed by its position, in order
    import webdataset as wds

    samples = list(wds.WebDataset(summary["data"], shardshuffle=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(8)]
    assert [json.loads(s["json"])["id"] for s in samples] == [r["id"] for r in original]
    assert all(s["png"] == Path(r["image"]).read_bytes() for s, r in zip(samples, original))


def test_a_joint_tests_crop_files_travel_in_the_shard(tiny_world, tmp_path) -> None:
    from goalclip.evaluation.items import read_eval_records

    folder = tmp_path / "joint"
    folder.mkdir()
    Image.new("RGB", (8, 6), (1, 2, 3)).save(folder / "crop0.png")
    record = {"id": "a", "image": str(tiny_world.root / "images" / "img0.png"), "caption": "A red square.",
              "local": {"sentence": "A red square.", "image": "crop0.png"}}
    (folder / "joint.jsonl").write_text(json.dumps(record) + "\n")
    summary = write_shards(folder / "joint.jsonl", tmp_path / "s" / "j", progress=False)
    with tarfile.open(expand_urls(summary["data"])[0]) as tar:
        assert tar.getnames() == ["000000000.json", "000000000.png", "000000000.local.png"]
    [(where, read)] = read_eval_records(summary["data"])
    assert where.endswith("j-000000.tar:000000000.json")
    assert read_member(read["local"]["image"]) == (folder / "crop0.png").read_bytes()


def test_shards_are_reproducible_and_max_size_bounds_each_file(tiny_world, sharded, tmp_path) -> None:
    again = write_shards(tiny_world.mined, tmp_path / "again" / "train", max_count=3, progress=False)
    for ours, theirs in zip(expand_urls(again["data"]), expand_urls(sharded["mined"]["data"])):
        assert Path(ours).read_bytes() == Path(theirs).read_bytes()
    limit = 10 * 1024  # tar files grow in 10 KiB records
    sized = write_shards(tiny_world.mined, tmp_path / "sized" / "s", max_size=limit, progress=False)
    files = [Path(p) for p in expand_urls(sized["data"])]
    assert sized["shards"] > 1 and sum(sized["records_per_shard"]) == 8
    assert all(f.stat().st_size <= limit for f in files)
    assert sized["bytes"] == sum(f.stat().st_size for f in files)


def test_existing_shards_are_refused_without_overwrite(tiny_world, tmp_path, capsys) -> None:
    out = tmp_path / "s" / "train"
    args = ["data", "shard", "--data", str(tiny_world.mined), "--out", str(out), "--no-progress"]
    assert main([*args, "--max-per-shard", "3"]) == 0
    assert "sharded 8 records (0 skipped) into 3 shards" in capsys.readouterr().out
    assert main([*args, "--max-per-shard", "5"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--overwrite" in err and "3 shards exist" in err
    assert main([*args, "--max-per-shard", "5", "--overwrite"]) == 0
    assert sorted(p.name for p in out.parent.iterdir()) == ["train-000000.tar", "train-000001.tar"]
    with pytest.raises(SystemExit) as usage:
        main([*args, "--max-size", "lots"])
    assert usage.value.code == 2 and "--max-size: expected a positive size" in capsys.readouterr().err


def test_help_of_data_shard_and_every_data_option_mentions_shards() -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    data_sub = next(a for a in sub["data"]._actions if a.dest == "data_command").choices
    assert "WebDataset" in data_sub["shard"].format_help()
    for command in (sub["train"], sub["mine"], sub["caption"], sub["eval"]):
        helps = [a.help for a in command._actions if "--data" in a.option_strings]
        assert helps and "shard" in helps[0], command.prog


# ----------------------------------------------------------------------------- every command reads shards


def test_training_from_shards_equals_training_from_the_manifest(tiny_world, sharded, tmp_path) -> None:
    runs = {}
    for name, data in (("jsonl", str(tiny_world.mined)), ("shards", sharded["mined"]["data"])):
        out = tmp_path / name
        train(TrainConfig(model=str(tiny_world.model), data=data, out=str(out), max_steps=3, **TINY_TRAIN))
        losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        runs[name] = (losses, load_file(str(out / "model.safetensors")))
    assert len(runs["jsonl"][0]) == 3 and runs["shards"][0] == runs["jsonl"][0]
    weights, reference = runs["shards"][1], runs["jsonl"][1]
    assert weights.keys() == reference.keys()
    assert all((weights[k] == reference[k]).all() for k in reference)


def test_mining_from_shards_equals_mining_from_the_manifest(tiny_world, sharded, tmp_path) -> None:
    captions = _absolute(tiny_world, tiny_world.captions, tmp_path / "in", "captions.jsonl")
    outputs = {}
    for name, data in (("jsonl", str(captions)), ("shards", sharded["captions"]["data"])):
        out = tmp_path / name / "mined.jsonl"
        summary = mine(MineConfig(model=str(tiny_world.model), data=data, out=str(out), regions="grid", top_k=3,
                                  batch_size=3, crop_batch_size=16, num_workers=0, progress=False))
        assert summary["pairs"] == 8
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert _without_image(outputs["shards"]) == _without_image(outputs["jsonl"])
    # the mined manifest names shard members, and training reads it like any manifest
    assert read_member(read_manifest(tmp_path / "shards" / "mined.jsonl")[0]["image"]) == \
        (tiny_world.root / "images" / "img0.png").read_bytes()


class _PixelEngine:
    """A captioner whose caption depends on the decoded pixels, so equal outputs mean equal images."""

    def generate(self, images, prompt):
        return [Generation(f"A {image.width}x{image.height} picture. Its corner is {image.getpixel((0, 0))}.",
                           False) for image in images]


def test_captioning_from_shards_equals_captioning_from_the_manifest(tiny_world, sharded, tmp_path) -> None:
    captions = _absolute(tiny_world, tiny_world.captions, tmp_path / "in", "captions.jsonl")
    outputs = {}
    for name, data in (("jsonl", str(captions)), ("shards", sharded["captions"]["data"])):
        out = tmp_path / name / "captions.jsonl"
        summary = caption(CaptionConfig(data=data, out=str(out), num_workers=0, batch_size=3, progress=False),
                          engine=_PixelEngine())
        assert summary["captioned"] == 8
        outputs[name] = [json.loads(line) for line in out.read_text().splitlines()]
    assert _without_image(outputs["shards"]) == _without_image(outputs["jsonl"])


def test_eval_from_shards_equals_eval_from_the_manifest(tiny_world, sharded, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GOALCLIP_SHARD_CACHE", str(tmp_path / "cache"))
    urls = expand_urls(sharded["mined"]["data"])
    piped = "pipe:cat " + sharded["mined"]["data"]  # a remote-style URL: fetched by webdataset's gopen
    results = {}
    for name, data in (("jsonl", str(tiny_world.mined)), ("shards", sharded["mined"]["data"]), ("pipe", piped)):
        config = EvalConfig(models=[str(tiny_world.model)], data=data, joint=data, batch_size=4, progress=False)
        results[name] = evaluate(config, write_out=False)["models"][0]["metrics"]
    assert len(results["jsonl"]) > 4 and results["shards"] == results["jsonl"] and results["pipe"] == results["jsonl"]
    assert len(list((tmp_path / "cache").glob("*.tar"))) == len(urls)


# ----------------------------------------------------------------------------- processes and bad members


def test_each_process_gets_whole_disjoint_shards(sharded) -> None:
    records = read_manifest(sharded["mined"]["data"])
    shard_of = {r["id"]: r["image"].split("#")[0] for r in records}
    parts = [split_records(records, rank, 2) for rank in range(2)]
    assert [len(p) for p in parts] == [5, 3]  # shards 0 and 2 (3 + 2 records), shard 1 (3 records)
    assert {shard_of[r["id"]] for r in parts[0]}.isdisjoint({shard_of[r["id"]] for r in parts[1]})
    assert sorted(r["id"] for p in parts for r in p) == sorted(shard_of)
    # a JSONL manifest keeps its record-level split
    plain = [{"id": str(i), "image": f"/x/{i}.png"} for i in range(5)]
    assert split_records(plain, 1, 2) == plain[1::2]
    assert split_by_rank(["a", "b", "c"], 0, 2) == ["a", "c"]
    with pytest.raises(ValueError, match="rank 2"):
        split_by_rank(["a"], 2, 2)


def _truncated_png_manifest(tiny_world, folder: Path) -> Path:
    """The mined manifest with img3 replaced by a PNG cut in its pixel data (its header still reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = (tiny_world.root / "images" / "img3.png").read_bytes()
    bad = folder / "bad.png"
    bad.write_bytes(data[: len(data) // 2])
    with Image.open(bad) as image:
        assert image.size == (48, 64)
    manifest = _absolute(tiny_world, tiny_world.mined, folder, "mined.jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[3]["image"] = str(bad)
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_a_member_failing_to_decode_is_skipped_and_counted(tiny_world, tmp_path) -> None:
    manifest = _truncated_png_manifest(tiny_world, tmp_path / "data")
    shards = write_shards(manifest, tmp_path / "shards" / "t", max_count=4, progress=False)
    assert shards["written"] == 8  # the header reads: packed, and found out when decoded, as in JSONL
    out = tmp_path / "out"
    result = train(TrainConfig(model=str(tiny_world.model), data=shards["data"], out=str(out), max_steps=2,
                               skip_invalid=True, **{**TINY_TRAIN, "batch_size": 4, "num_workers": 2}))
    assert result["steps"] == 2 and result["skipped"] == 1
    assert any("t-000000.tar#000000003.png" in reason for reason in result["skipped_reasons"])
    # (decoded in DataLoader workers, each reading the member from the shard); mining skips and counts it too
    mined = mine(MineConfig(model=str(tiny_world.model), data=shards["data"], out=str(tmp_path / "m.jsonl"),
                            regions="grid", batch_size=4, num_workers=0, progress=False))
    assert mined["pairs"] == 7 and mined["skipped_reasons"] == {"unreadable image": 1}


def test_a_shard_cut_short_keeps_its_whole_members_and_skips_the_cut_image(tiny_world, tmp_path) -> None:
    from goalclip.core.images import ImageError, load_rgb
    from goalclip.core.shards import _scan

    summary = write_shards(tiny_world.captions, tmp_path / "s" / "c", max_count=3, progress=False)
    shard = Path(expand_urls(summary["data"])[0])
    offset, size = _scan(str(shard))["000000002.png"]
    shard.write_bytes(shard.read_bytes()[: offset + size // 2])  # an interrupted copy
    records = read_manifest(summary["data"])
    assert [r["id"] for r in records] == list(tiny_world.ids)
    load_rgb(records[1]["image"])
    with pytest.raises(ImageError, match="c-000000.tar#000000002.png: cannot decode image .*ends inside"):
        load_rgb(records[2]["image"])


def test_missing_image_is_skipped_when_sharding_and_a_bad_json_member_is_named(tiny_world, tmp_path) -> None:
    manifest = _absolute(tiny_world, tiny_world.captions, tmp_path / "data", "captions.jsonl")
    rows = [json.loads(line) for line in manifest.read_text().splitlines()]
    rows[1]["image"] = str(tmp_path / "gone.png")
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = write_shards(manifest, tmp_path / "s" / "c", progress=False)
    assert summary["written"] == 7 and summary["skipped_reasons"] == {"unreadable image": 1}
    assert summary["skipped_examples"]["unreadable image"] == ["img1"]
    shard = tmp_path / "bad.tar"
    with tarfile.open(shard, "w") as tar:
        info = tarfile.TarInfo("000000000.json")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"{nope"))
    with pytest.raises(ManifestError, match=r"bad\.tar:000000000\.json: malformed JSON"):
        read_manifest(str(shard))
    skipped = SkipReport()
    with pytest.raises(ManifestError, match="no usable training examples"):
        from goalclip.training.data import load_examples

        load_examples(str(shard), need_local=False, skip_invalid=True, skipped=skipped)
    assert len(skipped) == 1


@pytest.mark.multiprocess
def test_two_process_mining_from_shards_gives_each_process_whole_shards(tiny_world, sharded, tmp_path,
                                                                        launch_ranks) -> None:
    single = tmp_path / "one.jsonl"
    args = ["mine", "--model", str(tiny_world.model), "--regions", "grid", "--top-k", "3", "--batch-size", "3",
            "--num-workers", "0", "--no-progress", "--device", "cpu", "--data", sharded["captions"]["data"]]
    assert main([*args, "--out", str(single)]) == 0
    out = tmp_path / "two.jsonl"
    # the CLI's own entry point, then a look at the process group it leaves behind
    rank_script = tmp_path / "cli_rank.py"
    rank_script.write_text("import sys\nimport torch.distributed as dist\nfrom goalclip.cli import main\n"
                           "code = main(sys.argv[1:])\n"
                           "sys.stderr.write(f'process group after main: {dist.is_initialized()}\\n')\n"
                           "sys.exit(code)\n")
    done = launch_ranks([rank_script, *args, "--out", out])
    assert done.returncode == 0, done.stderr[-3000:]
    # each rank tore its group down itself: a rank exiting with a live gloo group can abort at interpreter
    # shutdown after finishing its work ("terminate called without an active exception"; seen in CI)
    assert done.stderr.count("process group after main: False") == 2, done.stderr[-3000:]
    # shards of 3, 3 and 2 records: process 1 mines shards 0 and 2, process 2 shard 1 (a record split gives 4 + 4)
    assert "mining 5 images (0 of 8 already done; process 1 of 2)" in done.stderr
    assert "mining 3 images (0 of 8 already done; process 2 of 2)" in done.stderr
    assert out.read_text() == single.read_text()
