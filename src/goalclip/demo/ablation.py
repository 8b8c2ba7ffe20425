"""The demo's ablation table: every fine-tuning method over several seeds, as mean ± std.

The demo fine-tunes each method from one pretrained checkpoint with one recipe, once per seed,
and evaluates every run with one protocol. These helpers turn that flat list of runs into the
table a user reads (one row per method, each cell the mean over seeds ± their sample standard
deviation) and into a bar chart with the seed spread as error bars.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from goalclip.core.manifest import atomic_write

LONG_CAPTION_METRICS: tuple[str, ...] = ("t2i@1", "t2i@5", "i2t@1", "i2t@5")


def summarise(results: dict[str, Any], labels: Sequence[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Group :func:`~goalclip.evaluation.retrieval.evaluate` rows by label (one per model, in order).

    Returns ``{label: {metric: {"mean", "std", "n", "values"}}}`` in first-seen label order; ``std``
    is the sample standard deviation over the label's runs (0.0 for a single run).
    """
    rows = results["models"]
    if len(rows) != len(labels):
        raise ValueError(f"{len(labels)} labels for {len(rows)} evaluated models")
    grouped: dict[str, dict[str, list[float]]] = {}
    for label, row in zip(labels, rows):
        for metric, value in row["metrics"].items():
            grouped.setdefault(label, {}).setdefault(metric, []).append(float(value))
    return {
        label: {
            metric: {
                "mean": statistics.fmean(values),
                "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                "n": len(values),
                "values": values,
            }
            for metric, values in metrics.items()
        }
        for label, metrics in grouped.items()
    }


def format_cell(stats: dict[str, Any]) -> str:
    """``mean ± std`` over several runs; a single run shows its value alone (it has no spread)."""
    if stats["n"] > 1:
        return f"{stats['mean']:.2f} ± {stats['std']:.2f}"
    return f"{stats['mean']:.2f}"


def ablation_table(summary: dict[str, dict[str, dict[str, Any]]], metrics: Sequence[str] | None = None) -> str:
    """A Markdown table: one row per label, a ``runs`` column, then one column per metric."""
    if metrics is None:
        metrics = list(dict.fromkeys(m for per_label in summary.values() for m in per_label))
    lines = [
        "| " + " | ".join(["model", "runs", *metrics]) + " |",
        "|" + "|".join(["---", "---:", *("---:" for _ in metrics)]) + "|",
    ]
    for label, per_metric in summary.items():
        runs = max(stats["n"] for stats in per_metric.values())
        cells = [format_cell(per_metric[m]) if m in per_metric else "" for m in metrics]
        lines.append("| " + " | ".join([label, str(runs), *cells]) + " |")
    return "\n".join(lines)


def plot_ablation(
    summary: dict[str, dict[str, dict[str, Any]]], metrics: Sequence[str], out: str | Path, title: str = ""
) -> Path:
    """Grouped bars (one group per metric, one bar per label) with ± one std as error bars.

    A label with a single run gets no error bar (it has no spread to show).
    """
    import numpy as np
    from matplotlib.figure import Figure

    labels = list(summary)
    x = np.arange(len(metrics))
    width = 0.8 / max(len(labels), 1)
    fig = Figure(figsize=(1.6 + 1.4 * len(metrics), 3.6), layout="constrained")
    ax = fig.subplots()
    for i, label in enumerate(labels):
        stats = [summary[label].get(m, {"mean": 0.0, "std": 0.0, "n": 1}) for m in metrics]
        spread = [s["std"] for s in stats] if any(s["n"] > 1 for s in stats) else None
        ax.bar(x + (i - (len(labels) - 1) / 2) * width, [s["mean"] for s in stats], width,
               yerr=spread, capsize=3, label=label)
    ax.set_xticks(x, list(metrics))
    ax.set_ylabel("percent")
    ax.set_title(title, fontsize=10)
    ax.set_ylim(top=ax.get_ylim()[1] * 1.15)  # headroom so the legend covers no bar
    ax.legend(fontsize=8, ncols=min(len(labels), 5), loc="upper left")
    ax.grid(axis="y", alpha=0.3)
    out = Path(out)
    with atomic_write(out, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110)
    return out
