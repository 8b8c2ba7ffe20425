"""Preprocessing time of LISM (GOAL) vs FLISM (FAST-GOAL) on the same images (FAST-GOAL Table V).

Both methods run through ``goalclip mine`` itself (``goalclip.mining.mine.mine``: the real region
proposers, decoding, cropping, the CLIP matcher, the writer), one after the other on the same
generated images, and the per-stage wall seconds of the mining summary are printed side by side
with the LISM/FLISM ratio.

Shapes (random weights: time depends on shapes, not on what the weights learned):

- ``real``: matcher CLIP ViT-L/14-336 (the GOAL authors' matcher; vision 1024 wide x 24 layers,
  patch 14, 336 px; text 768 x 12, 77 positions; OpenAI's BPE when open_clip is installed);
  LISM = SAM ViT-H (what the GOAL authors' ``pipeline("mask-generation")`` loads by default,
  ``facebook/sam-vit-huge``: 1280 wide x 32 layers; 1024 px, a 32 x 32 point grid)
  + the whole image; FLISM = YOLOS-tiny shapes (192 wide x 12 layers, 3 heads, 100 detection
  tokens; images resized to a 512 px short side) + the 4 quadrants and the centre box.
  Images are 1536 x 1024, the size of DOCCI/DCI photos.
- ``tiny``: the test suite's tiny CLIP, SAM and YOLOS on 96 x 64 images, so a test can run the
  script in seconds and it cannot rot.

Random weights make SAM's predicted IoUs low, so few masks survive its quality filters and LISM
embeds fewer crops than with trained weights (with trained weights SAM keeps dozens of masks per
image, each one a CLIP forward): the ratio printed here understates LISM's embedding cost and is
a lower bound. The summary lists pairs and region sources so the reader can see the counts.

    python benchmarks/lism_vs_flism.py --shapes tiny
    python benchmarks/lism_vs_flism.py --shapes real --images 2 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
from _common import machine_facts, markdown_table, print_facts, real_clip_tokenizer
from PIL import Image, ImageDraw

from goalclip.core.manifest import write_manifest
from goalclip.mining.config import MineConfig
from goalclip.mining.mine import STAGES, mine

SENTENCES = [
    "A red car is parked on the left side of the street.",
    "Two people walk past a shop with a striped awning.",
    "A tall tree stands behind the bench in the middle.",
    "The sky above the buildings is pale blue with thin clouds.",
    "A bicycle leans against a lamp post near the corner.",
    "In the bottom right there is a small dog on a leash.",
]
IMAGE_SIZE = {"real": (1536, 1024), "tiny": (96, 64)}


def make_images(folder: Path, count: int, shapes: str, seed: int = 0) -> Path:
    """``count`` photos-sized pictures of coloured shapes on noise, with a six-sentence caption each."""
    generator = torch.Generator().manual_seed(seed)
    width, height = IMAGE_SIZE[shapes]
    (folder / "images").mkdir(parents=True, exist_ok=True)
    records = []
    for i in range(count):
        noise = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8).numpy()
        image = Image.fromarray(noise)
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x, y = (int(v) for v in torch.randint(0, min(width, height) // 2, (2,), generator=generator))
            w, h = width // 4, height // 4
            colour = tuple(int(v) for v in torch.randint(0, 256, (3,), generator=generator))
            draw.rectangle((x, y, x + w, y + h), fill=colour)
        path = folder / "images" / f"{i}.png"
        image.save(path)
        records.append({"id": f"bench{i}", "image": str(path), "caption": " ".join(SENTENCES)})
    write_manifest(folder / "captions.jsonl", records)
    return folder / "captions.jsonl"


def build_models(folder: Path, shapes: str) -> dict[str, str]:
    """Random-weight matcher, SAM and YOLOS saved as folders (what ``goalclip mine`` loads); reused when present."""
    paths = {name: folder / name for name in ("clip", "sam", "yolos")}
    if all((p / "config.json").is_file() for p in paths.values()):
        return {k: str(v) for k, v in paths.items()}
    torch.manual_seed(0)
    _build_clip(paths["clip"], shapes)
    _build_sam(paths["sam"], shapes)
    _build_yolos(paths["yolos"], shapes)
    return {k: str(v) for k, v in paths.items()}


def _build_clip(folder: Path, shapes: str) -> None:
    from goalclip.demo.tiny import build_tiny_clip, train_tokenizer
    from goalclip.models.clip import ClipBundle, save_clip

    if shapes == "tiny":
        bundle = build_tiny_clip(SENTENCES, image_size=32, patch_size=8, width=32, layers=2, heads=2,
                                 projection_dim=32, context_length=16)
        save_clip(bundle, folder)
        return
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    tokenizer = real_clip_tokenizer(77) or train_tokenizer(SENTENCES)
    tokenizer.model_max_length = 77
    text = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, hidden_act="quick_gelu")
    vision = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                  image_size=336, patch_size=14, hidden_act="quick_gelu")
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=768))
    processor = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})
    save_clip(ClipBundle(model, tokenizer, processor), folder)


def _build_sam(folder: Path, shapes: str) -> None:
    from transformers import SamConfig, SamImageProcessor, SamModel, SamProcessor

    if shapes == "real":  # ViT-H: the vision config of facebook/sam-vit-huge
        vision = {"hidden_size": 1280, "num_hidden_layers": 32, "num_attention_heads": 16,
                  "global_attn_indexes": [7, 15, 23, 31]}
        SamModel(SamConfig(vision_config=vision)).save_pretrained(folder)
        SamProcessor(SamImageProcessor()).save_pretrained(folder)
        return
    config = SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                           image_size=64, patch_size=16, window_size=2, global_attn_indexes=[1], num_pos_feats=16),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=16, mask_input_channels=8),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
    )
    SamModel(config).save_pretrained(folder)
    processor = SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                  mask_size={"longest_edge": 16}, mask_pad_size={"height": 16, "width": 16})
    SamProcessor(processor).save_pretrained(folder)


def _build_yolos(folder: Path, shapes: str) -> None:
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    if shapes == "real":
        config = YolosConfig(hidden_size=192, num_hidden_layers=12, num_attention_heads=3, intermediate_size=768,
                             image_size=[800, 1333], patch_size=16, num_detection_tokens=100)
        size = {"shortest_edge": 512, "longest_edge": 1333}
    else:
        config = YolosConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=[64, 96], patch_size=16, num_detection_tokens=8, num_labels=3)
        size = {"shortest_edge": 64, "longest_edge": 96}
    model = YolosForObjectDetection(config)
    with torch.no_grad():  # detection tokens start as zeros: make them differ, or every box is the same
        model.vit.embeddings.detection_tokens.normal_(std=1.0)
    model.save_pretrained(folder)
    YolosImageProcessor(size=size).save_pretrained(folder)


def run_method(method: str, models: dict[str, str], data: Path, out: Path, device: str, batch_size: int,
               num_workers: int = 0) -> dict:
    """Mine ``data`` with ``method`` (lism or flism) through ``goalclip mine``; returns its summary."""
    config = MineConfig(
        model=models["clip"], data=str(data), out=str(out), regions=method,
        sam=models["sam"] if method == "lism" else None, detector=models["yolos"] if method == "flism" else None,
        batch_size=batch_size, num_workers=num_workers, device=device, progress=False,
    )
    return mine(config)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", choices=("tiny", "real"), default="tiny", help="model and image shapes")
    parser.add_argument("--images", type=int, default=4, help="images mined by each method (default: 4)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per mining batch (default: all)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models-dir", type=Path, default=None,
                        help="keep the random-weight models here and reuse them on the next run (default: a temp dir)")
    parser.add_argument("--out", type=Path, default=None, help="also write the numbers as JSON")
    args = parser.parse_args(argv)
    facts = machine_facts(args.device)
    print_facts(facts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        models = build_models(args.models_dir or work / "models", args.shapes)
        data = make_images(work / "data", args.images, args.shapes)
        batch = args.batch_size or args.images
        summaries = {}
        for method in ("lism", "flism"):  # each printed when done: a long real-shape run still reports the first
            summaries[method] = run_method(method, models, data, work / f"{method}.jsonl", args.device, batch)
            print(f"{method}: stage seconds {json.dumps(summaries[method]['stage_seconds'])}", flush=True)
    rows, result = [], {"shapes": args.shapes, "images": args.images, "device": args.device, "machine": facts}
    for method, summary in summaries.items():
        seconds = summary["stage_seconds"]
        processing = sum(v for stage, v in seconds.items() if stage != "load")
        result[method] = {"stage_seconds": seconds, "processing_s": round(processing, 3),
                          "pairs": summary["pairs"], "sources": summary["sources"], "skipped": summary["skipped"]}
        rows.append([method.upper(), *(f"{seconds[s]:.2f}" for s in STAGES), f"{processing:.2f}",
                     summary["pairs"], json.dumps(summary["sources"])])
    ratio = result["lism"]["processing_s"] / max(result["flism"]["processing_s"], 1e-9)
    result["ratio_lism_over_flism"] = round(ratio, 2)
    print(markdown_table(["method", *(f"{s} s" for s in STAGES), "processing s", "pairs", "sources"], rows))
    print(f"LISM/FLISM processing time (all stages but model loading): {ratio:.2f}x "
          f"on {args.images} images, {args.shapes} shapes, {args.device} (FAST-GOAL Table V on DOCCI: 12.7x)")
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
