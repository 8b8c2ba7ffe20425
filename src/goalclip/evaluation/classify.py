"""Zero-shot classification behind ``goalclip eval --task classify``.

Long-caption fine-tuning should not cost CLIP its global understanding (GOAL's supplementary
material checks exactly this). The protocol is CLIP's: each class's text embedding is the
normalised mean of the normalised embeddings of its name in every prompt template; an image is
assigned the class whose embedding it is most similar to; top-1 / top-5 accuracy is reported.

Datasets, read from disk as they are distributed:

- ``imagefolder``: one subfolder per class (sorted), images inside. An ImageNet validation folder
  arranged by synset (``n01440764/...``) is this layout; ``class_names`` maps folder names to
  readable names ("n01440764 tench" per line, or a JSON object).
- ``cifar10`` / ``cifar100``: the Python pickles (``cifar-10-batches-py/test_batch`` +
  ``batches.meta``; ``cifar-100-python/test`` + ``meta`` with fine labels), images in memory.
"""

from __future__ import annotations

import json
import logging
import pickle
import string
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from goalclip.core.images import PixelBatches, pixel_values
from goalclip.core.manifest import atomic_write
from goalclip.core.manifest import IMAGE_SUFFIXES
from goalclip.evaluation.metrics import similarity
from goalclip.models.embed import Bundle, embed_pixels, embed_text_strings, load_encoder

logger = logging.getLogger(__name__)

FORMATS = ("imagefolder", "cifar10", "cifar100")
# A small ensemble in the spirit of CLIP's ImageNet prompts; --templates replaces it.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of the {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "art of the {}.",
    "a close-up photo of a {}.",
)
CLASSIFY_KS = (1, 5)


@dataclass
class ClassifyData:
    """Labelled images: file paths (``imagefolder``) or an in-memory ``uint8`` array (CIFAR)."""

    classes: list[str]
    labels: list[int]
    paths: list[str] = field(default_factory=list)
    arrays: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ClassifyConfig:
    """Options of ``goalclip eval --task classify``."""

    models: list[str]
    data: str
    format: str = "imagefolder"
    base: str | None = None
    class_names: str | None = None
    templates: str | None = None
    ks: Sequence[int] = CLASSIFY_KS
    batch_size: int = 64
    num_workers: int = 0
    device: str = "cpu"
    out: str | None = None
    progress: bool = True


def read_templates(path: str | None) -> list[str]:
    """Prompt templates, one per line with ``{}`` where the class name goes (built-in default without a file)."""
    if path is None:
        return list(DEFAULT_TEMPLATES)
    templates = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for number, template in enumerate(templates, start=1):
        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(template)
                      if name is not None]
        except ValueError as exc:  # a lone '{' or '}'
            fields = [("?", str(exc), None)]
        if fields != [("", "", None)]:
            raise ValueError(f"{path}:{number}: a template needs exactly one '{{}}' for the class name and no other "
                             f"braces ('{{{{' and '}}}}' write literal ones): {template!r}")
    if not templates:
        raise ValueError(f"{path}: no templates (one per line, with '{{}}' for the class name)")
    return templates


def _read_class_names(path: str, folders: list[str]) -> list[str]:
    """Readable names for ``folders``: a JSON object, ``folder name`` lines, or one name per line in order."""
    text = Path(path).read_text(encoding="utf-8")
    if text.lstrip().startswith("{"):
        mapping = json.loads(text)
    else:
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        keyed = dict(line.split(maxsplit=1) for line in lines if len(line.split(maxsplit=1)) == 2)
        if set(folders) <= set(keyed):
            mapping = keyed
        elif len(lines) == len(folders):
            mapping = dict(zip(folders, lines))
        else:
            raise ValueError(
                f"{path}: {len(lines)} lines for {len(folders)} class folders; give one name per folder "
                "(in sorted folder order), 'folder name' lines, or a JSON object"
            )
    missing = [f for f in folders if f not in mapping]
    if missing:
        raise ValueError(f"{path}: no name for class folder(s) {', '.join(missing[:5])}")
    return [str(mapping[f]) for f in folders]


def load_image_folder(root: str, class_names: str | None = None) -> ClassifyData:
    folder = Path(root)
    if not folder.is_dir():
        raise ValueError(f"{root}: not a folder (imagefolder wants one subfolder of images per class)")
    class_dirs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise ValueError(f"{root}: {len(class_dirs)} class subfolder(s); classification needs at least 2")
    data = ClassifyData(classes=[], labels=[])
    for label, class_dir in enumerate(class_dirs):
        images = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not images:
            raise ValueError(f"{class_dir}: class folder without images; add its images or remove it")
        data.paths.extend(str(p) for p in images)
        data.labels.extend([label] * len(images))
    folders = [p.name for p in class_dirs]
    data.classes = (_read_class_names(class_names, folders) if class_names
                    else [name.replace("_", " ") for name in folders])
    return data


def _unpickle(path: Path) -> dict[bytes, Any]:
    if not path.is_file():
        raise ValueError(f"{path}: missing (expected the dataset's Python pickle files as distributed)")
    with path.open("rb") as handle:
        return pickle.load(handle, encoding="bytes")


def load_cifar(root: str, fine: bool) -> ClassifyData:
    """The CIFAR-10 / CIFAR-100 test split from the Python pickles; ``root``: the extracted folder or its parent."""
    folder = Path(root)
    name, batch, meta, label_key, names_key = (
        ("cifar-100-python", "test", "meta", b"fine_labels", b"fine_label_names") if fine
        else ("cifar-10-batches-py", "test_batch", "batches.meta", b"labels", b"label_names")
    )
    if (folder / name).is_dir():
        folder = folder / name
    entries = _unpickle(folder / batch)
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in _unpickle(folder / meta)[names_key]]
    pixels = np.asarray(entries[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return ClassifyData(classes=[c.replace("_", " ") for c in classes], labels=list(entries[label_key]),
                        arrays=pixels)


def load_classify_data(root: str, format: str, class_names: str | None = None) -> ClassifyData:
    if format == "imagefolder":
        data = load_image_folder(root, class_names)
    elif format in ("cifar10", "cifar100"):
        data = load_cifar(root, fine=format == "cifar100")
        if class_names:
            data.classes = _read_class_names(class_names, data.classes)
    else:
        raise ValueError(f"unknown classification format {format!r}; choose from {', '.join(FORMATS)}")
    _refuse_shared_names(data.classes, class_names or root)
    return data


def _refuse_shared_names(classes: list[str], source: str) -> None:
    """Two classes with one name always tie: the accuracy would silently depend on the tie-break."""
    labels: dict[str, list[int]] = {}
    for label, name in enumerate(classes):
        labels.setdefault(name, []).append(label)
    shared = {name: found for name, found in labels.items() if len(found) > 1}
    if shared:
        name, found = next(iter(shared.items()))
        raise ValueError(f"{source}: class name {name!r} is given to {len(found)} classes (labels "
                         f"{', '.join(map(str, found))}); each class needs a name of its own")


def class_embeddings(bundle: Bundle, classes: Sequence[str], templates: Sequence[str],
                     batch_size: int = 64) -> torch.Tensor:
    """One normalised embedding per class: the mean over templates of the normalised prompt embeddings."""
    prompts = [template.format(name) for name in classes for template in templates]
    per_prompt = embed_text_strings(bundle, prompts, batch_size=batch_size).float()
    per_class = per_prompt.view(len(classes), len(templates), -1).mean(dim=1)
    return torch.nn.functional.normalize(per_class, dim=-1)


def _array_batches(arrays: np.ndarray, processor: Any, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    for start in range(0, len(arrays), batch_size):
        images = [Image.fromarray(a) for a in arrays[start : start + batch_size]]
        yield torch.arange(start, start + len(images)), pixel_values(processor, images)


def image_embeddings(bundle: Bundle, data: ClassifyData, config: ClassifyConfig) -> tuple[torch.Tensor, list[int]]:
    """Normalised embeddings of every readable image (in data order) and the indices that were read."""
    param = next(bundle.model.parameters())
    if data.arrays is not None:
        batches: Any = tqdm(_array_batches(data.arrays, bundle.image_processor, config.batch_size),
                            total=-(-len(data) // config.batch_size), disable=not config.progress, desc="images")
        failed: list[tuple[int, str]] = []
    else:
        batches = PixelBatches(data.paths, bundle.image_processor, batch_size=config.batch_size,
                               num_workers=config.num_workers, progress=config.progress)
        failed = batches.failed
    rows, kept = [], []
    for indices, pixels in batches:
        rows.append(embed_pixels(bundle.model, pixels.to(param.device, param.dtype)).cpu())
        kept.extend(indices.tolist())
    if failed:
        logger.warning("%d unreadable image(s) left out of the accuracy", len(failed))
    if not rows:
        raise ValueError(f"{config.data}: none of the {len(data)} images could be read")
    return torch.cat(rows), kept


def top_k_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int]) -> dict[str, float]:
    """Percent of rows whose true label is among the ``k`` highest scores (ties count against the model)."""
    true_scores = scores.gather(1, labels[:, None])
    # rank = how many classes score strictly higher, plus equal-scoring others (pessimistic ties)
    higher = (scores > true_scores).sum(dim=1)
    ties = (scores == true_scores).sum(dim=1) - 1
    rank = higher + ties
    return {f"top{k}": (rank < k).double().mean().item() * 100 for k in ks}


def classify(config: ClassifyConfig) -> dict[str, Any]:
    """Zero-shot top-k accuracy of every model on the same images and prompts."""
    started = time.perf_counter()
    data = load_classify_data(config.data, config.format, config.class_names)
    templates = read_templates(config.templates)
    ks = [k for k in config.ks if k <= len(data.classes)]
    if config.out is not None:
        Path(config.out).parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for source in config.models:
        bundle = load_encoder(source, base=config.base, device=config.device)
        bundle.model.eval()
        weights = class_embeddings(bundle, data.classes, templates, config.batch_size)
        images, kept = image_embeddings(bundle, data, config)
        labels = torch.tensor([data.labels[i] for i in kept])
        metrics = top_k_accuracy(similarity(images, weights.cpu()), labels, ks)
        rows.append({"model": source, "metrics": metrics, "images": len(kept)})
        del bundle
    results = {
        "task": "classify", "data": config.data, "format": config.format, "classes": len(data.classes),
        "templates": templates, "images": len(data), "models": rows,
        "elapsed_s": time.perf_counter() - started,
    }
    if config.out is not None:
        with atomic_write(config.out) as handle:
            json.dump(results, handle, indent=2)
    return results
