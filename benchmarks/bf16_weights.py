"""How much of a model a bf16-WEIGHT baseline actually trains, next to fp32 and bf16-mixed runs.

The GOAL authors trained their global-only and local-only baselines with the model's weights
(and AdamW state) held in bf16, while GOAL itself keeps fp32 master weights. An AdamW step moves
each weight by about the learning rate (5e-6); a bf16 weight of magnitude |w| only changes when
the update exceeds half its spacing, |w| * 2**-8, i.e. for |w| below roughly 1e-3. So at lr 5e-6
most elements of a bf16-weight model never move, and a baseline trained that way is a weaker
baseline than its name says. This script measures it with goalclip's own trainer
(``--recipe reference --method global``) on a demo-sized CLIP and the demo's synthetic captions:

- the fraction of weight elements that one AdamW step changes, per precision;
- after ``--steps`` steps: how far each run moved from its start (relative L2 norm of the
  change), and how the bf16-weight run's change compares with the fp32 run's (norm ratio, cosine).

The bf16-weight run starts from the fp32 start rounded to bf16 (what ``--precision bf16-weights``
does), and its movement is measured from that rounded start, so the rounding itself is not
counted as training.

    python benchmarks/bf16_weights.py                  # random demo-sized CLIP, 20 steps
    python benchmarks/bf16_weights.py --model FOLDER   # any saved CLIP, e.g. the demo's models/pretrained
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
from safetensors.torch import load_file

from goalclip.core.records import read_manifest
from goalclip.demo.pipeline import DemoPlan
from goalclip.demo.tiny import build_tiny_clip
from goalclip.demo.scene import WorldConfig
from goalclip.demo.world import generate_world
from goalclip.models.clip import save_clip
from goalclip.training.config import TrainConfig
from goalclip.training.trainer import train

PRECISIONS = ("no", "bf16", "bf16-weights")


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v.float() for k, v in load_file(str(folder / "model.safetensors")).items()}


def _flat(weights: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.cat([weights[k].flatten() for k in keys])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a saved CLIP folder (default: a random demo-sized CLIP)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-6)
    parser.add_argument("--n-train", type=int, default=160, help="synthetic captioned images to train on")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        world = generate_world(root / "world", WorldConfig(n_pretrain=0, n_train=args.n_train, n_test=8))
        plan = DemoPlan()
        model = args.model
        if model is None:
            texts = [r["caption"] for r in read_manifest(world.train)]
            model = str(save_clip(build_tiny_clip(
                texts, image_size=plan.image_size, patch_size=plan.patch_size, width=plan.width,
                layers=plan.layers, projection_dim=plan.width, context_length=plan.context), root / "init"))
        start = _weights(Path(model))
        keys = sorted(k for k in start if "position_ids" not in k)

        def run(precision: str, steps: int) -> dict[str, torch.Tensor]:
            out = root / f"{precision}-{steps}"
            train(TrainConfig(model=model, data=str(world.train), out=str(out), method="global",
                              recipe="reference", precision=precision, max_steps=steps,
                              batch_size=args.batch_size, lr=args.lr, max_text_len=plan.context, num_workers=0,
                              checkpoint_epochs=False, progress=False, log_every=steps))
            return _weights(out)

        w0 = _flat(start, keys)
        origin = {"no": w0, "bf16": w0, "bf16-weights": w0.to(torch.bfloat16).float()}
        print(f"model: {model if args.model else 'random demo-sized CLIP'} ({w0.numel():,} weight elements), "
              f"AdamW lr {args.lr}, weight decay 0.05 on all parameters (--recipe reference), --method global, "
              f"batch {args.batch_size}")
        print("| precision | elements changed by step 1 | relative move after 1 step | "
              f"relative move after {args.steps} steps | move vs fp32 (norm ratio) | cosine with fp32 move |")
        print("|---|---:|---:|---:|---:|---:|")
        moves = {}
        rows = []
        for precision in PRECISIONS:
            one = _flat(run(precision, 1), keys)
            many = _flat(run(precision, args.steps), keys)
            base = origin[precision]
            changed = float((one != base).float().mean())
            moves[precision] = many - base
            rows.append((precision, changed, float((one - base).norm() / base.norm()),
                         float(moves[precision].norm() / base.norm())))
        for precision, changed, move1, move_n in rows:
            ratio = float(moves[precision].norm() / moves["no"].norm())
            cosine = float(torch.nn.functional.cosine_similarity(moves[precision], moves["no"], dim=0))
            print(f"| {precision} | {changed:.2%} | {move1:.3e} | {move_n:.3e} | {ratio:.3f} | {cosine:.3f} |")


if __name__ == "__main__":
    main()
