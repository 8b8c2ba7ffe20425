"""Gradient caching: peak memory and step time of a big batch in chunks vs plain small and big batches.

Three variants of one GOAL training step (forward, backward, AdamW step; one local pair per image):
plain batch ``--small`` (what fits without gradient caching), plain batch ``--batch`` (the batch the
contrastive loss should see) and ``--batch`` with ``--grad-cache-chunk --chunk``
(``goalclip.training.gradcache.grad_cache_step``). Each variant lives in its own worker process, so its
peak memory is its own; this script drives them one step at a time, interleaved, so all see the same
load. The first step of each is an untimed check: the two big-batch variants must give the same loss.

Memory: on CUDA the peak of ``torch.cuda.max_memory_allocated`` during the steps minus the allocation
before the first step; on CPU the peak resident set size (VmHWM, reset via /proc/self/clear_refs after
loading) minus the resident size before the first step. Both include the gradients and AdamW state
(the same in every variant; printed) as well as activations and temporaries.

    python benchmarks/grad_cache.py                                   # demo-sized model on CPU
    python benchmarks/grad_cache.py --shape vit-b16 --device cuda --precision bf16
    python benchmarks/grad_cache.py --shape vit-l14 --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
from _common import (
    WorkerProcess,
    interleaved,
    machine_facts,
    markdown_table,
    memory_now,
    memory_peak,
    print_facts,
    real_clip_tokenizer,
    synchronize,
)
from accelerate import Accelerator
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from goalclip.core.manifest import write_manifest

from goalclip.core.records import read_manifest
from goalclip.demo.tiny import build_tiny_clip
from goalclip.demo.scene import WorldConfig
from goalclip.demo.world import generate_world, vocabulary
from goalclip.models.clip import ClipBundle, load_clip, save_clip, stretch_positions
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.gradcache import grad_cache_step
from goalclip.training.config import LossWeights
from goalclip.training.step import ChunkedStepModule, StepModule

# Vision (width, layers, heads, patch, image) and text (width, layers, heads) of the real models.
SHAPES: dict[str, dict[str, Any]] = {
    "tiny": {},  # the demo's model: width 64, 4 layers, 64 px / patch 8, context 32 stretched to 104
    "vit-b16": {"vision": (768, 12, 12, 16, 224), "text": (512, 12, 8), "projection": 512},
    "vit-l14": {"vision": (1024, 24, 16, 14, 224), "text": (768, 12, 12), "projection": 768},
}


def build_model(shape: str, texts: list[str], seed: int) -> ClipBundle:
    """The demo's tiny CLIP, or random weights at a real CLIP's shapes (OpenAI's BPE, 248 text positions)."""
    if shape == "tiny":
        bundle = build_tiny_clip(texts, width=64, layers=4, projection_dim=64, image_size=64, patch_size=8,
                                 context_length=32, seed=seed)
        bundle.tokenizer.model_max_length = stretch_positions(bundle.model, keep=8, target=104)
        return bundle
    tokenizer = real_clip_tokenizer(77)
    if tokenizer is None:
        raise SystemExit(f"--shape {shape} needs open_clip_torch installed (for the CLIP BPE vocabulary)")
    (vw, vl, vh, patch, size), (tw, tl, th) = SHAPES[shape]["vision"], SHAPES[shape]["text"]
    config = CLIPConfig(
        text_config={"vocab_size": 49408, "hidden_size": tw, "intermediate_size": 4 * tw, "num_hidden_layers": tl,
                     "num_attention_heads": th, "max_position_embeddings": 77, "hidden_act": "quick_gelu",
                     "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id,
                     "pad_token_id": tokenizer.pad_token_id},
        vision_config={"hidden_size": vw, "intermediate_size": 4 * vw, "num_hidden_layers": vl,
                       "num_attention_heads": vh, "image_size": size, "patch_size": patch,
                       "hidden_act": "quick_gelu"},
        projection_dim=SHAPES[shape]["projection"],
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    tokenizer.model_max_length = stretch_positions(model, keep=20, target=248)
    processor = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    return ClipBundle(model, tokenizer, processor)


def build_setup(shape: str, sizes: list[int], folder: Path) -> Path:
    """A synthetic world with one local pair per image, the saved model, and one saved batch per size."""
    world = generate_world(folder / "world", WorldConfig(n_pretrain=0, n_train=max(sizes), n_test=2,
                                                         min_objects=3, max_objects=5, seed=0))
    records = read_manifest(world.train)
    for i, record in enumerate(records):
        obj = record["objects"][i % len(record["objects"])]
        record["local"] = {"sentence": obj["sentence"], "box": obj["box"], "score": 1.0, "source": "external"}
    write_manifest(folder / "train.jsonl", records)
    bundle = build_model(shape, [r["caption"] for r in records] + [" ".join(vocabulary())], seed=0)
    save_clip(bundle, folder / "model")
    examples = load_examples(folder / "train.jsonl", need_local=True)
    dataset = TrainDataset(examples, bundle, need_local=True)
    collate = Collate(pad_id=bundle.tokenizer.pad_token_id)
    for size in set(sizes):
        torch.save(dataset.to_device(collate([dataset[i] for i in range(size)]), "cpu"), folder / f"batch{size}.pt")
    return folder


def worker(args: argparse.Namespace) -> None:
    """One variant in its own process, driven over stdin/stdout: ``check`` (first step, untimed), ``step``, ``quit``."""
    def send(obj: dict[str, Any]) -> None:
        print(json.dumps(obj), flush=True)

    batch_size, _, chunk = args.worker.partition(":")
    accelerator = Accelerator(cpu=args.device == "cpu", mixed_precision=args.precision)
    device = accelerator.device
    clip = load_clip(str(Path(args.setup) / "model")).model.to(device)
    module = (ChunkedStepModule if chunk else StepModule)(clip, "goal", LossWeights())
    batch = {k: v.to(device) for k, v in torch.load(Path(args.setup) / f"batch{batch_size}.pt").items()}
    optimizer = torch.optim.AdamW(module.parameters(), lr=5e-6, weight_decay=0.05)
    params = sum(p.numel() * p.element_size() for p in module.parameters())

    def step() -> float:
        if chunk:
            loss, _ = grad_cache_step(accelerator, module, batch, int(chunk))
        else:
            with accelerator.autocast():
                loss, _ = module(batch)
            accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    synchronize(str(device))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        try:  # reset the peak RSS so loading does not count
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            pass
    before = memory_now(str(device))
    send({"ready": True, "param_bytes": params})
    for line in sys.stdin:
        op = json.loads(line)["op"]
        if op == "check":
            send({"loss": step()})
        elif op == "step":
            synchronize(str(device))
            tick = time.perf_counter()
            step()
            synchronize(str(device))
            send({"seconds": time.perf_counter() - tick})
        elif op == "quit":
            send({"before": before, "peak": memory_peak(str(device))})
            return


class Worker(WorkerProcess):
    """A worker process running this script's ``--worker VARIANT`` mode."""

    def __init__(self, args: argparse.Namespace, setup: Path, variant: str):
        cmd = [sys.executable, __file__, "--shape", args.shape, "--device", args.device, "--precision",
               args.precision, "--setup", str(setup), "--worker", variant]
        super().__init__(cmd, variant)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--batch", type=int, default=256, help="the big batch (default: 256)")
    parser.add_argument("--chunk", type=int, default=16, help="gradient-caching chunk (default: 16)")
    parser.add_argument("--small", type=int, default=16, help="the plain small batch (default: 16)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant (default: 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after the check step (default: 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=["no", "bf16", "fp16"], default="no",
                        help="Accelerate mixed precision (default: no = fp32)")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--setup", help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return {}

    started = time.perf_counter()
    facts = machine_facts(args.device)
    print_facts(facts)
    names = {f"{args.small}": f"plain batch {args.small}", f"{args.batch}": f"plain batch {args.batch}",
             f"{args.batch}:{args.chunk}": f"batch {args.batch}, --grad-cache-chunk {args.chunk}"}
    workers: dict[str, Worker] = {}
    with tempfile.TemporaryDirectory(prefix="goalclip-bench-") as tmp:
        setup = build_setup(args.shape, [args.small, args.batch], Path(tmp))
        try:
            workers = {v: Worker(args, setup, v) for v in names}
            param_bytes = [w.receive() for w in workers.values()][-1]["param_bytes"]
            checks = {v: w.ask("check")["loss"] for v, w in workers.items()}
            big, cached = checks[f"{args.batch}"], checks[f"{args.batch}:{args.chunk}"]
            print(f"check (first step): loss plain batch {args.batch} {big:.6f}, grad cache {cached:.6f} "
                  f"(|diff| {abs(big - cached):.1e})", flush=True)
            timer = interleaved({v: (lambda w=w: w.ask("step")["seconds"]) for v, w in workers.items()},
                                rounds=args.steps, warmup=args.warmup, self_timed=True)
            memory = {v: w.ask("quit") for v, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()

    mib = 2**20
    kind = "peak CUDA allocated" if args.device.startswith("cuda") else "peak RSS"
    delta = {v: memory[v]["peak"] - memory[v]["before"] for v in names}
    per_sample = {v: timer.median(v) / int(v.partition(":")[0]) for v in names}
    ref = f"{args.batch}"
    rows = [[label, f"{timer.median(v) * 1e3:.0f}", f"{per_sample[v] / per_sample[ref]:.2f}x",
             f"{delta[v] / mib:.0f}", f"{delta[v] / delta[ref]:.2f}x"] for v, label in names.items()]
    print()
    print(f"### Gradient caching, `--shape {args.shape}` ({args.device}, precision {args.precision}, "
          f"{args.steps} timed steps each, torch {facts['torch']}, {facts['torch_threads']} threads, load avg "
          f"{', '.join(str(x) for x in facts['load_avg_1_5_15'])})")
    print()
    print(markdown_table(["variant", "median step ms", f"time per sample vs plain {args.batch}",
                          f"{kind} delta MiB", f"memory vs plain {args.batch}"], rows))
    cached_key = f"{args.batch}:{args.chunk}"
    paired = timer.paired_ratio(cached_key, ref)
    print()
    print(f"Step time grad cache / plain {args.batch}, median of per-round ratios: {paired:.2f}x "
          f"(per round: {', '.join(f'{a / b:.2f}' for a, b in zip(timer.times[cached_key], timer.times[ref]))}).")
    print(f"Memory includes the gradients and AdamW state of {param_bytes / mib:.0f} MiB of parameters "
          f"(3 x = {3 * param_bytes / mib:.0f} MiB, the same in every variant); the rest is activations and "
          f"temporaries. Wall time of this script: {time.perf_counter() - started:.0f} s")
    result = {"facts": facts, "shape": args.shape, "loss_check": {"plain": big, "grad_cache": cached},
              "median_s": {v: timer.median(v) for v in names},
              "paired_ratio_cached_over_plain": paired, "memory_delta_bytes": delta,
              "param_bytes": param_bytes}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
