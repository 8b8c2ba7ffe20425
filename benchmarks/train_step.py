"""One GOAL training step: goalclip's step vs a reference-style step, same weights, same batch.

Ours (``goalclip.training.trainer.training_step`` on a ``goalclip.training.data.Collate`` batch): token spans and
box patch masks come precomputed from the data pipeline; one vision forward over
``[global ; crops]``; each text input encoded once (captions padded to the batch's longest,
sentences to their own length); TSL pools with one batched masked mean.

Reference-style (written here, mirroring the structure of the public GOAL trainer's step):
a full ``model(input_ids, pixel_values)`` forward, then a vision-only and a text-only forward
over the same inputs (each tower runs twice); every text padded to the full context (captions
AND the short local sentences); per sample inside the step, the caption and sentence are
re-tokenised and the sentence's token span is searched with ``split('.')`` + ``str.find`` +
prefix tokenisation; per-sample Python loops pool the patch tokens under the box and the
caption tokens over the span.

By default the reference span search is made EXACT (start = tokens of the prefix minus its EOS),
so both steps give the same loss on the same batch (checked to 1e-4); ``--reference-off-by-one``
reproduces the public code's off-by-one start (pooling one token to the right) instead.
Box -> patch cells use the same processor geometry in both (the public code scales by
image_size / width and ignores the centre crop; identical here because the images are square).

Both steps: AdamW (lr 5e-6, weight decay 0.05 on every parameter), forward + backward +
optimizer step + zero_grad, no gradient clipping, fp32.

How it is measured: each variant lives in its own worker process (peak RSS is per process, so
each worker's peak is its variant's), both loading the same saved weights and building the same
batch; this script drives them one step at a time, alternating A B B A ..., so both see the same
load on a shared machine. The first step of each is the untimed check (loss, loss terms and a
gradient signature compared between the two); then warm-up steps; then the timed steps, timed
with ``time.perf_counter`` inside the worker. Each variant runs 1 + warm-up + steps steps in all.

    python benchmarks/train_step.py --config tiny
    python benchmarks/train_step.py --config vit-b16
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
import torch.nn.functional as F
from _common import (
    interleaved,
    machine_facts,
    markdown_table,
    memory_now,
    memory_peak,
    print_facts,
    real_clip_tokenizer,
    synchronize,
    WorkerProcess,
)
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.config import LossWeights
from goalclip.core.manifest import write_manifest
from goalclip.core.records import read_manifest
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models.clip import (
    ClipBundle,
    load_clip,
    save_clip,
    stretch_positions,
)
from goalclip.models.embed import crop_geometry
from goalclip.demo.scene import WorldConfig
from goalclip.demo.world import generate_world, vocabulary
from goalclip.training.step import training_step

WEIGHTS = LossWeights()
LR, WEIGHT_DECAY = 5e-6, 0.05

CONFIGS: dict[str, dict[str, Any]] = {
    # The demo's model: width 64, 4 layers, 64 px / patch 8, context 32 stretched to 104 (keep 8),
    # on the demo's world (3-5 objects per image), batch 32 as the demo fine-tunes.
    "tiny": {"batch": 32, "steps": 15, "warmup": 2, "min_objects": 3, "max_objects": 5},
    # ViT-B/16 shapes, random init, real CLIP BPE; 77 text positions stretched to 248 (keep 20).
    # Scenes of 5-8 objects give 6-9 sentences per caption (real long captions: median 6).
    "vit-b16": {"batch": 4, "steps": 2, "warmup": 0, "min_objects": 5, "max_objects": 8},
    # ViT-L/14 shapes (224 px, text 768 x 12), otherwise as vit-b16.
    "vit-l14": {"batch": 2, "steps": 1, "warmup": 0, "min_objects": 5, "max_objects": 8},
}


# ------------------------------------------------------------------------------------ setup


def build_setup(config: str, batch_size: int, folder: Path, seed: int = 0, with_model: bool = True) -> Path:
    """Synthetic world + a training manifest with one local pair per image + a saved model (unless not
    ``with_model``: a memory estimate builds the model on the meta device instead)."""
    spec = CONFIGS[config]
    world = generate_world(
        folder / "world",
        WorldConfig(n_pretrain=0, n_train=batch_size, n_test=2, min_objects=spec["min_objects"],
                    max_objects=spec["max_objects"], seed=seed),
    )
    records = read_manifest(world.train)
    for i, record in enumerate(records):
        obj = record["objects"][i % len(record["objects"])]
        record["local"] = {"sentence": obj["sentence"], "box": obj["box"], "score": 1.0, "source": "external"}
    manifest = folder / "train.jsonl"
    write_manifest(manifest, records)
    if not with_model:
        return folder
    texts = [r["caption"] for r in records] + [" ".join(vocabulary())]
    if config == "tiny":
        bundle = build_tiny_clip(texts, width=64, layers=4, projection_dim=64, image_size=64, patch_size=8,
                                 context_length=32, seed=seed)
        bundle.tokenizer.model_max_length = stretch_positions(bundle.model, keep=8, target=104)
    else:
        bundle = build_real_clip(config, seed)
    save_clip(bundle, folder / "model")
    return folder


# Real CLIP shapes (OpenAI's configs): vision (width, layers, heads, patch, px), text (width, layers, heads),
# projection.
ARCHS: dict[str, tuple[tuple[int, int, int, int, int], tuple[int, int, int], int]] = {
    "vit-b16": ((768, 12, 12, 16, 224), (512, 12, 8), 512),
    "vit-l14": ((1024, 24, 16, 14, 224), (768, 12, 12), 768),
}


def build_real_clip(arch: str, seed: int, context: int = 248) -> ClipBundle:
    """Random weights at a real CLIP's shapes, OpenAI's BPE, 77 text positions stretched to ``context``."""
    tokenizer = real_clip_tokenizer(77)
    if tokenizer is None:
        raise SystemExit(f"{arch} shapes need open_clip_torch installed (for the CLIP BPE vocabulary)")
    (v_width, v_layers, v_heads, patch, pixels), (t_width, t_layers, t_heads), projection = ARCHS[arch]
    config = CLIPConfig(
        text_config={
            "vocab_size": 49408, "hidden_size": t_width, "intermediate_size": 4 * t_width,
            "num_hidden_layers": t_layers, "num_attention_heads": t_heads, "max_position_embeddings": 77,
            "hidden_act": "quick_gelu", "bos_token_id": tokenizer.bos_token_id,
            "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "hidden_size": v_width, "intermediate_size": 4 * v_width, "num_hidden_layers": v_layers,
            "num_attention_heads": v_heads, "image_size": pixels, "patch_size": patch, "hidden_act": "quick_gelu",
        },
        projection_dim=projection,
    )
    torch.manual_seed(seed)
    model = CLIPModel(config)
    if context > 77:
        tokenizer.model_max_length = stretch_positions(model, keep=20, target=context)
    return ClipBundle(model, tokenizer, CLIPImageProcessor())  # defaults = OpenAI's 224 px pipeline


@dataclass
class Loaded:
    bundle: ClipBundle
    ours: dict[str, torch.Tensor]
    ref: dict[str, Any]


def load_setup(folder: Path, batch_size: int, device: str, bundle: ClipBundle | None = None) -> Loaded:
    """The same examples as our Collate batch and as a reference-style batch (same pixels), for the saved
    model or ``bundle``."""
    bundle = bundle or load_clip(str(folder / "model"))
    examples = load_examples(folder / "train.jsonl", need_local=True)[:batch_size]
    dataset = TrainDataset(examples, bundle, need_local=True)
    ours = dataset.to_device(Collate(pad_id=bundle.tokenizer.pad_token_id)([dataset[i] for i in range(len(examples))]),
                             "cpu")
    b = len(examples)
    context = bundle.max_text_len
    tok = bundle.tokenizer

    def padded(texts: list[str]) -> torch.Tensor:  # the reference's loader pads every text to the context
        return tok(texts, padding="max_length", max_length=context, truncation=True, return_tensors="pt")["input_ids"]

    sizes = []
    for ex in examples:
        from PIL import Image

        with Image.open(ex.image) as image:
            sizes.append(image.size)
    ref = {
        "org_pixels": ours["pixel_values"][:b],
        "seg_pixels": ours["pixel_values"][b:],
        "org_ids": padded([ex.caption for ex in examples]),
        "seg_ids": padded([ex.sentence for ex in examples]),
        "captions": [ex.caption for ex in examples],
        "sentences": [ex.sentence for ex in examples],
        "boxes": [ex.box for ex in examples],
        "sizes": sizes,
    }
    ours = {k: v.to(device) for k, v in ours.items()}
    ref = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in ref.items()}
    bundle.model.to(device)
    return Loaded(bundle, ours, ref)


# ------------------------------------------------------------------- the reference-style step


def _clip_ce(logits: torch.Tensor) -> torch.Tensor:
    target = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _box_patch_indices(box, size, processor, patch_size: int) -> list[int]:
    """Token indices (CLS at 0) of the patch cells a box touches, built cell by cell in Python."""
    sx, sy, ox, oy, cw, ch = crop_geometry(processor, *size)
    x1, x2 = max(box[0] * sx - ox, 0.0), min(box[2] * sx - ox, float(cw))
    y1, y2 = max(box[1] * sy - oy, 0.0), min(box[3] * sy - oy, float(ch))
    cols = cw // patch_size
    c1, c2 = int(x1 // patch_size), min(-int(-x2 // patch_size), cols)
    r1, r2 = int(y1 // patch_size), min(-int(-y2 // patch_size), ch // patch_size)
    indices = []
    for row in range(r1, r2):
        for col in range(c1, c2):
            indices.append(row * cols + col + 1)
    return indices


def _split_dot_span(caption: str, sentence: str, tok, context: int, off_by_one: bool) -> tuple[int, int]:
    """The reference's span search: '.'-split pieces, else ``str.find``; prefix tokenised alone.

    ``len(tokens(prefix))`` counts BOS + prefix + EOS; the sentence starts right after the
    prefix, i.e. one earlier: the public code does not subtract the EOS (``off_by_one``).
    A span past the context pools the last tokens instead (the reference's silent fallback).
    """
    pieces = [p.strip() for p in caption.split(".") if p.strip()]
    prefix = None
    for k, piece in enumerate(pieces):
        if piece == sentence:
            prefix = ". ".join(pieces[:k]) + (". " if k else "")
            break
    if prefix is None:
        where = caption.find(sentence)
        if where < 0:
            raise ValueError(f"sentence not in caption: {sentence!r}")
        prefix = caption[:where]
    length = len(tok(sentence)["input_ids"]) - 2
    start = len(tok(prefix)["input_ids"]) - (0 if off_by_one else 1)
    if start >= context:
        end = context - 1
        start = max(1, end - length)
    else:
        end = min(start + length, context - 1)
    return start, end


def reference_loss(model: CLIPModel, rb: dict[str, Any], tok, processor, off_by_one: bool) -> tuple[torch.Tensor, dict]:
    b = rb["org_pixels"].shape[0]
    pixels = torch.cat([rb["org_pixels"], rb["seg_pixels"]])
    ids = torch.cat([rb["org_ids"], rb["seg_ids"]])
    # Full model forward for the embeddings, then each tower again for the token states.
    full = model(input_ids=ids, pixel_values=pixels, output_hidden_states=True)
    vision = model.vision_model(pixel_values=pixels, output_hidden_states=True)
    text = model.text_model(input_ids=ids, output_hidden_states=True)
    image_emb, text_emb = full.image_embeds, full.text_embeds  # L2-normalised by CLIPModel
    scale = model.logit_scale.exp()
    loss_global = _clip_ce(scale * image_emb[:b] @ text_emb[:b].T)
    loss_local = _clip_ce(scale * image_emb[b:] @ text_emb[b:].T)

    patch_tokens = vision.hidden_states[-1][:b]
    patch_size = model.config.vision_config.patch_size
    pooled = []
    for i in range(b):
        indices = _box_patch_indices(rb["boxes"][i], rb["sizes"][i], processor, patch_size)
        pooled.append(patch_tokens[i : i + 1, indices, :].mean(dim=1))
    pooled_image = model.visual_projection(model.vision_model.post_layernorm(torch.cat(pooled)))
    sim = F.normalize(pooled_image, dim=-1) @ image_emb[b:].T
    loss_patch = F.mse_loss(torch.diag(sim), torch.ones(b, device=sim.device))

    token_states = text.hidden_states[-1][:b]
    context = ids.shape[1]
    pooled = []
    for i in range(b):
        caption, sentence = rb["captions"][i], rb["sentences"][i]
        # Re-tokenised per sample inside the step, as the reference does (its token lists and an
        # unused prefix-based start index), then the span search tokenises prefix and sentence again.
        caption_ids = tok(caption)["input_ids"]
        sentence_ids = tok(sentence)["input_ids"]
        tok.convert_ids_to_tokens(caption_ids)
        tok.convert_ids_to_tokens(sentence_ids)
        tok(caption[: caption.find(sentence)])
        start, end = _split_dot_span(caption, sentence, tok, context, off_by_one)
        pooled.append(token_states[i : i + 1, start:end, :].mean(dim=1))
    pooled_text = model.text_projection(model.text_model.final_layer_norm(torch.cat(pooled)))
    sim = F.normalize(pooled_text, dim=-1) @ text_emb[b:].T
    loss_text = F.mse_loss(torch.diag(sim), torch.ones(b, device=sim.device))

    loss = WEIGHTS.global_ * loss_global + WEIGHTS.local * loss_local + WEIGHTS.tsl * (loss_patch + loss_text)
    terms = {"global": loss_global, "local": loss_local, "tsl_image": loss_patch, "tsl_text": loss_text}
    return loss, {k: v.detach() for k, v in terms.items()}


# ---------------------------------------------------------------------------------- stepping


def make_optimizer(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)


def variant_loss(variant: str, loaded: Loaded, model: CLIPModel, off_by_one: bool) -> tuple[torch.Tensor, dict]:
    if variant == "ours":
        loss, logs = training_step(model, loaded.ours, "goal", WEIGHTS)
        terms = {k.removeprefix("loss_"): v for k, v in logs.items() if k.startswith("loss_")}
        return loss, terms
    return reference_loss(model, loaded.ref, loaded.bundle.tokenizer, loaded.bundle.image_processor, off_by_one)


def grad_signature(model: torch.nn.Module) -> list[list[float]]:
    """Per parameter tensor: gradient norm and its projection on a fixed random direction.

    Two workers hold their gradients in different processes; the projections let the parent
    estimate ``||g_ours - g_ref|| / ||g_ref||`` without shipping the gradients
    (E[((g1 - g2) . r)^2] = ||g1 - g2||^2 for r ~ N(0, I)).
    """
    out = []
    for index, param in enumerate(model.parameters()):
        if param.grad is None:
            out.append([0.0, 0.0])
            continue
        g = param.grad.detach().float().flatten()
        gen = torch.Generator(device="cpu").manual_seed(1000 + index)
        r = torch.randn(g.numel(), generator=gen).to(g.device)
        out.append([float(g.norm()), float(g @ r)])
    return out


def worker(args: argparse.Namespace) -> None:
    """One variant in its own process (so its peak memory is its own), driven over stdin/stdout.

    Commands (one JSON line each): ``check`` = the first step, untimed: loss, loss terms and a
    gradient signature before the optimizer step; ``step`` = one timed step; ``quit``.
    """
    import gc

    def send(obj: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    device = args.device
    loaded = load_setup(Path(args.setup), args.batch_size, device)
    model = loaded.bundle.model
    model.train()
    opt = make_optimizer(model)
    send({"ready": True, "caption_len": loaded.ours["caption_ids"].shape[1],
          "sentence_len": loaded.ours["sentence_ids"].shape[1], "context": loaded.bundle.max_text_len,
          "batch": loaded.ours["caption_ids"].shape[0],
          "all_tsl_valid": bool(loaded.ours["text_tsl_valid"].all() and loaded.ours["image_tsl_valid"].all()),
          "param_bytes": sum(p.numel() * p.element_size() for p in model.parameters())})
    before = None
    for line in sys.stdin:
        op = json.loads(line)["op"]
        if op == "check":
            gc.collect()
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats(device)
            before = memory_now(device)
            loss, terms = variant_loss(args.worker, loaded, model, args.reference_off_by_one)
            loss.backward()
            signature = grad_signature(model)
            opt.step()
            opt.zero_grad(set_to_none=True)
            send({"loss": float(loss.detach()), "terms": {k: float(v) for k, v in terms.items()},
                  "grad": signature})
        elif op == "step":
            synchronize(device)
            tick = time.perf_counter()
            loss, _ = variant_loss(args.worker, loaded, model, args.reference_off_by_one)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            float(loss.detach())
            synchronize(device)
            send({"seconds": time.perf_counter() - tick})
        elif op == "quit":
            synchronize(device)
            send({"before": before, "peak": memory_peak(device)})
            return


class Worker(WorkerProcess):
    """A worker process running this script's ``--worker VARIANT`` mode."""

    def __init__(self, args: argparse.Namespace, setup: Path, variant: str):
        cmd = [sys.executable, __file__, "--config", args.config, "--batch-size", str(args.batch_size),
               "--device", args.device, "--setup", str(setup), "--worker", variant,
               "--threads", str(args.threads or torch.get_num_threads())]
        if args.reference_off_by_one:
            cmd.append("--reference-off-by-one")
        super().__init__(cmd, variant)


def grad_rel_diff(ours: list[list[float]], ref: list[list[float]]) -> float:
    num = sum((a[1] - b[1]) ** 2 for a, b in zip(ours, ref))
    den = sum(b[1] ** 2 for b in ref)
    return (num / den) ** 0.5 if den > 0 else float("nan")


# -------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps per variant after the check step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--reference-off-by-one", action="store_true",
                        help="reproduce the public span search's off-by-one (losses then differ)")
    parser.add_argument("--setup", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", choices=("ours", "reference"), default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    spec = CONFIGS[args.config]
    args.batch_size = args.batch_size or spec["batch"]
    steps = args.steps or spec["steps"]
    warmup = spec["warmup"] if args.warmup is None else args.warmup
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        worker(args)
        return

    started = time.perf_counter()
    facts = machine_facts(args.device)
    print_facts(facts)
    workers: dict[str, Worker] = {}
    with tempfile.TemporaryDirectory(prefix="goalclip-bench-") as tmp:
        setup = build_setup(args.config, args.batch_size, Path(tmp))
        cfg = CLIPConfig.from_pretrained(setup / "model")
        try:
            workers = {v: Worker(args, setup, v) for v in ("reference", "ours")}
            info = {v: w.receive() for v, w in workers.items()}
            shape = info["ours"]
            b = shape["batch"]
            print(f"config {args.config}: vision {cfg.vision_config.hidden_size}x{cfg.vision_config.num_hidden_layers} "
                  f"patch {cfg.vision_config.patch_size} @ {cfg.vision_config.image_size}px, text "
                  f"{cfg.text_config.hidden_size}x{cfg.text_config.num_hidden_layers} context {shape['context']}, "
                  f"vocab {cfg.text_config.vocab_size}; batch {b}; captions padded to {shape['caption_len']} (ours) "
                  f"/ {shape['context']} (reference), sentences to {shape['sentence_len']} / {shape['context']}; "
                  "one worker process per variant, same saved weights, same batch", flush=True)

            checks = {v: workers[v].ask("check") for v in ("reference", "ours")}
            loss_o, loss_r = checks["ours"]["loss"], checks["reference"]["loss"]
            diff = abs(loss_o - loss_r)
            grad_diff = grad_rel_diff(checks["ours"]["grad"], checks["reference"]["grad"])
            span_mode = "reproduced (start one token late)" if args.reference_off_by_one else "fixed (exact start)"
            print(f"check (first step, same weights, same batch): loss ours {loss_o:.6f} vs reference {loss_r:.6f} "
                  f"(|diff| {diff:.1e}: {'MATCH' if diff <= 1e-4 else 'DIFFER'} at 1e-4); gradient relative "
                  f"difference ~{grad_diff:.1e}; all TSL terms valid: {shape['all_tsl_valid']}; reference span "
                  f"off-by-one: {span_mode}")
            print("  terms (ours, reference): " + ", ".join(
                f"{k} ({checks['ours']['terms'][k]:.6f}, {v:.6f})" for k, v in checks["reference"]["terms"].items()),
                flush=True)
            print(f"timing: the check step + {warmup} warm-up step(s) each untimed, then {steps} interleaved "
                  "steps each (timed inside the workers)", flush=True)
            timer = interleaved({v: (lambda w=w: w.ask("step")["seconds"]) for v, w in workers.items()},
                                rounds=steps, warmup=warmup, self_timed=True)
            memory = {v: w.ask("quit") for v, w in workers.items()}
        finally:
            for w in workers.values():
                w.close()

    t_ref, t_ours = timer.median("reference"), timer.median("ours")
    mib = 2**20
    kind = "peak CUDA allocated" if args.device.startswith("cuda") else "peak RSS"
    delta = {v: memory[v]["peak"] - memory[v]["before"] for v in memory}
    rows = []
    for name, label in (("reference", "reference-style step"), ("ours", "goalclip `training_step`")):
        lo, hi = timer.spread(name)
        rows.append([label, f"{timer.median(name) * 1e3:.1f}", f"{lo * 1e3:.0f}-{hi * 1e3:.0f}",
                     f"{b / timer.median(name):.2f}", f"{delta[name] / mib:.0f}"])
    ratio_mem = f"{delta['reference'] / delta['ours']:.2f}x" if delta["ours"] > 0 else "n/a"
    rows.append(["**ratio reference / ours (of medians)**", f"**{t_ref / t_ours:.2f}x**", "",
                 f"**{t_ref / t_ours:.2f}x**", f"**{ratio_mem}**"])
    rows.append(["ratio, median of per-round ratios", f"{timer.paired_ratio('reference', 'ours'):.2f}x", "", "", ""])
    load = ", ".join(str(x) for x in facts["load_avg_1_5_15"])
    param_bytes = shape["param_bytes"]
    print()
    print(f"### Training step, `--config {args.config}` (batch {b}, {steps} timed steps each, {args.device}, "
          f"torch {facts['torch']}, nproc {facts['nproc']}, {facts['torch_threads']} threads, load avg {load})")
    print()
    print(markdown_table(["variant", "median step ms", "min-max ms", "samples/s", f"{kind} delta MiB"], rows))
    print()
    print(f"Loss check: ours {loss_o:.6f}, reference {loss_r:.6f}, |diff| {diff:.1e}; gradient relative "
          f"difference ~{grad_diff:.1e}. Reference span off-by-one {span_mode}.")
    print(f"Memory: {kind} of each variant's own worker process over all its steps minus its level before the "
          "first step; it includes the gradients and the AdamW state, the same for both "
          f"(3 x {param_bytes / mib:.0f} MiB of fp32 parameters = {3 * param_bytes / mib:.0f} MiB); the rest is "
          "activations and temporaries.")
    print(f"Wall time of this script: {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
