"""What the ``goalclip serve`` page shows, computed without any web framework (so it is testable alone).

- ``Searcher``: one model and its cached image index (the one ``goalclip search`` builds and reuses);
  ranking is ``viz.search.search``, so the page's order is the command's order.
- ``sentence_heatmaps``: per query sentence, the cosine between its embedding and every patch token
  sent through TSL's vision head (the post-layernorm and projection, or the learned heads a
  ``--tsl-heads separate`` run saved beside the model), as TSL compares a sentence with pooled patch
  tokens; drawn over the model's view of the image.
- ``Pairs``: a mined manifest's local pairs, filtered by score and source, a page at a time.
- ``read_run`` / ``run_figure``: a training run's record, metrics and eval JSON as a table and curves.

Models load in a background thread (``Searcher.start``); a load failure is kept as a message the
page shows, so a wrong ``--model`` never stops the server.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import math
import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from goalclip.core.fingerprint import digest_of
from goalclip.core.images import load_rgb, pixel_values
from goalclip.core.text import clean_text, split_sentences

logger = logging.getLogger(__name__)

HEATMAP_SIDE = 224
PAGE_SIZE = 12


class AppError(ValueError):
    """Bad input to a view (a missing folder, an empty query); the page shows the message."""


def png_data_url(image: Image.Image) -> str:
    """An inline ``data:`` URL, so a figure travels in the JSON answer with what it shows."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def distinct_names(folders: list[str]) -> list[str]:
    """Each folder's shortest tail of path parts that no other folder shares, ``pretrained`` rather than a full
    path; a ``seedN`` folder (the demo's fine-tunes, ``models/ROW/seedN``) keeps its parent: ``goal/seed0``."""
    parts = [[p for p in Path(f.rstrip("/\\")).parts if p not in ("/", "\\")] or [f] for f in folders]
    depth = [2 if len(p) > 1 and re.fullmatch(r"seed\d+", p[-1]) else 1 for p in parts]
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = [i for i, name in enumerate(names) if names.count(name) > 1 and depth[i] < len(parts[i])]
        if not clash:
            return names
        for i in clash:
            depth[i] += 1


# ----------------------------------------------------------------------------- search


@dataclass
class Searcher:
    """A model and its index, loaded off the request thread; ``error`` says why it is not usable."""

    model: str
    images: str | None
    base: str | None = None
    data: str | None = None
    device: str = "cpu"
    index_dir: str | None = None
    context: int | None = None
    keep_positions: int = 20
    backend: str = "auto"
    bundle: Any = None
    heads: Any = None
    index: Any = None
    indexed: frozenset[str] = frozenset()
    error: str | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)
    ready: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self._load, name=f"load {self.model}", daemon=True)
        thread.start()
        return thread

    def _load(self) -> None:
        from goalclip.models.clip import load_clip, prepare_text_positions
        from goalclip.training.heads import build_heads
        from goalclip.viz.search import build_index, model_key

        try:
            bundle = load_clip(self.model, base=self.base, device=self.device)
            bundle.model.eval()
            if self.context:  # as goalclip eval --context reads a shorter model: stretched, the query read whole
                prepare_text_positions(bundle, self.context, self.keep_positions)
            key = model_key(self.model, self.base)
            if self.data:  # a manifest's gallery: its own index, so the folder's full index is left alone
                folder, files = manifest_gallery(self.data)
                key += "-" + digest_of(str(Path(self.data).resolve()), length=8)
            else:
                folder, files = self.images, None
            self.index = build_index(bundle, folder, key, index_dir=self.index_dir, files=files)
            self.indexed = frozenset(self.index.paths)
            self.heads = build_heads(bundle.model, self.model)[0].to(bundle.model.device).eval()
            self.bundle = bundle
        except Exception as exc:  # noqa: BLE001 - any failure is shown on the page; the server keeps running
            message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            self.error = message if message.startswith(self.model) else f"{self.model}: {message}"
            logger.warning("serve: %s", self.error)
        finally:
            self.ready.set()

    def status(self) -> dict[str, Any]:
        state = "error" if self.error else ("ready" if self.ready.is_set() else "loading")
        return {"model": self.model, "state": state, "error": self.error,
                "images": len(self.index) if self.index is not None else None}

    def usable(self) -> None:
        if not self.ready.is_set():
            raise AppError(f"{self.model}: still loading the model and indexing {self.images or self.data}; "
                           "try again shortly")
        if self.error:
            raise AppError(self.error)

    def search(self, query: str, k: int) -> list[dict[str, Any]]:
        """The top-k images for ``query`` (``goalclip search``'s ranking), with ids relative to the folder."""
        from goalclip.viz.search import search

        self.usable()
        with self.lock, torch.no_grad():
            hits = search(self.index, self.bundle, [query], k, backend=self.backend)[0]
        return [{"rank": r, "id": Path(p).relative_to(self.index.folder).as_posix(), "score": round(s, 4)}
                for r, (p, s) in enumerate(hits, start=1)]

    def path_of(self, image_id: str) -> Path:
        """The indexed file with this id; anything else (other files, ``..``) is refused."""
        self.usable()
        path = (self.index.folder / image_id).resolve()
        if str(path) not in self.indexed:
            raise AppError(f"{image_id}: not an image of the index")
        return path

    def heatmaps(self, image_id: str, query: str) -> dict[str, Any]:
        path = self.path_of(image_id)
        with self.lock:
            return sentence_heatmaps(self.bundle, self.heads, path, query)


def manifest_gallery(manifest: str) -> tuple[Path, list[str]]:
    """The distinct image files of a manifest and the folder holding them all (where their index is kept)."""
    from goalclip.core.records import read_manifest
    from goalclip.core.shards import member_ref

    if not Path(manifest).is_file():
        raise AppError(f"--data {manifest}: no such file")
    images = list(dict.fromkeys(r["image"] for r in read_manifest(manifest)))
    if not images:
        raise AppError(f"--data {manifest}: no records")
    in_shard = next((image for image in images if member_ref(image)), None)
    if in_shard:
        raise AppError(f"--data {manifest}: {in_shard} is inside a shard; search a folder of images (--images)")
    root = Path(os.path.commonpath(images))
    return (root.parent if root.is_file() else root), images


def query_sentences(query: str) -> list[str]:
    """The query's sentences as training sees captions (cleaned, split); an empty query is an error."""
    sentences = [s.text for s in split_sentences(clean_text(query))]
    if not sentences:
        raise AppError("the query is empty: type a description")
    return sentences


def sentence_maps(bundle: Any, heads: Any, image: Image.Image, sentences: list[str]) -> torch.Tensor:
    """Cosine of each sentence with each patch ``[S, g, g]``: patch tokens through TSL's vision head
    (``TslHeads.project_patches``), sentences encoded as the model encodes any text (TSL's target)."""
    from goalclip.models.clip import image_forward
    from goalclip.models.embed import embed_text_strings, model_device

    device, dtype = model_device(bundle)
    with torch.no_grad():
        pixels = pixel_values(bundle.image_processor, [image]).to(device, dtype)
        _, tokens = image_forward(bundle.model, pixels)
        patches = F.normalize(heads.project_patches(tokens[0]).float(), dim=-1)
        texts = embed_text_strings(bundle, sentences)
    sims = (texts @ patches.T).cpu()
    grid = math.isqrt(sims.shape[1])
    return sims.reshape(len(sentences), grid, grid)


def sentence_heatmaps(bundle: Any, heads: Any, path: str | Path, query: str) -> dict[str, Any]:
    """One overlay per sentence; colours share one scale across the sentences, so they compare."""
    from matplotlib import colormaps

    from goalclip.viz.drawing import model_view, upsample

    sentences = query_sentences(query)
    image = load_rgb(str(path))
    maps = sentence_maps(bundle, heads, image, sentences)
    low, high = float(maps.min()), float(maps.max())
    scaled = upsample((maps - low) / max(high - low, 1e-12), HEATMAP_SIDE).clamp(0, 1).numpy()
    view = np.asarray(model_view(image, bundle.image_processor, HEATMAP_SIDE), dtype=np.float32) / 255.0
    out = []
    for sentence, values, heat in zip(sentences, maps, scaled):
        colour = colormaps["inferno"](heat)[..., :3]
        blended = (0.45 * view + 0.55 * colour) * 255.0
        cell = int(values.argmax())
        out.append({"sentence": sentence, "png": png_data_url(Image.fromarray(blended.astype(np.uint8))),
                    "max": round(float(values.max()), 4), "min": round(float(values.min()), 4),
                    "peak": [cell // values.shape[1], cell % values.shape[1]]})
    return {"grid": int(maps.shape[1]), "scale": [round(low, 4), round(high, 4)], "sentences": out}


# ----------------------------------------------------------------------------- pairs


class Pairs:
    """The mined pairs of a manifest (records with a ``local`` pair), in file order."""

    def __init__(self, manifest: str):
        from goalclip.core.records import read_manifest

        if not Path(manifest).is_file():
            raise AppError(f"--pairs {manifest}: no such file")
        self.records = [r for r in read_manifest(manifest) if r.get("local")]
        if not self.records:
            raise AppError(f"--pairs {manifest}: no records with a mined 'local' pair")
        self.sources = sorted({str(r["local"].get("source", "?")) for r in self.records})

    def page(self, page: int, min_score: float | None, max_score: float | None, source: str) -> dict[str, Any]:
        """One page of the pairs passing the filters; each row keeps its position in the file."""
        if page < 0:
            raise AppError(f"page must be 0 or more, got {page}")
        kept = [
            (n, r) for n, r in enumerate(self.records)
            if (not source or str(r["local"].get("source", "?")) == source)
            and (min_score is None or float(r["local"].get("score", math.nan)) >= min_score)
            and (max_score is None or float(r["local"].get("score", math.nan)) <= max_score)
        ]
        pages = max(1, math.ceil(len(kept) / PAGE_SIZE))
        rows = [
            {"n": n, "id": r["id"], "sentence": r["local"]["sentence"], "source": r["local"].get("source", "?"),
             "score": r["local"].get("score"), "box": r["local"]["box"]}
            for n, r in kept[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]
        ]
        return {"page": page, "pages": pages, "matching": len(kept), "total": len(self.records),
                "sources": self.sources, "pairs": rows}

    def picture(self, n: int) -> bytes:
        """The pair drawn as ``goalclip viz pairs`` draws it (box on the image, sentence, score)."""
        from goalclip.viz.pairs import draw_pair

        if not 0 <= n < len(self.records):
            raise AppError(f"no pair {n}: there are {len(self.records)}")
        canvas, _ = draw_pair(self.records[n])
        buffer = io.BytesIO()
        canvas.save(buffer, format="PNG")
        return buffer.getvalue()


# ----------------------------------------------------------------------------- runs


def _eval_output(path: Path) -> dict[str, Any] | None:
    """A ``goalclip eval --out`` JSON (a ``models`` list of rows with ``metrics``), or None when ``path`` is not
    one."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if isinstance(value, dict) and isinstance(value.get("models"), list) and all(
        isinstance(row, dict) and "metrics" in row for row in value["models"]
    ):
        return value
    return None


def _eval_rows(root: Path, evals: Sequence[str]) -> list[dict[str, Any]]:
    """The run's eval table: the rows of every eval output inside its folder, and of each file in ``evals``
    (kept elsewhere, such as the demo's metrics.json) the rows whose model is this folder."""
    found = [(path.name, value, None) for path in sorted(root.glob("*.json"))
             if (value := _eval_output(path)) is not None]
    for file in evals:
        value = _eval_output(Path(file))
        if value is None:
            raise AppError(f"{file}: not a goalclip eval --out file (a JSON object with a 'models' list of rows "
                           "with 'metrics')")
        found.append((Path(file).name, value, root.resolve()))
    return [{"file": name, "model": row["model"], **row["metrics"]} for name, value, only in found
            for row in value["models"] if only is None or Path(str(row["model"])).resolve() == only]


def read_run(folder: str, name: str | None = None, evals: Sequence[str] = ()) -> dict[str, Any]:
    """A run's curves (loss terms, learning rate, validation) and its table rows, under ``name`` (default: the
    folder's name); ``evals``: eval outputs kept outside the run folders whose rows for this run join its own."""
    root = Path(folder)
    name = name or root.name
    if not root.is_dir():
        raise AppError(f"{folder}: no such run folder")
    record_file, metrics_file = root / "train_config.json", root / "metrics.jsonl"
    if not record_file.is_file() and not metrics_file.is_file():
        raise AppError(f"{folder}: neither train_config.json nor metrics.jsonl (not a goalclip train --out folder)")
    record: dict[str, Any] = {}
    if record_file.is_file():
        try:
            record = json.loads(record_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise AppError(f"{record_file}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    train: list[dict[str, Any]] = []
    val: list[dict[str, Any]] = []
    if metrics_file.is_file():
        for line in metrics_file.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line torn by a kill
                continue
            (val if "val" in row else train).append(row)
    config = record.get("config", {})
    table = {"run": name, "method": config.get("method"), "steps": (record.get("result") or {}).get("steps"),
             "final_loss": (record.get("result") or {}).get("final_loss")}
    if val:
        table.update({f"val {k}": v for k, v in val[-1]["val"].items()})
    return {"run": name, "folder": str(root), "train": train, "val": val, "table": table,
            "evals": _eval_rows(root, evals)}


def run_figure(runs: list[dict[str, Any]]) -> bytes:
    """Loss terms, learning rate and validation scores against step, one line per run (PNG)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4), layout="constrained")
    loss_ax, lr_ax, val_ax = fig.subplots(1, 3)
    for run in runs:
        steps = [row["step"] for row in run["train"]]
        for name in [k for k in (run["train"][0] if run["train"] else {}) if k.startswith("loss")]:
            loss_ax.plot(steps, [row.get(name, math.nan) for row in run["train"]], label=f"{run['run']} {name}")
        lr_ax.plot(steps, [row.get("lr", math.nan) for row in run["train"]], label=run["run"])
        for name in run["val"][0]["val"] if run["val"] else []:
            val_ax.plot([row["step"] for row in run["val"]], [row["val"].get(name, math.nan) for row in run["val"]],
                        marker="o", label=f"{run['run']} {name}")
    for ax, title in ((loss_ax, "training loss"), (lr_ax, "learning rate"), (val_ax, "validation (%)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("step")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
        else:  # e.g. runs trained without --val-data
            ax.text(0.5, 0.5, "none recorded", ha="center", va="center", color="#888", transform=ax.transAxes)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return buffer.getvalue()
