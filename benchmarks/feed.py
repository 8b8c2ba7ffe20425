"""How fast the CPU side can feed the towers: mining (FLISM) and the training data path, towers stubbed.

On a GPU, goalclip's speed is set by how fast the CPU decodes, proposes, crops and preprocesses
images. This script replaces every model forward by a no-op that returns the right shapes (a cheap
function of its input, so different crops still get different embeddings) and keeps everything
else real: JPEG files on disk, ``goalclip mine`` itself (loader workers, the real FLISM proposer
with the detector's own image processor, cropping, the matcher's own image processor, sentence
splitting, the real CLIP tokenizer) and the trainer's ``TrainDataset`` + ``Collate`` in a
DataLoader. For each stage it prints:

- main-process CPU ms per image (``time.process_time`` of this process, all its threads);
- worker CPU ms per image (CPU time of the reaped worker processes) and, from it, images/s per
  worker core;
- measured images/s with 1 and 2 workers on this machine;
- the ceiling this implies on a 16-core machine: min(1000 / main ms, 15 cores x per-core rate)
  (one core for the main process), and the DOCCI (15k images) FLISM minutes at that ceiling.

Shapes (``--shapes real``): 1024 x 768 JPEGs; mining with a ViT-L/14-336-sized matcher (336 px
image processor, 77-token context), a YOLOS-sized detector input (512 px short side) giving 10
boxes + the 5 FLISM grid boxes = 15 regions per image, 6 sentences per caption, 192 images in 6 batches
(one-time costs such as forking workers and making shared buffers spread as in a long run); training at
ViT-B/16 shapes (224 px, 248-token context), batch 256, one local crop per sample.
``--shapes tiny`` runs the same at toy sizes in seconds (tests/benchmarks/test_feed_smoke.py).

    python benchmarks/feed.py                  # real shapes, CPU only (the towers are no-ops)
    python benchmarks/feed.py --shapes tiny
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
import transformers
from _common import machine_facts, markdown_table, print_facts, real_clip_tokenizer
from lism_vs_flism import SENTENCES
from PIL import Image, ImageDraw
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.yolos.modeling_yolos import YolosObjectDetectionOutput

import goalclip.mining.mine as mine_module
from goalclip.core.images import crop_to_box, load_rgb
from goalclip.core.manifest import write_manifest
from goalclip.mining.mine import MineConfig, mine
from goalclip.models.clip import ClipBundle, save_clip
from goalclip.training.data import Collate, TrainDataset, load_examples

SHAPES: dict[str, dict[str, Any]] = {
    "real": {"image": (1024, 768), "mine_images": 192, "mine_batch": 32, "matcher": (336, 14, 77),
             "detector_size": {"shortest_edge": 512, "longest_edge": 1333}, "detector_boxes": 10,
             "trainer": (224, 16, 248), "train_batch": 256, "train_batches": 2},
    "tiny": {"image": (96, 64), "mine_images": 4, "mine_batch": 2, "matcher": (32, 8, 32),
             "detector_size": {"shortest_edge": 64, "longest_edge": 96}, "detector_boxes": 3,
             "trainer": (32, 8, 32), "train_batch": 4, "train_batches": 2},
}
CORES = 16
TARGETS = {"mine_main_ms": 5.0, "mine_ceiling": 50.0, "train_per_core": 100.0}
DOCCI_IMAGES = 15_000


# ------------------------------------------------------------------------------------ data


def make_jpegs(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[dict[str, Any]]:
    """``count`` photo-like JPEGs (smooth gradients, shapes, mild noise) with a six-sentence caption,
    and a local pair (the sentence about the left half, its box) for training."""
    generator = torch.Generator().manual_seed(seed)
    width, height = size
    (folder / "images").mkdir(parents=True, exist_ok=True)
    ramp = torch.linspace(0, 255, width).expand(height, width)
    records = []
    for i in range(count):
        base = torch.stack([ramp, ramp.flip(1), torch.full_like(ramp, 40.0 * (i % 6))], dim=-1)
        noise = torch.randint(-12, 13, (height, width, 3), generator=generator)
        image = Image.fromarray((base + noise).clamp(0, 255).to(torch.uint8).numpy())
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = (int(v) for v in torch.randint(0, min(width, height) // 2, (2,), generator=generator))
            colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
            draw.ellipse((x, y, x + width // 3, y + height // 3), fill=colour)
        path = folder / "images" / f"{i}.jpg"
        image.save(path, quality=90)
        box = [width * 0.05, height * 0.1, width * 0.55, height * 0.8]
        records.append({"id": f"feed{i}", "image": str(path), "caption": " ".join(SENTENCES),
                        "local": {"sentence": SENTENCES[0], "box": box}})
    return records


# ------------------------------------------------------------------------------- no-op towers


class NoOpVision(torch.nn.Module):
    """A vision tower that costs almost nothing: a sparse grid of its input pixels as the pooled output
    (it reads a few values of each crop: a real forward, or the copy to a GPU, would read them all)."""

    def __init__(self, tokens: int, hidden: int):
        super().__init__()
        self.tokens, self.hidden = tokens, hidden
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # the device and dtype callers look up

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> BaseModelOutputWithPooling:
        step = max(1, pixel_values.shape[-1] // 4)
        pooled = pixel_values[:, :, ::step, ::step].float().flatten(1)[:, : self.hidden]
        states = pooled.new_zeros(()).expand(len(pixel_values), self.tokens, self.hidden)
        return BaseModelOutputWithPooling(last_hidden_state=states, pooler_output=pooled)


class NoOpText(torch.nn.Module):
    """A text tower that costs almost nothing: a bag of hashed token ids as the pooled output."""

    def __init__(self, hidden: int):
        super().__init__()
        self.hidden = hidden

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                **_: Any) -> BaseModelOutputWithPooling:
        mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
        pooled = torch.zeros(len(input_ids), self.hidden).scatter_add_(1, input_ids % self.hidden, mask.float())
        return BaseModelOutputWithPooling(last_hidden_state=pooled[:, None].expand(-1, input_ids.shape[1], -1),
                                          pooler_output=pooled)


class NoOpDetector(torch.nn.Module):
    """YOLOS-shaped outputs without the forward: ``boxes`` confident detections (fixed per query)."""

    def __init__(self, boxes: int, queries: int = 100, labels: int = 91):
        super().__init__()
        self.boxes, self.queries, self.labels = boxes, queries, labels
        self.anchor = torch.nn.Parameter(torch.zeros(()))
        generator = torch.Generator().manual_seed(0)
        centres = 0.25 + 0.5 * torch.rand(queries, 2, generator=generator)
        sides = 0.15 + 0.3 * torch.rand(queries, 2, generator=generator)
        self.register_buffer("pred", torch.cat([centres, sides], dim=1))

    def forward(self, pixel_values: torch.Tensor, **_: Any) -> YolosObjectDetectionOutput:
        logits = torch.zeros(len(pixel_values), self.queries, self.labels + 1)
        logits[:, : self.boxes, 0] = 8.0
        return YolosObjectDetectionOutput(logits=logits, pred_boxes=self.pred.expand(len(pixel_values), -1, -1))


def build_matcher(folder: Path, image_size: int, patch: int, context: int) -> Path:
    """A CLIP folder with real processors (the given image size, OpenAI's BPE when available) and tiny towers."""
    from transformers import CLIPConfig, CLIPModel

    from goalclip.demo.tiny import train_tokenizer

    tokenizer = real_clip_tokenizer(context) or train_tokenizer(SENTENCES)
    tokenizer.model_max_length = context
    small = {"hidden_size": 48, "intermediate_size": 48, "num_hidden_layers": 1, "num_attention_heads": 1}
    config = CLIPConfig(
        text_config=dict(small, max_position_embeddings=context, vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(small, image_size=image_size, patch_size=patch), projection_dim=32)
    processor_class = getattr(transformers, "CLIPImageProcessorPil", transformers.CLIPImageProcessor)
    processor = processor_class(size={"shortest_edge": image_size}, crop_size={"height": image_size,
                                                                                "width": image_size})
    save_clip(ClipBundle(CLIPModel(config), tokenizer, processor), folder)
    return folder


def stub_towers(bundle: ClipBundle) -> ClipBundle:
    """Replace both towers of a loaded bundle by no-ops (the projections stay: they are tiny)."""
    cfg = bundle.model.config
    bundle.model.vision_model = NoOpVision(bundle.patch_grid**2 + 1, cfg.vision_config.hidden_size)
    bundle.model.text_model = NoOpText(cfg.text_config.hidden_size)
    return bundle


# ------------------------------------------------------------------------------- measuring


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def cpu_meter():
    """Main-process and reaped-worker CPU seconds spent inside the block (``start`` can be moved later)."""
    meter = {}

    def start() -> None:
        meter.update(main=time.process_time(), children=_children_cpu(), wall=time.perf_counter())

    start()
    meter["restart"] = start
    yield meter
    meter["main"] = time.process_time() - meter["main"]
    meter["children"] = _children_cpu() - meter["children"]
    meter["wall"] = time.perf_counter() - meter["wall"]


def mine_once(models: dict[str, Path], data: Path, out: Path, workers: int, shape: dict[str, Any]) -> dict:
    """One ``goalclip mine --regions flism`` run with no-op towers; CPU counted from the end of model loading."""
    real_load = mine_module.load_clip
    detector = NoOpDetector(shape["detector_boxes"])

    with cpu_meter() as meter:
        def load_clip(source: str, **kwargs: Any) -> ClipBundle:
            return stub_towers(real_load(source, **kwargs))

        def load_detector(*args: Any, **kwargs: Any) -> NoOpDetector:
            meter["restart"]()  # the detector is the last model loaded: processing starts now
            return detector

        matched = []  # main-process CPU seconds and images at the end of each batch

        def match_batch(*args: Any, **kwargs: Any) -> Any:
            mined = real_match(*args, **kwargs)
            matched.append((time.process_time(), len(mined.results)))
            return mined

        real_match = mine_module.match_batch
        with mock.patch.object(mine_module, "load_clip", load_clip), \
                mock.patch.object(mine_module, "match_batch", match_batch), \
                mock.patch.object(transformers.AutoModelForObjectDetection, "from_pretrained", load_detector):
            summary = mine(MineConfig(model=str(models["clip"]), data=str(data), out=str(out), regions="flism",
                                      detector=str(models["yolos"]), batch_size=shape["mine_batch"],
                                      num_workers=workers, progress=False))
    images = summary["images"]
    # steady state: from the end of the second batch (workers forked, shared buffers made) to the end of the last
    steady = matched[1:] if len(matched) > 2 else matched
    steady_ms = 1e3 * (steady[-1][0] - steady[0][0]) / max(sum(n for _, n in steady[1:]), 1)
    # a run's one-time main-process cost (forking workers, making the shared buffers, the last writes), spread
    # over DOCCI's images: what a long run pays per image
    one_time_ms = max(1e3 * meter["main"] - steady_ms * images, 0.0)
    return {"workers": workers, "images": images, "main_ms": 1e3 * meter["main"] / images,
            "main_steady_ms": steady_ms, "main_docci_ms": steady_ms + one_time_ms / DOCCI_IMAGES,
            "worker_ms": 1e3 * meter["children"] / images,
            "images_per_s": summary["images_per_s"], "pairs": summary["pairs"], "out": out.read_text()}


def train_once(bundle: ClipBundle, manifest: Path, workers: int, shape: dict[str, Any]) -> dict:
    """Iterate the training DataLoader (``TrainDataset`` + ``Collate``, as ``goalclip train`` builds it). Its
    batches carry uint8 pixels; the trainer normalises them on the model's device (``TrainDataset.to_device``),
    a GPU's work in a real run, so it is not counted here."""
    examples = load_examples(manifest, need_local=True)
    dataset = TrainDataset(examples, bundle, need_local=True)
    sampler = [list(range(start, start + shape["train_batch"]))
               for start in range(0, len(examples), shape["train_batch"])]
    with cpu_meter() as meter:
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                             collate_fn=Collate(pad_id=bundle.tokenizer.pad_token_id))
        checksum = sum(float(batch["pixel_values"].double().sum()) for batch in loader)
    samples = len(examples)
    return {"workers": workers, "images": samples, "main_ms": 1e3 * meter["main"] / samples,
            "worker_ms": 1e3 * meter["children"] / samples, "images_per_s": samples / meter["wall"],
            "checksum": checksum}


def pixel_check(bundle: ClipBundle, manifest: Path, samples: int = 8) -> dict[str, float]:
    """Largest difference, in levels of 255, between the training samples' pixels (global view and crop) and
    the model's own image processor's on the same decoded image and box."""
    examples = load_examples(manifest, need_local=True)[:samples]
    dataset = TrainDataset(examples, bundle, need_local=True)
    processor = bundle.image_processor
    levels = torch.tensor(processor.image_std)[:, None, None] / processor.rescale_factor
    worst = {"global": 0.0, "crop": 0.0}
    for index, example in enumerate(examples):
        item = dataset[index]
        image = load_rgb(example.image)
        expected = processor(images=[image, crop_to_box(image, example.box)], return_tensors="pt")["pixel_values"]
        for view, ours, theirs in (("global", dataset.normalise(item["pixels"]), expected[0]),
                                   ("crop", dataset.normalise(item["pairs"][0]["crop_pixels"]), expected[1])):
            worst[view] = max(worst[view], float(((ours - theirs).abs() * levels).max()))
    return worst


def ceiling(main_ms: float, worker_ms: float, cores: int = CORES) -> float:
    """Images/s a ``cores``-core machine can feed: one core runs the main process, the rest run workers."""
    return min(1e3 / max(main_ms, 1e-9), (cores - 1) * 1e3 / max(worker_ms, 1e-9))


def summarise(runs: list[dict]) -> dict[str, float]:
    """Per-image CPU costs averaged over the runs with workers (they split the same work the same way),
    and the measured rate of every run."""
    pooled = [r for r in runs if r["workers"]] or runs  # with 0 workers the main process does everything
    main_ms = sum(r["main_ms"] for r in pooled) / len(pooled)
    steady = ({key: sum(r[key] for r in pooled) / len(pooled) for key in ("main_steady_ms", "main_docci_ms")}
              if "main_steady_ms" in runs[0] else {})  # mining runs only
    worker_ms = sum(r["worker_ms"] for r in pooled) / len(pooled)
    return {"main_ms": main_ms, **steady, "worker_ms": worker_ms, "per_core": 1e3 / max(worker_ms, 1e-9),
            **{f"measured_{r['workers']}": r["images_per_s"] for r in runs},
            "ceiling_16": ceiling(main_ms, worker_ms)}


def report(result: dict[str, Any], workers: list[int], shape: dict[str, Any]) -> str:
    """The markdown table, the targets and the DOCCI projection."""
    names = {"mine": "mine (FLISM, 15 regions)", "train": f"train (batch {shape['train_batch']}, 1 crop)"}
    rows = [[names[stage], f"{s['main_ms']:.1f}", f"{s['worker_ms']:.1f}", f"{s['per_core']:.1f}",
             *(f"{s[f'measured_{w}']:.1f}" for w in workers), f"{s['ceiling_16']:.0f}"]
            for stage, s in result.items() if stage in names]
    facts = result["machine"]
    load = ", ".join(str(x) for x in facts["load_avg_1_5_15"])
    lines = [f"\n### Feed, `--shapes {result['shapes']}`, towers no-ops ({facts['nproc']} cores, "
             f"load avg {load} at the start)\n",
             markdown_table(["stage", "main CPU ms/img", "worker CPU ms/img", "img/s per worker core",
                             *(f"measured img/s, {w} worker(s)" for w in workers), f"ceiling img/s, {CORES} cores"],
                            rows), ""]
    if "mine" in result:
        mine_s = result["mine"]
        result["docci_flism_minutes_16_cores"] = DOCCI_IMAGES / mine_s["ceiling_16"] / 60
        lines.append(f"Targets: mining main-process CPU <= {TARGETS['mine_main_ms']:.0f} ms/img (measured "
                     f"{mine_s['main_ms']:.1f} over this {shape['mine_images']}-image run; "
                     f"{mine_s['main_steady_ms']:.1f} from the end of the second batch on, without the one-time "
                     f"costs of starting and ending a run; {mine_s['main_docci_ms']:.1f} projected over DOCCI's "
                     f"{DOCCI_IMAGES} images, those costs spread over them); "
                     f"FLISM ceiling >= {TARGETS['mine_ceiling']:.0f} img/s on {CORES} cores "
                     f"(measured {mine_s['ceiling_16']:.0f}). DOCCI ({DOCCI_IMAGES} images) FLISM at that ceiling: "
                     f"{result['docci_flism_minutes_16_cores']:.1f} min (if the GPU keeps up). Mined output identical "
                     f"across worker counts: {result['mine_outputs_equal']}.")
    if "train" in result:
        lines.append(f"Target: training >= {TARGETS['train_per_core']:.0f} samples/s per worker core (measured "
                     f"{result['train']['per_core']:.1f}). Largest difference from the model's image processor, "
                     f"levels of 255: global view {result['train_pixel_levels']['global']:.0f}, "
                     f"crop {result['train_pixel_levels']['crop']:.0f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="real")
    parser.add_argument("--workers", default="1,2", help="loader worker counts to run (comma-separated)")
    parser.add_argument("--stages", default="mine,train", help="which stages to run (comma-separated)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    shape = SHAPES[args.shapes]
    stages = args.stages.split(",")
    torch.set_num_threads(1)  # the main process of a feed run is one core; workers use one thread each anyway
    facts = machine_facts("cpu")
    print_facts(facts)
    workers = [int(w) for w in args.workers.split(",")]
    result: dict[str, Any] = {"shapes": args.shapes, "machine": facts}
    with tempfile.TemporaryDirectory(prefix="goalclip-feed-") as tmp:
        work = Path(tmp)
        count = max(shape["mine_images"], shape["train_batch"] * shape["train_batches"])
        records = make_jpegs(work / "data", count, shape["image"])
        mine_data = work / "mine.jsonl"
        captions = [{k: r[k] for k in ("id", "image", "caption")} for r in records[: shape["mine_images"]]]
        write_manifest(mine_data, captions)
        train_data = work / "train.jsonl"
        write_manifest(train_data, records[: shape["train_batch"] * shape["train_batches"]])
        models = {"clip": build_matcher(work / "matcher", *shape["matcher"]), "yolos": work / "yolos"}
        transformers.YolosImageProcessor(size=shape["detector_size"]).save_pretrained(models["yolos"])
        if "mine" in stages:
            mining = [mine_once(models, mine_data, work / f"mined-{w}.jsonl", w, shape) for w in workers]
            for run in mining:
                print(f"mine, {run['workers']} worker(s): {json.dumps({k: v for k, v in run.items() if k != 'out'})}",
                      flush=True)
            result["mine"] = summarise(mining)
            result["mine_outputs_equal"] = len({run["out"] for run in mining}) == 1
        if "train" in stages:
            trainer = stub_towers(mine_module.load_clip(str(build_matcher(work / "trainer", *shape["trainer"]))))
            training = [train_once(trainer, train_data, w, shape) for w in workers]
            for run in training:
                print(f"train, {run['workers']} worker(s): {json.dumps(run)}", flush=True)
            result["train"] = summarise(training)
            result["train_pixel_levels"] = pixel_check(trainer, train_data)
    print(report(result, workers, shape))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
