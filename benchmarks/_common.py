"""Helpers shared by the benchmark scripts: machine facts, interleaved timing, memory, tables.

Benchmarks here compare a baseline with goalclip's code in ONE process, interleaved (ABAB...)
after a warm-up, and report medians and ratios: on a small shared machine absolute times are
noise, while two variants measured side by side see the same noise. Peak memory is per process,
so it is measured in a separate subprocess per variant.
"""

from __future__ import annotations

import os

# Before torch is imported: a busy 2-core machine punishes spinning OpenMP threads, and the
# benchmarks never touch the network.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import gzip
import json
import platform
import resource
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

__all__ = [
    "Timer",
    "interleaved",
    "machine_facts",
    "markdown_table",
    "memory_now",
    "memory_peak",
    "real_clip_tokenizer",
    "synchronize",
]


def machine_facts(device: str = "cpu") -> dict[str, Any]:
    """What a reader needs to judge the numbers: cores, load, library versions, threads."""
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "load_avg_1_5_15": tuple(round(x, 2) for x in os.getloadavg()),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "cpu": _cpu_model(),
        "device": device,
    }
    if device.startswith("cuda") and torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(device)
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def print_facts(facts: dict[str, Any]) -> None:
    print("machine: " + ", ".join(f"{k}={v}" for k, v in facts.items()))


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


class Timer:
    """Seconds of each call per variant; ``median``/``ratio`` summarise them."""

    def __init__(self) -> None:
        self.times: dict[str, list[float]] = {}

    def add(self, name: str, seconds: float) -> None:
        self.times.setdefault(name, []).append(seconds)

    def median(self, name: str) -> float:
        return statistics.median(self.times[name])

    def paired_ratio(self, slow: str, fast: str) -> float:
        """Median over rounds of ``slow / fast``: each round's two calls saw the same machine."""
        return statistics.median(a / b for a, b in zip(self.times[slow], self.times[fast]))

    def spread(self, name: str) -> tuple[float, float]:
        values = self.times[name]
        return min(values), max(values)


def interleaved(
    variants: dict[str, Callable[[], Any]],
    *,
    rounds: int,
    warmup: int,
    device: str = "cpu",
    log: bool = True,
    self_timed: bool = False,
) -> Timer:
    """Run every variant ``warmup`` times (untimed), then ``rounds`` times interleaved A B A B ...

    Each call is timed on its own with ``time.perf_counter`` (after a device sync), so slow
    phases of a shared machine hit both variants alike. The order alternates every round
    (AB, BA, ...) so neither variant always runs right after the other's memory traffic.
    With ``self_timed`` each callable returns its own measured seconds (e.g. a step timed
    inside a worker process) and that value is recorded instead.
    """
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
            synchronize(device)
    timer = Timer()
    for r in range(rounds):
        order = names if r % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            tick = time.perf_counter()
            result = variants[name]()
            synchronize(device)
            timer.add(name, float(result) if self_timed else time.perf_counter() - tick)
        if log:
            last = ", ".join(f"{n} {timer.times[n][-1]:.3f}s" for n in names)
            print(f"  round {r + 1}/{rounds}: {last}", flush=True)
    return timer


def _proc_status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def memory_now(device: str = "cpu") -> int:
    """Current resident set size in bytes (CPU), or allocated bytes on a CUDA device."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated(device)
    kib = _proc_status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import psutil

    return psutil.Process().memory_info().rss


def memory_peak(device: str = "cpu") -> int:
    """Peak resident set size of this process so far (CPU), or peak allocated bytes on CUDA.

    On CUDA call ``torch.cuda.reset_peak_memory_stats`` before the measured region.
    """
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated(device)
    kib = _proc_status_kib("VmHWM")
    if kib is not None:
        return kib * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


class WorkerProcess:
    """Parent-side handle of a benchmark worker: one JSON request per line on its stdin, one JSON
    answer per line on its stdout (each variant in its own process, so memory peaks do not mix)."""

    def __init__(self, cmd: list[str], variant: str):
        self.variant = variant
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

    def receive(self) -> dict[str, Any]:
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.variant} died (exit code {self.proc.wait()}); see its stderr above")
        return json.loads(line)

    def ask(self, op: str) -> dict[str, Any]:
        self.proc.stdin.write(json.dumps({"op": op}) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP byte-level alphabet: printable bytes map to themselves, the rest above 255."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes = keep[:]
    extra = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(keep, (chr(c) for c in codes)))


def real_clip_tokenizer(max_length: int = 77):
    """OpenAI's CLIP BPE (49,408 ids) built from the vocabulary that open_clip ships, or None.

    The benchmark machine cannot download ``openai/clip-vit-base-patch16``; the merges file inside
    the open_clip wheel gives OpenAI's ids (the tokenizer open_clip itself uses). Vocabulary order: 256 byte symbols,
    the same with ``</w>``, one entry per merge, then the two special tokens.
    """
    try:
        import open_clip
    except ImportError:
        return None
    from transformers import CLIPTokenizer

    path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.exists():
        return None
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        lines = handle.read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = CLIPTokenizer(vocab={tok: i for i, tok in enumerate(vocab_list)}, merges=merges)
    tokenizer.model_max_length = max_length
    return tokenizer
