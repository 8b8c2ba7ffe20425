"""Gradient caching (``--grad-cache-chunk``) is exact: the same loss and parameter gradients as one
full-batch step, for every method, in one process and in two.

The single-step checks compare :func:`goalclip.training.gradcache.grad_cache_step` (chunks of 2
rows) with the plain :class:`StepModule` forward + backward on one batch of 6 images of the tiny
world; the run checks compare whole ``goalclip train`` runs (final weights).
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType
from safetensors.torch import load_file

from goalclip.cli import main
from goalclip.models.clip import load_clip, prepare_text_positions
from goalclip.training.config import LossTerms, LossWeights, TrainConfig
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.gradcache import grad_cache_step, plan_chunks
from goalclip.training.heads import TslHeads
from goalclip.training.step import ChunkedStepModule, StepModule

BATCH, CHUNK = 6, 2
BACKGROUND = "The picture has a plain white background."
# name -> (method, local pairs per image, separate TSL heads)
CASES = {
    "global": ("global", 1, False),
    "local": ("local", 1, False),
    "wo-tsl": ("wo-tsl", 1, False),
    "goal": ("goal", 1, False),
    "goal-top2-separate-heads": ("goal", 2, True),
}
HEAD_INIT = {"vision_norm": "vision_model.post_layernorm", "vision_proj": "visual_projection",
             "text_norm": "text_model.final_layer_norm", "text_proj": "text_projection"}
TINY = ["--max-text-len", "52", "--keep-positions", "4", "--num-workers", "0", "--no-progress", "--log-every", "1"]


@pytest.fixture(scope="module")
def topk_manifest(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's mined pairs plus, on every other image, a second (background) pair: uneven pair counts."""
    records = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    for i, record in enumerate(records):
        record["image"] = str(tiny_world.root / record["image"])
        record["local"]["score"] = 0.9
        record["candidates"] = [record["local"]]
        if i % 2 == 0:
            record["candidates"].append({"sentence": BACKGROUND, "box": [0, 0, 24, 24], "score": 0.3, "source": "grid"})
    path = tmp_path_factory.mktemp("gradcache") / "topk.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def accelerator():
    AcceleratorState._reset_state()
    yield Accelerator(cpu=True)
    AcceleratorState._reset_state()


def _module(tiny_world, topk_manifest: Path, case: str) -> tuple[ChunkedStepModule, dict[str, torch.Tensor]]:
    """A fresh tiny model (text positions stretched to 52 so every sentence span fits) and a batch of 6."""
    method, pairs, separate = CASES[case]
    bundle = load_clip(str(tiny_world.model))
    prepare_text_positions(bundle, 52, 4)
    local = LossTerms.of(method).needs_local
    examples = load_examples(topk_manifest, need_local=local, local_pairs=pairs, pair_weighting="similarity")
    dataset = TrainDataset(examples[:BATCH], bundle, need_local=local, pair_weighting="similarity")
    batch = dataset.to_device(
        Collate(pad_id=bundle.tokenizer.pad_token_id, weighted=pairs > 1)([dataset[i] for i in range(BATCH)]), "cpu")
    heads = TslHeads(bundle.model) if separate else None
    return ChunkedStepModule(bundle.model, method, LossWeights(), heads), batch


def _plain_twin(module: ChunkedStepModule) -> StepModule:
    """The plain step over the same modules (the same parameters, so the same gradient names)."""
    return StepModule(module.clip, module.method, module.weights, module.heads)


def _grads(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def _plain(module: ChunkedStepModule, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    loss, _ = _plain_twin(module)(batch)
    loss.backward()
    return loss.detach(), _grads(module)


def _assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], rel: float) -> None:
    """Every gradient equal to ``rel`` times the largest gradient element (fp32 rounding of a reordered sum)."""
    assert got.keys() == want.keys()
    scale = max(g.abs().max().item() for g in want.values())
    for name, value in want.items():
        assert torch.allclose(got[name], value, rtol=0, atol=rel * scale), (
            f"{name}: max diff {(got[name] - value).abs().max().item():.2e} vs scale {scale:.2e}")


@pytest.mark.parametrize("case", list(CASES))
def test_grad_cache_step_equals_the_plain_full_batch_step(tiny_world, topk_manifest, accelerator, case) -> None:
    module, batch = _module(tiny_world, topk_manifest, case)
    want_loss, want = _plain(module, batch)
    module.zero_grad(set_to_none=True)
    loss, logs = grad_cache_step(accelerator, module, batch, CHUNK)
    assert loss == pytest.approx(want_loss.item(), rel=1e-6)
    assert logs["grad_cache_chunks"].item() >= BATCH // CHUNK  # really chunked
    _assert_same_grads(_grads(module), want, rel=1e-5)
    if CASES[case][2]:
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in module.heads.parameters())


def test_grad_cache_with_gradient_checkpointing_equals_the_plain_step(tiny_world, topk_manifest, accelerator) -> None:
    module, batch = _module(tiny_world, topk_manifest, "goal")
    _, want = _plain(module, batch)
    module.zero_grad(set_to_none=True)
    module.clip.activation_checkpointing_enable()
    module.train()
    grad_cache_step(accelerator, module, batch, CHUNK)
    _assert_same_grads(_grads(module), want, rel=1e-5)


def test_grad_cache_under_bf16_autocast_follows_the_plain_bf16_step(tiny_world, topk_manifest) -> None:
    """Mixed precision: both steps round the same way; only bf16's reordering noise separates them."""
    AcceleratorState._reset_state()
    accelerator = Accelerator(cpu=True, mixed_precision="bf16")
    try:
        module, batch = _module(tiny_world, topk_manifest, "goal-top2-separate-heads")
        with accelerator.autocast():
            want_loss, _ = _plain_twin(module)(batch)
        accelerator.backward(want_loss)
        want = _grads(module)
        module.zero_grad(set_to_none=True)
        loss, _ = grad_cache_step(accelerator, module, batch, CHUNK)
    finally:
        AcceleratorState._reset_state()
    assert loss == pytest.approx(want_loss.item(), rel=2e-2)
    got = _grads(module)
    assert got.keys() == want.keys()
    flat_got = torch.cat([got[n].flatten() for n in want])
    flat_want = torch.cat([want[n].flatten() for n in want])
    assert torch.nn.functional.cosine_similarity(flat_got, flat_want, dim=0) > 0.99


def test_re_encoding_replays_the_random_draws_of_the_first_pass(tiny_world, topk_manifest, accelerator) -> None:
    """With dropout on, the chunks' second forward must see the same masks as the first (else the cached
    gradients belong to other activations). Reference: the same chunks encoded once, with a graph."""
    module, batch = _module(tiny_world, topk_manifest, "goal")
    for layer in module.clip.modules():
        if hasattr(layer, "dropout") and isinstance(layer.dropout, float):
            layer.dropout = 0.3  # CLIP attention dropout
    module.train()
    chunks = module.chunks(batch, CHUNK)
    torch.manual_seed(5)
    parts = [module(batch, chunk) for chunk in chunks]
    keys = dict.fromkeys(key for part in parts for key in part)
    reps = {key: torch.cat([part[key] for part in parts if key in part]) for key in keys}
    want_loss, _ = module.loss(reps, batch)
    want_loss.backward()
    want = _grads(module)
    module.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    loss, _ = grad_cache_step(accelerator, module, batch, CHUNK)
    assert loss == pytest.approx(want_loss.item(), rel=1e-6)
    _assert_same_grads(_grads(module), want, rel=1e-5)


def test_chunks_cover_every_row_once_and_the_last_chunk_holds_every_stream(tiny_world, topk_manifest) -> None:
    module, batch = _module(tiny_world, topk_manifest, "goal-top2-separate-heads")
    images, pairs = batch["pixel_values"].shape[0], batch["sentence_ids"].shape[0]
    assert pairs == 9 and images == BATCH + pairs
    chunks = module.chunks(batch, CHUNK)
    for stream, rows in (("images", images), ("captions", BATCH), ("sentences", pairs)):
        covered = [r for chunk in chunks if getattr(chunk, stream) for r in range(rows)[getattr(chunk, stream)]]
        assert covered == list(range(rows)), stream
    owner = batch["pair_owner"]
    for chunk in chunks:  # each chunk pools the pairs of exactly its own global images / captions
        for rows, pairs_of in ((chunk.images, chunk.image_pairs), (chunk.captions, chunk.caption_pairs)):
            if pairs_of is not None:
                assert all(rows.start <= owner[p] < rows.stop for p in range(pairs)[pairs_of])
    assert chunks[-1].images and chunks[-1].captions and chunks[-1].sentences
    assert len(plan_chunks(batch, None, captions=True, sentences=True)) == 1


def test_grad_cache_refuses_sharded_engines_and_a_chunk_below_one() -> None:
    for engine in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        with pytest.raises(ValueError, match="--grad-cache-chunk"):
            grad_cache_step(SimpleNamespace(distributed_type=engine), None, {}, 2)
    with pytest.raises(ValueError, match="--grad-cache-chunk must be at least 1"):
        TrainConfig(model="m", data="d", out="o", grad_cache_chunk=0).validate()


def _train(tiny_world, data: Path, out: Path, *extra: str) -> None:
    assert main(["train", "--model", str(tiny_world.model), "--data", str(data), "--out", str(out),
                 "--method", "goal", "--local-pairs", "2", "--tsl-heads", "separate", "--max-steps", "2",
                 "--lr", "1e-3", "--no-epoch-checkpoints", *TINY, *extra]) == 0


def _assert_same_training(tiny_world, a: Path, b: Path) -> None:
    """Same loss at every step, and final weights whose difference is rounding next to the update.

    AdamW divides each gradient by its own running scale, so an element whose gradient is ~0 (attention
    key biases get exactly 0) turns the rounding noise of a reordered sum into a full-size step: compare
    the whole difference with how far training moved the weights, not element by element.
    """
    losses = [[json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()] for run in (a, b)]
    assert losses[1] == pytest.approx(losses[0], rel=1e-5)
    clip = load_file(str(tiny_world.model / "model.safetensors"))
    heads = {k: clip[k.replace(head, part, 1)] for k in load_file(str(a / "tsl_heads.safetensors"))
             for head, part in HEAD_INIT.items() if k.startswith(head + ".")}  # initialised as CLIP's copies
    for name, start in (("model.safetensors", clip), ("tsl_heads.safetensors", heads)):
        wa, wb = load_file(str(a / name)), load_file(str(b / name))
        assert wa.keys() == wb.keys() == start.keys()
        moved = sum(((wa[k] - start[k]) ** 2).sum() for k in wa if wa[k].shape == start[k].shape).sqrt()
        apart = sum(((wa[k] - wb[k]) ** 2).sum() for k in wa).sqrt()
        assert apart < 1e-3 * moved, (name, (apart / moved).item())


def test_a_grad_cache_run_equals_a_plain_run_and_says_it_is_on(tiny_world, topk_manifest, tmp_path, capsys) -> None:
    plain, cached = tmp_path / "plain", tmp_path / "cached"
    _train(tiny_world, topk_manifest, plain, "--batch-size", "4")
    _train(tiny_world, topk_manifest, cached, "--batch-size", "4", "--grad-cache-chunk", "2")
    _assert_same_training(tiny_world, plain, cached)
    record = json.loads((cached / "train_config.json").read_text())
    assert record["config"]["grad_cache_chunk"] == 2
    metrics = [json.loads(line) for line in (cached / "metrics.jsonl").read_text().splitlines()]
    assert all(m["grad_cache_chunks"] > 1 for m in metrics)
    assert "grad_cache_chunks" not in json.loads((plain / "metrics.jsonl").read_text().splitlines()[0])
    assert main(["train", "--model", str(tiny_world.model), "--data", str(topk_manifest), "--out",
                 str(tmp_path / "bad"), "--grad-cache-chunk", "0"]) == 1
    assert "--grad-cache-chunk must be at least 1" in capsys.readouterr().err


@pytest.mark.multiprocess
def test_two_processes_with_grad_cache_equal_one_plain_process(tiny_world, topk_manifest, tmp_path,
                                                               launch_ranks) -> None:
    """DDP: gathered negatives, per-chunk backward without sync, one gradient all-reduce at the last chunk."""
    single, double = tmp_path / "one", tmp_path / "two"
    _train(tiny_world, topk_manifest, single, "--batch-size", "4")
    done = launch_ranks(["-m", "goalclip.cli", "train", "--model", str(tiny_world.model), "--data", str(topk_manifest),
                         "--out", str(double), "--method", "goal", "--local-pairs", "2", "--tsl-heads", "separate",
                         "--max-steps", "2", "--lr", "1e-3", "--no-epoch-checkpoints", "--batch-size", "2",
                         "--grad-cache-chunk", "1", *TINY], CUDA_VISIBLE_DEVICES="", ACCELERATE_USE_CPU="1")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((double / "train_config.json").read_text())["derived"]["num_processes"] == 2
    _assert_same_training(tiny_world, single, double)
