"""What ``goalclip serve`` computes, without a browser: a manifest's gallery (``--data``) ranks as
``goalclip search`` does over the same images, in an index of its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from goalclip.app.backend import AppError, Searcher, distinct_names, read_run
from goalclip.cli import main
from goalclip.models.clip import load_clip, prepare_text_positions
from goalclip.models.embed import embed_text_strings

QUERY = "The picture has a plain white background. A blue circle is drawn here."


def test_a_manifest_gallery_ranks_as_goalclip_search_and_keeps_its_own_index(tiny_world, tmp_path):
    images = shutil.copytree(tiny_world.root / "images", tmp_path / "images")
    manifest = tmp_path / "captions.jsonl"
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records))  # images/imgN.png beside it
    out = tmp_path / "search.json"
    assert main(["search", "--model", str(tiny_world.model), "--images", str(images), "--query", QUERY,
                 "--k", "8", "--no-progress", "--out", str(out)]) == 0
    folder_index = sorted((images / ".goalclip-index").iterdir())
    stamps = [p.stat().st_mtime_ns for p in folder_index]

    searcher = Searcher(str(tiny_world.model), None, data=str(manifest))
    searcher.start().join()
    assert searcher.status()["state"] == "ready", searcher.error
    expected = [Path(h["path"]).name for h in json.loads(out.read_text())["results"][0]["hits"]]
    assert [hit["id"] for hit in searcher.search(QUERY, 8)] == expected
    assert [p.stat().st_mtime_ns for p in folder_index] == stamps  # the folder's own index is left alone
    assert len(list((images / ".goalclip-index").iterdir())) == len(folder_index) + 2


def test_a_missing_manifest_is_the_searchers_message(tiny_world, tmp_path):
    searcher = Searcher(str(tiny_world.model), None, data=str(tmp_path / "nope.jsonl"))
    searcher.start().join()
    assert searcher.status() == {"model": str(tiny_world.model), "state": "error", "images": None,
                                 "error": f"{tiny_world.model}: --data {tmp_path / 'nope.jsonl'}: no such file"}


def test_folders_are_named_by_the_shortest_tail_that_tells_them_apart():
    assert distinct_names(["/d/models/pretrained", "/d/models/goal/seed0"]) == ["pretrained", "goal/seed0"]
    assert distinct_names(["/d/models/global/seed0", "/d/models/goal/seed0", "/d/models/goal/seed1"]) == [
        "global/seed0", "goal/seed0", "goal/seed1"]
    assert distinct_names(["/a/x/run", "/b/x/run/"]) == ["a/x/run", "b/x/run"]
    assert distinct_names(["runs/a", "runs/a"]) == ["runs/a", "runs/a"]
    assert distinct_names(["openai/clip-vit-base-patch16", "runs/goal"]) == ["clip-vit-base-patch16", "goal"]
    assert distinct_names([]) == []


def test_runs_in_seed_folders_are_told_apart_in_the_table(tmp_path):
    folders = []
    for method in ("global", "goal"):
        run = tmp_path / "models" / method / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "lr": 0.1}) + "\n")
        folders.append(str(run))
    runs = [read_run(folder, name) for folder, name in zip(folders, distinct_names(folders))]
    assert [run["run"] for run in runs] == [run["table"]["run"] for run in runs] == ["global/seed0", "goal/seed0"]


def test_a_context_stretches_a_shorter_model_as_eval_does_so_a_long_query_is_read_whole(tiny_world, tmp_path):
    images = shutil.copytree(tiny_world.root / "images", tmp_path / "images")
    plain = Searcher(str(tiny_world.model), str(images))
    stretched = Searcher(str(tiny_world.model), str(images), context=40, keep_positions=4)
    for searcher in (plain, stretched):
        searcher.start().join()
        assert searcher.status()["state"] == "ready", searcher.error
    assert (plain.bundle.max_text_len, stretched.bundle.max_text_len) == (16, 40)
    bundle = load_clip(str(tiny_world.model))
    prepare_text_positions(bundle, 40, 4)  # what goalclip eval --context 40 --keep-positions 4 does
    long_query = QUERY + " Nothing else is in it. The picture has a plain white background."  # over 16 tokens
    expected = embed_text_strings(bundle, [long_query])
    assert torch.allclose(embed_text_strings(stretched.bundle, [long_query]), expected, atol=1e-6)
    assert not torch.allclose(embed_text_strings(plain.bundle, [long_query]), expected, atol=1e-3)


def test_a_run_lists_the_rows_of_eval_files_elsewhere_that_evaluate_it(tmp_path):
    """``serve --evals FILE``: a goalclip eval --out JSON kept outside the run folders (the demo's metrics.json)
    shows each row beside the run whose folder is its model (written with or without a trailing slash); rows of
    other models stay out, and a file that is no eval output is an error naming it."""
    runs = []
    for method in ("global", "goal"):
        run = tmp_path / "models" / method / "seed0"
        run.mkdir(parents=True)
        (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "lr": 0.1}) + "\n")
        runs.append(run)
    evals = tmp_path / "metrics.json"
    evals.write_text(json.dumps({"models": [
        {"model": str(tmp_path / "models" / "pretrained"), "metrics": {"t2i@1": 5.0}},
        {"model": str(runs[0]) + "/", "metrics": {"t2i@1": 6.0}},
        {"model": str(runs[1]), "metrics": {"t2i@1": 11.0}},
    ]}))
    rows = [read_run(str(run), evals=[str(evals)])["evals"] for run in runs]
    assert rows == [[{"file": "metrics.json", "model": str(runs[0]) + "/", "t2i@1": 6.0}],
                    [{"file": "metrics.json", "model": str(runs[1]), "t2i@1": 11.0}]]
    other = tmp_path / "notes.json"
    other.write_text(json.dumps({"notes": []}))
    with pytest.raises(AppError, match="notes.json.*goalclip eval --out"):
        read_run(str(runs[0]), evals=[str(other)])
