"""What ``goalclip serve`` computes, without a browser: a manifest's gallery (``--data``) ranks as
``goalclip search`` does over the same images, in an index of its own."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from goalclip.app.backend import Searcher
from goalclip.cli import main

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
