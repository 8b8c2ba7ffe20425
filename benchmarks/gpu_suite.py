"""The GPU benchmark suite in one script (about 8 minutes on one H100/H200-class GPU).

Sections (``--sections``, all by default):

- ``step-b16``, ``step-l14``: one GOAL training step at ViT-B/16 and ViT-L/14 shapes (random
  weights, 248 text positions), bf16 autocast, AdamW: goalclip's ``training_step`` vs the
  reference-style step of ``benchmarks/train_step.py`` (each tower run several times, texts padded
  to the full context, per-sample Python loops) on the same batch, interleaved. Samples/s, peak
  memory (``torch.cuda.max_memory_allocated`` over one step after a reset: weights, gradients and
  AdamW state included) and model-FLOPs utilisation.
- ``trainer``: a few steps of ``goalclip train`` itself (bf16) at ViT-B/16 shapes: samples/s and
  the run record's ``speed_path`` (SDPA, fused AdamW, pinned memory actually on).
- ``flism``, ``lism``: ``goalclip mine`` with a ViT-L/14-336 matcher and YOLOS-tiny (FLISM) or SAM
  ViT-H (LISM), random weights at real shapes (``benchmarks/lism_vs_flism.py``'s models and
  1536 x 1024 images): images/s over every stage but model loading.
- ``eval``: ``goalclip eval`` encoding throughput (images + captions per second, bf16) of the
  ViT-B/16-shaped model on the same 1536 x 1024 images.
- ``gradcache``: peak memory and step time of ``goalclip train`` at batch 1024 with
  ``--grad-cache-chunk``.
- ``decode``: 256 JPEGs (1024 x 768) decoded and resized to a 224 px global view, the two ways of
  ``train --decode-on``: workers (one CPU core, image by image) vs device (batches of 64 decoded by
  nvJPEG and resized on the GPU): images/s and the largest pixel difference.
- ``feed``: ``benchmarks/feed.py`` on this machine's CPUs (towers replaced by no-ops; FLISM mining
  and the training data path at real shapes, 8 workers): the images/s the CPU side can feed. Next
  to the ``flism`` and ``trainer`` rows it shows whether the towers or the feed are the bottleneck.

Model FLOPs (for MFU) count what the step must compute, not what an implementation wastes: per
transformer layer and sequence of n tokens of width d with MLP width m, a forward is
2 n (4 d^2 + 2 d m) multiply-add FLOPs for the projections and MLP plus 4 n^2 d for the attention
scores and their weighted sum; plus the patch embedding (2 n_patches 3 p^2 d) per image. Sequences:
the vision tower over the global images and the crops, the text tower over the captions and the
sentences at goalclip's padded lengths. Training = 3 x forward (backward = 2 x forward). The
reference-style step is charged the same model FLOPs, so its lower MFU is its waste. Peak bf16
dense TFLOP/s comes from ``--peak-tflops`` or the GPU's name (H100/H200 989, A100 312).

Memory: before each section the suite prints its estimated peak. A training section runs its own step code at
its configured batch on the meta device in bf16 (shapes only, no memory or compute), counts what autograd saves
for the backward, adds the weights, gradients, AdamW state and bf16 weight copies (18 bytes per parameter), and
halves the batch until the estimate fits 75 GiB: ViT-B/16's reference-style step at batch 128 is estimated at
98 GiB and runs at 64 (50 GiB), ViT-L/14's at batch 64 at 135 GiB and runs at 32 (71 GiB); the ``trainer``
section's goalclip step fits at 128 (34 GiB). Results are written to ``--out`` after every section, and a
section that still runs out of memory becomes a "did not fit" row while the others run.

``--shapes reduced`` runs every section at the test suite's tiny shapes on the CPU in seconds
(tests/benchmarks/test_benchmarks_smoke.py), so the script cannot rot; its numbers mean nothing.

    python benchmarks/gpu_suite.py --out gpu_suite.json                # on a GPU
    python benchmarks/gpu_suite.py --shapes reduced --device cpu       # the CPU smoke run
"""

from __future__ import annotations

import argparse
import contextlib
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
from _common import interleaved, machine_facts, markdown_table, print_facts, synchronize
from feed import main as feed_main
from feed import make_jpegs
from lism_vs_flism import build_models, make_images, run_method
from train_step import build_real_clip, build_setup, load_setup, variant_loss

from goalclip.core.images import Normalise, TensorPixels, decode_rgb_tensor, image_size
from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.retrieval import evaluate
from goalclip.models.clip import load_clip
from goalclip.training.config import TrainConfig
from goalclip.training.device_decode import DeviceViews, read_for_device
from goalclip.training.trainer import train

SECTIONS = ("step-b16", "step-l14", "trainer", "flism", "lism", "eval", "gradcache", "feed", "decode")
BUDGET_GIB = 75  # what a step section may be planned to use: an 80 GB card less the CUDA context and fragmentation
# Per trainable parameter: fp32 weights, fp32 gradients, AdamW's two fp32 moments, and autocast's bf16 copy.
STATIC_BYTES_PER_PARAM = 4 + 4 + 8 + 2
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}
# Per shape: (train_step setup config, batch) per step section; images mined / evaluated; trainer batch;
# grad-cache batch and chunk.
SHAPES: dict[str, dict[str, Any]] = {
    "real": {"step-b16": ("vit-b16", 128), "step-l14": ("vit-l14", 64), "mine": "real", "flism_images": 64,
             "lism_images": 4, "eval_images": 64, "trainer": ("vit-b16", 128), "gradcache": ("vit-b16", 1024, 64),
             "rounds": 10, "workers": 8, "decode": (256, (1024, 768), 224)},
    "reduced": {"step-b16": ("tiny", 4), "step-l14": ("tiny", 4), "mine": "tiny", "flism_images": 2,
                "lism_images": 2, "eval_images": 4, "trainer": ("tiny", 4), "gradcache": ("tiny", 8, 2),
                "rounds": 1, "workers": 0, "decode": (4, (96, 64), 32)},
}


def _bf16(device: str) -> bool:
    """bf16 on a GPU; the CPU smoke run stays in fp32 (CPU bf16 without AMX is slower than fp32)."""
    return device.startswith("cuda")


def _row(section: str, variant: str, throughput: float | None, unit: str, **extra: Any) -> dict[str, Any]:
    return {"section": section, "variant": variant, "throughput": throughput, "unit": unit, **extra}


def _peak_memory_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(device)


def _setup(config: str, batch: int, work: Path) -> Path:
    """``train_step.build_setup``'s world + model folder, built once per (shape, batch) and shared by sections."""
    folder = work / f"setup-{config}-{batch}"
    return folder if (folder / "model").is_dir() else build_setup(config, batch, folder)


def _images(count: int, shapes: str, work: Path) -> Path:
    """``count`` photo-sized images with captions (``lism_vs_flism.make_images``), shared by sections."""
    folder = work / f"images-{shapes}-{count}"
    manifest = folder / "captions.jsonl"
    return manifest if manifest.is_file() else make_images(folder, count, shapes)


# ----------------------------------------------------------------------------------- memory


def saved_activation_bytes(run, exclude: set[int]) -> int:
    """Bytes autograd saves for the backward while ``run()`` builds a step's graph, each storage once, leaving
    out the storages in ``exclude`` (the weights, counted with their gradients and optimizer state): what a
    training step holds at its peak beyond its static memory."""
    sizes: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage._cdata not in exclude:
            sizes[storage._cdata] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return sum(sizes.values())


@contextlib.contextmanager
def _causal_masks_only():
    """transformers reads a padding mask's values to skip it when nothing is padded, which a meta tensor has
    not: the estimate's text towers take the causal mask alone (an attention mask is not what they save)."""
    from transformers.models.clip import modeling_clip

    real = modeling_clip.create_causal_mask
    modeling_clip.create_causal_mask = lambda config, inputs_embeds, attention_mask, **kwargs: real(
        config=config, inputs_embeds=inputs_embeds, attention_mask=None, **kwargs)
    try:
        yield
    finally:
        modeling_clip.create_causal_mask = real


def _meta_bundle(config: str, folder: Path):
    """The section's model on the meta device in bf16 (shapes without memory or compute): built from the real
    config, or loaded from the setup's saved model (the reduced shapes' tokenizer is trained on their world)."""
    if config == "tiny":
        bundle = load_clip(str(folder / "model"))
        bundle.model.train().to("meta")  # train() first: transformers refuses to set a meta model's mode
    else:
        with torch.device("meta"):
            bundle = build_real_clip(config, seed=0)  # a new model is in training mode
    bundle.model.to(torch.bfloat16)
    return bundle


def plan_step(name: str, shapes: str, work: Path, variants: tuple[str, ...] = ("reference", "ours")) -> dict[str, Any]:
    """The batch a training section runs at: its configured batch, halved until the estimated peak fits BUDGET_GIB.

    The estimate runs the section's own step code at its configured batch on the meta device in bf16 (as the
    GPU run autocasts), measures what autograd saves (:func:`saved_activation_bytes`; the largest of
    ``variants``), scales it to the smaller batch, and adds STATIC_BYTES_PER_PARAM per parameter. Temporaries
    that are not saved (attention workspaces, logits) are not counted: the budget leaves 5 GiB of an 80 GB card.
    """
    config, configured = SHAPES[shapes][name][:2]
    if config == "tiny":
        folder = _setup(config, configured, work)
    else:
        folder = work / f"meta-{config}-{configured}"
        if not (folder / "train.jsonl").is_file():
            build_setup(config, configured, folder, with_model=False)
    loaded = load_setup(folder, configured, "meta", bundle=_meta_bundle(config, folder))
    for batch in (loaded.ours, loaded.ref):
        for key, value in batch.items():
            if torch.is_tensor(value) and value.is_floating_point():
                batch[key] = value.to(torch.bfloat16)
    model = loaded.bundle.model
    vision = model.config.vision_config
    image_tokens = loaded.ours["pixel_values"].shape[0] * ((vision.image_size // vision.patch_size) ** 2 + 1)
    text = {"reference": ("org_ids", "seg_ids"), "ours": ("caption_ids", "sentence_ids")}
    weights = {param.untyped_storage()._cdata for param in model.parameters()}
    measured = []
    for variant in variants:
        with _causal_masks_only():
            saved = saved_activation_bytes(lambda v=variant: variant_loss(v, loaded, model, False), weights)
        batch = loaded.ref if variant == "reference" else loaded.ours
        measured.append((saved, saved / (image_tokens + sum(batch[key].numel() for key in text[variant]))))
    saved, per_token = max(measured)
    static = STATIC_BYTES_PER_PARAM * sum(param.numel() for param in model.parameters())
    batch = configured
    while batch > 1 and (static + saved * batch / configured) / 2**30 > BUDGET_GIB:
        batch //= 2
    return {"config": config, "configured_batch": configured, "batch": batch, "bytes_per_token": per_token,
            "estimated_gib_configured": (static + saved) / 2**30,
            "estimated_gib": (static + saved * batch / configured) / 2**30}


def _announce(name: str, estimate: str) -> None:
    print(f"{name}: estimated peak {estimate}", flush=True)


def _announce_plan(name: str, plan: dict[str, Any]) -> None:
    resized = (f"; batch {plan['configured_batch']} would need {plan['estimated_gib_configured']:.1f} GiB"
               if plan["batch"] != plan["configured_batch"] else "")
    _announce(name, f"{plan['estimated_gib']:.1f} GiB at batch {plan['batch']} ({plan['config']}, "
                    f"{plan['bytes_per_token'] / 2**10:.0f} KiB saved per token over all layers{resized})")


def _weights_gib(*folders: str | Path) -> float:
    return sum(f.stat().st_size for folder in folders for f in Path(folder).glob("*.safetensors")) / 2**30


# ------------------------------------------------------------------------------------ FLOPs


def _tower_flops(cfg, tokens: int, sequences: int) -> float:
    d, m, layers = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    return sequences * layers * (2 * tokens * (4 * d * d + 2 * d * m) + 4 * tokens * tokens * d)


def goal_step_flops(config, batch: dict[str, torch.Tensor]) -> float:
    """Model FLOPs of one GOAL training step on ``batch`` (see the module docstring)."""
    vision, text = config.vision_config, config.text_config
    images = batch["pixel_values"].shape[0]
    patches = (vision.image_size // vision.patch_size) ** 2
    patch_embedding = 2 * patches * 3 * vision.patch_size**2 * vision.hidden_size
    forward = _tower_flops(vision, patches + 1, images) + images * patch_embedding
    forward += _tower_flops(text, batch["caption_ids"].shape[1], batch["caption_ids"].shape[0])
    forward += _tower_flops(text, batch["sentence_ids"].shape[1], batch["sentence_ids"].shape[0])
    return 3 * forward


def peak_tflops(device: str, given: float | None) -> float | None:
    if given is not None or not device.startswith("cuda"):
        return given
    name = torch.cuda.get_device_name(device)
    return next((value for key, value in PEAK_TFLOPS.items() if key in name), None)


# ----------------------------------------------------------------------------------- sections


def step_section(name: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    plan = plan_step(name, args.shapes, work)
    _announce_plan(name, plan)
    config, batch_size = plan["config"], plan["batch"]
    loaded = load_setup(_setup(config, batch_size, work), batch_size, args.device)
    model = loaded.bundle.model.train()
    cuda = args.device.startswith("cuda")
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-6, weight_decay=0.05, fused=cuda)

    def step(variant: str) -> None:
        with torch.autocast("cuda" if cuda else "cpu", dtype=torch.bfloat16, enabled=_bf16(args.device)):
            loss, _ = variant_loss(variant, loaded, model, False)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    variants = {"reference-style": lambda: step("reference"), "goalclip": lambda: step("ours")}
    peaks = dict.fromkeys(variants)
    for variant, run in variants.items() if cuda else ():  # one step each after a reset: each variant's own peak
        run()
        synchronize(args.device)
        _reset_peak(args.device)
        run()
        synchronize(args.device)
        peaks[variant] = _peak_memory_gib(args.device)
    timer = interleaved(variants, rounds=SHAPES[args.shapes]["rounds"], warmup=1, device=args.device, log=False)
    flops = goal_step_flops(model.config, loaded.ours)
    peak = peak_tflops(args.device, args.peak_tflops)
    rows = []
    for variant in variants:
        seconds = timer.median(variant)
        mfu = flops / seconds / (peak * 1e12) if peak else None
        rows.append(_row(name, f"{variant}, {'bf16' if _bf16(args.device) else 'fp32'}", batch_size / seconds,
                         "samples/s", peak_gib=peaks[variant], mfu=mfu,
                         step_ms=seconds * 1e3, model_tflop_per_step=flops / 1e12, shape=config, batch=batch_size))
    rows[-1]["speedup"] = timer.paired_ratio("reference-style", "goalclip")
    return rows


def _train_config(args: argparse.Namespace, setup: Path, out: Path, batch: int, **extra: Any) -> TrainConfig:
    return TrainConfig(model=str(setup / "model"), data=str(setup / "train.jsonl"), out=str(out), batch_size=batch,
                       max_steps=extra.pop("max_steps", 5), precision="bf16" if _bf16(args.device) else "no",
                       num_workers=SHAPES[args.shapes]["workers"], progress=False, log_every=1, checkpoint_epochs=False,
                       **extra)


def trainer_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    plan = plan_step("trainer", args.shapes, work, variants=("ours",))
    _announce_plan("trainer", plan)
    config, batch = plan["config"], plan["batch"]
    setup = _setup(config, batch, work)
    summary = train(_train_config(args, setup, work / "trainer-run", batch))
    record = json.loads((work / "trainer-run" / "train_config.json").read_text())
    precision = "bf16" if _bf16(args.device) else "fp32"
    return [_row("trainer", f"goalclip train, {config}, {precision}", batch / summary["median_step_s"], "samples/s",
                 step_ms=summary["median_step_s"] * 1e3, batch=batch, speed_path=record["derived"]["speed_path"])]


def gradcache_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    config, batch, chunk = SHAPES[args.shapes]["gradcache"]
    plan = plan_step("gradcache", args.shapes, work, variants=("ours",))  # one configured chunk's activations
    _announce("gradcache", f"{plan['estimated_gib'] * chunk / plan['configured_batch']:.1f} GiB at chunk {chunk} "
                           f"(the embeddings of batch {batch} held between passes are not counted)")
    setup = _setup(config, batch, work)
    _reset_peak(args.device)
    summary = train(_train_config(args, setup, work / "gradcache-run", batch, max_steps=2, grad_cache_chunk=chunk))
    precision = "bf16" if _bf16(args.device) else "fp32"
    return [_row("gradcache", f"batch {batch}, chunk {chunk}, {config}, {precision}", batch / summary["median_step_s"],
                 "samples/s", peak_gib=_peak_memory_gib(args.device), step_ms=summary["median_step_s"] * 1e3)]


def mining_section(method: str, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    shapes = SHAPES[args.shapes]
    images = shapes[f"{method}_images"]
    models = build_models(work / "mine-models", shapes["mine"])
    proposer = models["sam"] if method == "lism" else models["yolos"]
    _announce(method, f"{_weights_gib(models['clip'], proposer):.1f} GiB of weights plus one batch's activations "
                      "(inference: nothing is held for a backward)")
    data = _images(images, shapes["mine"], work)
    summary = run_method(method, models, data, work / f"{method}.jsonl", args.device, batch_size=min(images, 32),
                         num_workers=shapes["workers"])  # images decode in loader workers, as `goalclip mine` runs
    seconds = sum(v for stage, v in summary["stage_seconds"].items() if stage != "load")
    return [_row(method, f"goalclip mine --regions {method}", images / seconds, "images/s",
                 stage_seconds=summary["stage_seconds"], pairs=summary["pairs"])]


def eval_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    shapes = SHAPES[args.shapes]
    config, batch = shapes["trainer"]
    setup = _setup(config, batch, work)
    _announce("eval", f"{_weights_gib(setup / 'model'):.1f} GiB of weights plus one batch's activations "
                      "(inference: nothing is held for a backward)")
    n = shapes["eval_images"]
    data = _images(n, shapes["mine"], work)
    precision = "bf16" if _bf16(args.device) else "fp32"
    results = evaluate(EvalConfig(models=[str(setup / "model")], data=str(data), ks=[1, 5], batch_size=64,
                                  num_workers=shapes["workers"], device=args.device, precision=precision,
                                  progress=False), write_out=False)
    seconds = results["models"][0]["timing"]["encode_s"]
    return [_row("eval", f"goalclip eval, {config}, {precision}", n / seconds, "image+caption pairs/s",
                 encode_s=seconds)]


def feed_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    workers = SHAPES[args.shapes]["workers"]
    result = feed_main(["--shapes", "real" if args.shapes == "real" else "tiny", "--workers", str(workers)])
    rows = []
    for stage, unit in (("mine", "images/s"), ("train", "samples/s")):
        numbers = result[stage]
        note = (f"main {numbers['main_ms']:.1f} ms/img, workers {numbers['worker_ms']:.1f} ms/img, "
                f"16-core ceiling {numbers['ceiling_16']:.0f}/s")
        rows.append(_row("feed", f"{stage} feed, towers no-ops, {workers} workers", numbers[f"measured_{workers}"],
                         unit, note=note, **{k: v for k, v in numbers.items() if not k.startswith("measured")}))
    return rows


def decode_section(args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """JPEG decode + one global view per image, the two ways ``goalclip train --decode-on`` has: ``workers``
    (``decode_rgb_tensor`` + ``TensorPixels`` on one CPU core, image by image) against ``device`` (the workers'
    ``read_for_device``, then ``DeviceViews.pixels`` decoding 64 images in one call on ``--device``: nvJPEG and
    the resize on a GPU), images/s over the same files, and the largest pixel difference (levels of 255)."""
    count, size, side = SHAPES[args.shapes]["decode"]
    paths = [r["image"] for r in make_jpegs(work / "decode", count, size)]
    clip_mean, clip_std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    pixels = TensorPixels(side, side, Normalise(1 / 255, clip_mean, clip_std))

    def on_device(batch: list[str]) -> torch.Tensor:
        views = DeviceViews([read_for_device(Path(path).stem, path, image_size(path)) for path in batch], [])
        window, failed = views.pixels(pixels, args.device)
        if failed:
            raise RuntimeError(f"the benchmark's own JPEGs failed to decode: {failed}")
        return pixels.normalise(window)

    batches = [paths[start : start + 64] for start in range(0, count, 64)]
    runs = {"--decode-on workers (one CPU core)": [lambda path=path: pixels([decode_rgb_tensor(path)])
                                                   for path in paths],
            f"--decode-on device ({args.device}, batches of 64)": [lambda batch=batch: on_device(batch)
                                                                   for batch in batches]}
    rows, outputs = [], {}
    for variant, calls in runs.items():
        calls[0]()  # warm-up: nvJPEG's handle, kernels
        synchronize(args.device)
        started = time.perf_counter()
        outputs[variant] = torch.cat([call().cpu() for call in calls])
        rows.append(_row("decode", variant, count / (time.perf_counter() - started), "images/s"))
    first, second = outputs.values()
    worst = float(((first - second).abs() * torch.tensor(clip_std)[:, None, None] * 255).max())
    speedup = rows[-1]["throughput"] / rows[0]["throughput"]
    rows[-1]["note"] = f"{speedup:.2f}x the workers' decode per core; largest difference {worst:.1f} levels"
    return rows


# ------------------------------------------------------------------------------------- report


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def report(rows: list[dict[str, Any]]) -> str:
    table = []
    for r in rows:
        notes = r.get("note") or (f"{r['speedup']:.2f}x vs reference-style" if "speedup" in r else "")
        if "speed_path" in r:
            notes = ", ".join(f"{k} {v}" for k, v in r["speed_path"].items())
        table.append([r["section"], r["variant"], _fmt(r["throughput"], ".1f"), r["unit"],
                      _fmt(r.get("peak_gib"), ".2f"), _fmt(r.get("mfu") and 100 * r["mfu"], ".1f"), notes])
    return markdown_table(["section", "variant", "throughput", "unit", "peak GiB", "MFU %", "notes"], table)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="real",
                        help="real = ViT-B/16, ViT-L/14, ViT-L/14-336 + YOLOS-tiny / SAM ViT-H; "
                        "reduced = tiny (the CPU test)")
    parser.add_argument("--sections", default=",".join(SECTIONS),
                        help=f"comma-separated subset of {', '.join(SECTIONS)}")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--peak-tflops", type=float, default=None,
                        help="the device's peak dense bf16 TFLOP/s for MFU (default: from the GPU's name)")
    parser.add_argument("--out", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.sections.split(",")) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown sections: {', '.join(unknown)}")
    facts = machine_facts(args.device)
    print_facts(facts)
    runners = {
        "step-b16": lambda work: step_section("step-b16", args, work),
        "step-l14": lambda work: step_section("step-l14", args, work),
        "trainer": lambda work: trainer_section(args, work),
        "flism": lambda work: mining_section("flism", args, work),
        "lism": lambda work: mining_section("lism", args, work),
        "eval": lambda work: eval_section(args, work),
        "gradcache": lambda work: gradcache_section(args, work),
        "feed": lambda work: feed_section(args, work),
        "decode": lambda work: decode_section(args, work),
    }
    started = time.perf_counter()
    rows: list[dict[str, Any]] = []

    def result() -> dict[str, Any]:
        return {"shapes": args.shapes, "machine": facts, "rows": rows, "wall_s": time.perf_counter() - started}

    with tempfile.TemporaryDirectory(prefix="goalclip-gpu-suite-") as tmp:
        for name in args.sections.split(","):
            tick = time.perf_counter()
            try:
                section_rows = runners[name](Path(tmp))
            except torch.OutOfMemoryError as exc:  # the other sections still run
                section_rows = [_row(name, "", None, "", note=f"did not fit: {str(exc).splitlines()[0]}")]
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            for row in section_rows:
                row["section_s"] = round(time.perf_counter() - tick, 1)
            rows.extend(section_rows)
            print(f"{name}: done in {time.perf_counter() - tick:.0f} s", flush=True)
            if args.out is not None:  # after every section: a crash later loses nothing measured
                args.out.write_text(json.dumps(result(), indent=2))
    table = report(rows)
    print(f"\n### GPU suite, `--shapes {args.shapes}` ({facts.get('gpu', args.device)}, torch {facts['torch']})\n")
    print(table)
    print(f"\nWall time: {time.perf_counter() - started:.0f} s")
    if args.out is not None:
        args.out.write_text(json.dumps(result(), indent=2))
    return result()


if __name__ == "__main__":
    main()
