"""Model cards: a Hugging Face ``README.md`` in every exported model folder.

A folder that ``goalclip train`` exports is meant to be shared; the card is what the Hub (and a
reader) sees first. Its YAML header is built with huggingface_hub's own ``ModelCardData``, so
what the Hub's parser accepts is what we write: ``library_name``, ``pipeline_tag``,
``base_model`` (when the run started from a hub id), ``tags`` and, when the run validated, the
final validation scores as ``model-index`` results. The body says how the model was trained
(method, the data manifest's fingerprint, steps, recipe), its text context and how to load it.

Everything comes from the run's own record (``train_config.json`` and ``metrics.jsonl`` in the
run folder), so the card is written by one call after the export and can be rebuilt later.
``goalclip eval --card MODEL`` adds the evaluation table between two markers, replacing an older
table on a rerun.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from goalclip.core.fingerprint import digest_of, file_stamp, fingerprint
from goalclip.core.manifest import atomic_write

CARD_FILE = "README.md"
EVAL_BEGIN = "<!-- goalclip eval: begin -->"
EVAL_END = "<!-- goalclip eval: end -->"
PIPELINE_TAG = "zero-shot-image-classification"
METHOD_TEXT = {
    "goal": "GOAL: global contrastive loss on (image, long caption) plus local contrastive loss on mined "
            "(box crop, sentence) pairs plus the token-similarity loss (TSL)",
    "wo-tsl": "global and local contrastive losses without TSL (the papers' ablation)",
    "global": "global contrastive loss only (the papers' fine-tuning baseline)",
    "local": "local contrastive loss only (the papers' local baseline)",
}


class CardError(ValueError):
    """A card cannot be written or updated; the message names the folder or file."""


def _read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise CardError(f"{path}: cannot read the run record ({exc})") from None
    if not isinstance(value, dict):
        raise CardError(f"{path}: expected a JSON object")
    return value


def read_metrics(metrics_file: Path) -> tuple[int | None, tuple[int, dict[str, float]] | None]:
    """The last step a run's metrics.jsonl reached and its last validation ``(step, scores)``, if any.

    Read when a model is exported, the last line is the step of that model: the final step, or the
    validation that made ``best/``.
    """
    last_step, validation = None, None
    if not metrics_file.is_file():
        return None, None
    for line in metrics_file.read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line torn by a kill
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        last_step = int(row["step"])
        if isinstance(row.get("val"), dict) and row["val"]:
            validation = (last_step, {k: float(v) for k, v in row["val"].items()})
    return last_step, validation


def data_fingerprint(data: str) -> str:
    """sha1 and size of a manifest file's bytes; else a digest of the source's fingerprint (shards, a missing file)."""
    if Path(data).is_file():
        size, sha1 = file_stamp(data, contents=True).split(":")
        return f"sha1 {sha1} ({size} bytes)"
    return f"digest {digest_of(fingerprint(data, contents=True))}"


def _base_model(config: dict[str, Any]) -> str | None:
    """The hub id the run started from (its ``--base`` for a state-dict file); for a local folder with a
    card (a goalclip export trained further), that card's ``base_model``; else None."""
    source = config.get("base") or config.get("model")
    if not source:
        return None
    card = Path(source) / CARD_FILE
    if card.is_file():
        from huggingface_hub import ModelCard

        try:
            return ModelCard.load(card).data.base_model
        except (ValueError, OSError):  # someone else's README: no claim about the base
            return None
    return None if os.path.exists(source) else str(source)


def _card_data(name: str, config: dict[str, Any], validation: tuple[int, dict[str, float]] | None) -> Any:
    from huggingface_hub import EvalResult, ModelCardData

    method = str(config.get("method", "goal"))
    results = []
    if validation is not None:
        val_name = Path(str(config.get("val_data") or "validation")).name
        results = [
            EvalResult(task_type="image-text-retrieval", task_name="image-text retrieval", dataset_type=val_name,
                       dataset_name=val_name, dataset_split="validation", metric_type=metric, metric_name=metric,
                       metric_value=round(value, 4))
            for metric, value in validation[1].items()
        ]
    return ModelCardData(
        library_name="transformers", pipeline_tag=PIPELINE_TAG, base_model=_base_model(config),
        tags=["clip", "goalclip", method, "long-captions", "image-text-retrieval"],
        model_name=name, eval_results=results or None,
    )


def build_card(model_dir: str | os.PathLike, run_dir: str | os.PathLike) -> str:
    """The card text for the model in ``model_dir`` trained by the run recorded in ``run_dir``."""
    model_dir, run_dir = Path(model_dir), Path(run_dir)
    record = _read_json(run_dir / "train_config.json")
    config = record.get("config", {})
    derived, resolved = record.get("derived", {}), record.get("resolved", {})
    last_step, validation = read_metrics(run_dir / "metrics.jsonl")
    name = run_dir.resolve().name + ("" if model_dir.resolve() == run_dir.resolve() else f"-{model_dir.name}")
    data = _card_data(name, config, validation)
    method = str(config.get("method", "goal"))
    steps = last_step if last_step is not None else derived.get("total_steps")
    weights = config.get("weights") or {}
    training = [
        f"- method: `{method}`: {METHOD_TEXT.get(method, method)}",
        f"- started from: `{config.get('model')}`"
        + (f" (architecture `{config['base']}`)" if config.get("base") else ""),
        f"- data: `{Path(str(config.get('data'))).name}`, manifest {data_fingerprint(str(config.get('data')))}",
        (f"- steps: {steps} ({derived.get('examples', '?')} examples, batch {config.get('batch_size')} x "
         f"{derived.get('num_processes', 1)} processes, lr {config.get('lr')}, seed {config.get('seed')})"),
        f"- recipe: `{config.get('recipe')}` ("
        + ", ".join(f"{k} {v}" for k, v in resolved.items()) + ")",
        "- loss weights: " + ", ".join(f"{k} {v}" for k, v in weights.items()) if weights else "",
        (f"- text context: {derived.get('context_length', config.get('max_text_len'))} tokens "
         f"(positions stretched Long-CLIP style, first {config.get('keep_positions')} kept)"),
        f"- goalclip commit: `{record.get('git_commit')}`" if record.get("git_commit") else "",
    ]
    kind = "SigLIP" if derived.get("backbone") == "siglip" else "CLIP"
    lines = [
        f"# {name}",
        "",
        f"A {kind} model fine-tuned for long, detailed captions with goalclip (GOAL / FAST-GOAL). "
        f"It is a plain `transformers` {kind} folder: model, tokenizer and image processor.",
        "",
        "## Training",
        "",
        *[line for line in training if line],
        "",
    ]
    if validation is not None:
        step, scores = validation
        lines += [f"Final validation (step {step}) on `{Path(str(config.get('val_data'))).name}`, in %:", "",
                  "| " + " | ".join(scores) + " |", "|" + "|".join("---:" for _ in scores) + "|",
                  "| " + " | ".join(f"{v:.2f}" for v in scores.values()) + " |", ""]
    lines += ["## Use", "", "```python", *_usage(kind, name, derived.get("context_length", config.get("max_text_len"))),
              "```", ""]
    return f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)


def _usage(kind: str, name: str, context: Any) -> list[str]:
    """How to load the folder and encode texts: SigLIP's pad to the context, as it was trained (and without an
    attention mask); CLIP's to the longest in the batch, which its causal text attention makes exact."""
    model_class, processor_class, padding = (
        ("AutoModel", "AutoProcessor", f'padding="max_length", max_length={context}') if kind == "SigLIP"
        else ("CLIPModel", "CLIPProcessor", "padding=True"))
    return [
        f"from transformers import {model_class}, {processor_class}",
        "",
        f'model = {model_class}.from_pretrained("{name}")  # this folder, or its Hub repo id',
        f'processor = {processor_class}.from_pretrained("{name}")',
        f"# texts up to {context} tokens:",
        f'processor(text=[caption], images=[image], {padding}, truncation=True, return_tensors="pt")',
    ]


def write_model_card(model_dir: str | os.PathLike, run_dir: str | os.PathLike) -> Path:
    """Write ``model_dir/README.md`` from the run record in ``run_dir`` (atomically)."""
    path = Path(model_dir) / CARD_FILE
    with atomic_write(path) as handle:
        handle.write(build_card(model_dir, run_dir))
    return path


def add_eval_table(model_dir: str | os.PathLike, table: str, data: str) -> Path:
    """Put an evaluation table (Markdown) into ``model_dir``'s card, replacing the one a previous eval wrote.

    A folder without a card (not exported by ``goalclip train``) gets a minimal one, so any CLIP
    folder can carry its numbers.
    """
    folder = Path(model_dir)
    if not folder.is_dir():
        raise CardError(f"--card {model_dir}: not a model folder")
    path = folder / CARD_FILE
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    else:
        from huggingface_hub import ModelCardData

        meta = ModelCardData(library_name="transformers", pipeline_tag=PIPELINE_TAG, tags=["clip", "goalclip"])
        text = f"---\n{meta.to_yaml()}\n---\n\n# {folder.resolve().name}\n"
    where = f"`{Path(data).name}`, manifest {data_fingerprint(data)}" if Path(data).is_file() else f"`{data}`"
    section = f"{EVAL_BEGIN}\n## Evaluation\n\n`goalclip eval` on {where}, in %:\n\n{table}\n{EVAL_END}\n"
    if EVAL_BEGIN in text and EVAL_END in text:
        head, rest = text.split(EVAL_BEGIN, 1)
        text = head + section + rest.split(EVAL_END, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    with atomic_write(path) as handle:
        handle.write(text)
    return path
