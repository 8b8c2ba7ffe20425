"""Folder search with a cached incremental index (goalclip.viz.search)."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPTextModelWithProjection

from goalclip.core.images import load_rgb, pixel_values
from goalclip.cli import main
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models import embed as embed_module
from goalclip.models.clip import ClipBundle, ModelLoadError, load_clip, save_clip
from goalclip.models.embed import embed_pixels, embed_token_ids, tokenize
from goalclip.viz.search import SearchError, build_index, model_key, search
from tests.viz.conftest import TEXTS

QUERIES = ["a red square in the top left", "a green square near the bottom of a grey image", "a dark picture"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = build_tiny_clip(TEXTS, image_size=32, patch_size=8, width=32, layers=2, heads=2)
    return save_clip(bundle, tmp_path_factory.mktemp("search_model") / "tiny")


@pytest.fixture(scope="module")
def bundle(model_dir: Path) -> ClipBundle:
    return load_clip(str(model_dir))


def _noise(path: Path, seed: int, size: tuple[int, int] = (32, 32)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    root = tmp_path / "photos"
    for i in range(4):
        _noise(root / f"img{i}.png", i)
    _noise(root / "nested" / "deep.jpg", 10, size=(48, 32))
    (root / "notes.txt").write_text("not an image", encoding="utf-8")
    return root


@pytest.fixture
def counter(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Rows that go through the image tower during indexing."""
    seen: list[int] = []
    original = embed_module.embed_pixels

    def counting(model, pixels):
        seen.append(int(pixels.shape[0]))
        return original(model, pixels)

    monkeypatch.setattr(embed_module, "embed_pixels", counting)
    return seen


@torch.no_grad()
def _brute_force(bundle: ClipBundle, paths: list[str], queries: list[str], k: int) -> list[list[tuple[str, float]]]:
    images = torch.cat([embed_pixels(bundle.model, pixel_values(bundle.image_processor, [load_rgb(p)])) for p in paths])
    tokens = tokenize(bundle, queries)
    sims = embed_token_ids(bundle.model, tokens["input_ids"], tokens["attention_mask"]) @ images.T
    order = sims.argsort(dim=1, descending=True)[:, :k]
    return [[(paths[int(i)], float(sims[q, i])) for i in row] for q, row in enumerate(order)]


def _same(got: list[list[tuple[str, float]]], expected: list[list[tuple[str, float]]]) -> None:
    assert [[p for p, _ in row] for row in got] == [[p for p, _ in row] for row in expected]
    assert np.allclose([[s for _, s in row] for row in got], [[s for _, s in row] for row in expected], atol=1e-5)


def test_search_equals_brute_force_ranking(bundle, folder):
    index = build_index(bundle, folder, "tiny")
    expected_paths = sorted(str(p.resolve()) for p in folder.rglob("*") if p.suffix in {".png", ".jpg"})
    assert sorted(index.paths) == expected_paths and index.embedded == 5
    got = search(index, bundle, QUERIES, k=3, backend="torch")
    _same(got, _brute_force(bundle, index.paths, QUERIES, 3))
    assert len(search(index, bundle, QUERIES[:1], k=50)[0]) == 5  # k larger than the folder
    assert search(index, bundle, [], k=3) == []


def test_faiss_backend_gives_the_same_results(bundle, folder):
    """faiss is a test dependency (and the optional `search` extra), so this always runs in CI."""
    index = build_index(bundle, folder, "tiny")
    _same(search(index, bundle, QUERIES, k=4, backend="faiss"), search(index, bundle, QUERIES, k=4, backend="torch"))


def test_index_is_incremental(bundle, folder, counter):
    first = build_index(bundle, folder, "tiny")
    assert (first.embedded, first.reused, sum(counter)) == (5, 0, 5)
    assert sorted(p.name for p in (folder / ".goalclip-index").iterdir()) == ["tiny.json", "tiny.safetensors"]

    counter.clear()
    again = build_index(bundle, folder, "tiny")
    assert (again.embedded, again.reused, again.removed, sum(counter)) == (0, 5, 0, 0)
    assert again.paths == first.paths and torch.equal(again.embeddings, first.embeddings)

    new = _noise(folder / "img_new.png", 99)
    counter.clear()
    added = build_index(bundle, folder, "tiny")
    assert (added.embedded, added.reused, sum(counter)) == (1, 5, 1)
    assert str(new.resolve()) in added.paths

    changed = folder / "img1.png"
    _noise(changed, 123)
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    (folder / "img2.png").unlink()
    counter.clear()
    updated = build_index(bundle, folder, "tiny")
    assert (updated.embedded, updated.reused, updated.removed, sum(counter)) == (1, 4, 1, 1)
    assert str((folder / "img2.png").resolve()) not in updated.paths
    _same(search(updated, bundle, QUERIES, k=5), _brute_force(bundle, updated.paths, QUERIES, 5))

    counter.clear()
    rebuilt = build_index(bundle, folder, "tiny", rebuild=True)
    assert sum(counter) == 5 and rebuilt.paths == updated.paths
    assert torch.allclose(rebuilt.embeddings, updated.embeddings, atol=1e-6)

    counter.clear()
    other = build_index(bundle, folder, "another-model")
    assert other.embedded == 5 and sum(counter) == 5  # each model key has its own index


def test_inconsistent_index_is_rebuilt(bundle, folder, counter, caplog):
    build_index(bundle, folder, "tiny")
    listing = folder / ".goalclip-index" / "tiny.json"
    data = json.loads(listing.read_text())
    data["token"] = "stale"
    listing.write_text(json.dumps(data))
    counter.clear()
    with caplog.at_level(logging.WARNING, logger="goalclip.viz.search"):
        index = build_index(bundle, folder, "tiny")
    assert index.embedded == 5 and sum(counter) == 5
    assert "does not match" in caplog.text


def test_corrupt_image_is_skipped_with_a_message(bundle, folder, caplog):
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with caplog.at_level(logging.WARNING):
        index = build_index(bundle, folder, "tiny")
    assert len(index) == 5 and not any(p.endswith("broken.png") for p in index.paths)
    assert [Path(p).name for p, _ in index.failed] == ["broken.png"]
    assert "broken.png" in caplog.text and "cannot decode" in caplog.text


def test_empty_or_unreadable_folder_is_an_error(bundle, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here", encoding="utf-8")
    with pytest.raises(SearchError, match="no image files"):
        build_index(bundle, empty, "tiny")
    (empty / "bad.jpg").write_bytes(b"garbage")
    with pytest.raises(SearchError, match="none of the 1 image files could be read"):
        build_index(bundle, empty, "tiny")
    with pytest.raises(SearchError, match="not a folder"):
        build_index(bundle, tmp_path / "missing", "tiny")


def test_text_only_model_is_a_clear_error(bundle, tmp_path):
    text_only = tmp_path / "text_only"
    CLIPTextModelWithProjection(bundle.model.config.text_config).save_pretrained(text_only)
    bundle.tokenizer.save_pretrained(text_only)
    with pytest.raises(ModelLoadError, match="no vision tower"):
        load_clip(str(text_only))
    no_processor = tmp_path / "no_processor"
    save_clip(bundle, no_processor)
    (no_processor / "preprocessor_config.json").unlink()
    with pytest.raises(ModelLoadError, match="no image processor"):
        load_clip(str(no_processor))


def test_long_query_is_truncated_with_a_warning(bundle, folder, caplog):
    index = build_index(bundle, folder, "tiny")
    long_query = " ".join(TEXTS)
    with caplog.at_level(logging.WARNING, logger="goalclip.viz.search"):
        results = search(index, bundle, [long_query, "a red square"], k=2)
    assert len(results) == 2 and "1 of 2 queries are longer than the model's 32-token context" in caplog.text


def test_model_key_changes_when_the_model_files_change(model_dir, tmp_path):
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in model_dir.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    key = model_key(str(copy))
    assert key.startswith("copy-") and key == model_key(str(copy))
    weights = copy / "model.safetensors"
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert model_key(str(copy)) != key
    assert model_key("openai/clip-vit-base-patch16").startswith("clip-vit-base-patch16-")


def test_command_line_prints_results_writes_sheet_and_reuses_the_index(model_dir, folder, tmp_path, capsys):
    queries_file = tmp_path / "queries.txt"
    queries_file.write_text("a dark picture\n\n", encoding="utf-8")
    (folder / "broken.png").write_bytes(b"not an image")
    results_file = tmp_path / "results.json"
    argv = [
        "search",
        "--model",
        str(model_dir),
        "--images",
        str(folder),
        "--query",
        QUERIES[0],
        "--queries",
        str(queries_file),
        "--k",
        "3",
        "--sheet",
        str(tmp_path / "sheet.png"),
        "--out",
        str(results_file),
        "--no-progress",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads(results_file.read_text())
    assert "skipped unreadable image" in printed and "broken.png" in printed
    assert f"query: {QUERIES[0]}" in printed and "query: a dark picture" in printed
    assert printed.strip().splitlines()[-1].startswith("search: 2 queries over 5 images (5 embedded, 0 reused")
    assert [len(r["hits"]) for r in summary["results"]] == [3, 3]
    with Image.open(tmp_path / "sheet.png") as sheet:
        assert sheet.format == "PNG" and sheet.width > 300

    assert main(argv) == 0
    second = json.loads(results_file.read_text())
    assert (second["embedded"], second["reused"]) == (0, 5)
    assert second["results"] == summary["results"]
    assert main(["search", "--model", str(model_dir), "--images", str(folder)]) == 1
    assert "goalclip search: error: no queries" in capsys.readouterr().err
