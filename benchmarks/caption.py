"""Captioning: batched generation (``goalclip caption --batch-size N``) vs one image at a time.

Both variants call the same ``TransformersEngine`` on the same decoded images with the same prompt;
the batched one left-pads N prompts (whose image-token counts differ with the images' aspect ratios)
into one ``generate`` call. The outputs are asserted equal before anything is timed. Model: a random
LLaVA-NeXT built offline (CLIP vision tower 32 wide; a Llama-style language model of ``--width`` and
``--layers``), greedy, ``--max-new-tokens`` per image; interleaved rounds in one process.

    python benchmarks/caption.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: F401  (first: sets thread/offline env variables before torch loads)

# isort: split

import torch
from _common import interleaved, machine_facts, markdown_table, print_facts
from PIL import Image

from goalclip.caption.engines import TransformersEngine
from goalclip.caption.prompt import DEFAULT_PROMPT
from goalclip.caption.tiny import build_tiny_llava_next


def images(count: int) -> list[Image.Image]:
    """Images of varied sizes and aspect ratios (so a batch really is padded)."""
    sizes = [(64, 48), (40, 80), (50, 50), (70, 30), (33, 61), (80, 80), (96, 54), (45, 90)]
    out = []
    for i in range(count):
        w, h = sizes[i % len(sizes)]
        image = Image.new("RGB", (w, h), (30 * i % 255, 90, 200 - 20 * i % 200))
        image.paste((250, 250 - 10 * i % 250, 20), (w // 4, h // 4, w // 2, h // 2))
        out.append(image)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    print_facts(machine_facts(args.device))
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_tiny_llava_next(Path(tmp) / "model", width=args.width, layers=args.layers)
        engine = TransformersEngine(str(folder), device=device, dtype=torch.float32,
                                    max_new_tokens=args.max_new_tokens)
    pictures = images(args.images)

    def one_at_a_time():
        return [engine.generate([image], DEFAULT_PROMPT)[0] for image in pictures]

    def batched():
        return [g for start in range(0, len(pictures), args.batch_size)
                for g in engine.generate(pictures[start : start + args.batch_size], DEFAULT_PROMPT)]

    single_out, batched_out = one_at_a_time(), batched()
    assert batched_out == single_out, "batched generation differs from one image at a time"
    print(f"outputs identical for all {len(pictures)} images ({len({g.text for g in single_out})} distinct texts)")
    timer = interleaved({"one at a time": one_at_a_time, "batched": batched}, rounds=args.rounds, warmup=1,
                        device=args.device)
    rows = [[name, f"{timer.median(name) * 1000:.0f}", f"{len(pictures) / timer.median(name):.2f}"]
            for name in ("one at a time", "batched")]
    ratio = timer.paired_ratio("one at a time", "batched")
    rows.append(["**ratio**", "", f"**{ratio:.2f}x**"])
    title = f"variant ({len(pictures)} images, batch {args.batch_size}, {args.max_new_tokens} new tokens)"
    print(markdown_table([title, "median ms", "images/s"], rows))


if __name__ == "__main__":
    main()
