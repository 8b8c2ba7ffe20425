"""The training step against a plain-torch recomputation, the loop end to end, resume, failures."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tests.conftest import TINY_TRAIN
from safetensors.torch import load_file
from transformers import AutoProcessor, CLIPModel

from goalclip.models.clip import load_clip
from goalclip.training import objective
from goalclip.training.config import METHODS, LossWeights, TrainConfig
from goalclip.training.data import Collate, TrainDataset, epoch_batches, load_examples
from goalclip.training.step import training_step
from goalclip.training.trainer import TrainingError, train

# ----------------------------------------------------------------------------- one step


@pytest.fixture(scope="module")
def step_setup(tiny_world, tmp_path_factory):
    """The unstretched tiny model (context 16) and a 4-example batch with masked TSL rows:
    b's sentence lies past the context (text TSL masked), d's box is outside the crop (image TSL)."""
    folder = tmp_path_factory.mktemp("step")
    images = tiny_world.root / "images"
    records = [
        {"id": "a", "image": str(images / "img4.png"), "caption": "A red circle is drawn here. Nothing else.",
         "local": {"sentence": "A red circle is drawn here.", "box": [10, 10, 40, 40]}},
        {"id": "b", "image": str(images / "img1.png"),
         "caption": "The picture has a plain white background. A blue circle is drawn here. Nothing else is in it.",
         "local": {"sentence": "A blue circle is drawn here.", "box": [36, 20, 60, 44]}},
        {"id": "c", "image": str(images / "img2.png"), "caption": "A green square. It is on the left.",
         "local": {"sentence": "A green square.", "box": [4, 30, 20, 60]}},
        {"id": "d", "image": str(images / "img0.png"), "caption": "A red square is drawn here.",
         "local": {"sentence": "A red square is drawn here.", "box": [0, 0, 6, 48]}},
    ]
    path = folder / "train.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    examples = load_examples(path, need_local=True)
    bundle = load_clip(str(tiny_world.model))
    collate = Collate(pad_id=bundle.tokenizer.pad_token_id)
    local_data, global_data = (TrainDataset(examples, bundle, need_local=need) for need in (True, False))
    local_batch = local_data.to_device(collate([local_data[i] for i in range(4)]), "cpu")
    global_batch = global_data.to_device(collate([global_data[i] for i in range(4)]), "cpu")
    assert local_batch["text_tsl_valid"].tolist() == [True, False, True, True]
    assert local_batch["image_tsl_valid"].tolist() == [True, True, True, False]
    return bundle.model, local_batch, global_batch


def _info_nce(a: torch.Tensor, b: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    a = a / a.norm(dim=-1, keepdim=True)
    b = b / b.norm(dim=-1, keepdim=True)
    logits = scale * a @ b.T
    image_to_text = (logits.logsumexp(dim=1) - logits.diagonal()).mean()
    text_to_image = (logits.logsumexp(dim=0) - logits.diagonal()).mean()
    return (image_to_text + text_to_image) / 2


def _tsl(states, masks, valid, norm, projection, targets) -> torch.Tensor:
    """Mean over valid rows of (cos(project(norm(mean of masked states)), target) - 1)^2, row by row."""
    squares = []
    for row in range(states.shape[0]):
        if not valid[row]:
            continue
        positions = masks[row].nonzero().flatten().tolist()
        pooled = torch.stack([states[row, p] for p in positions]).mean(dim=0)
        feature = projection(norm(pooled))
        cos = torch.dot(feature, targets[row]) / (feature.norm() * targets[row].norm())
        squares.append((cos - 1) ** 2)
    return torch.stack(squares).mean()


def _eos_features(model: CLIPModel, ids: torch.Tensor, mask: torch.Tensor, eos: int):
    out = model.text_model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    states = out.hidden_states[-1]  # before the final layer norm
    first_eos = torch.tensor([row.tolist().index(eos) for row in ids])
    normed = model.text_model.final_layer_norm(states)
    return model.text_projection(normed[torch.arange(len(ids)), first_eos]), states


@pytest.fixture(scope="module")
def reference_terms(step_setup) -> dict[str, float]:
    """Every loss term recomputed from the model's own modules with plain torch."""
    model, batch, _ = step_setup
    eos = model.config.text_config.eos_token_id
    b = batch["caption_ids"].shape[0]
    with torch.no_grad():
        vision = model.vision_model(pixel_values=batch["pixel_values"], output_hidden_states=True)
        tokens = vision.hidden_states[-1]  # before post-layernorm
        images = model.visual_projection(model.vision_model.post_layernorm(tokens[:, 0]))
        captions, caption_states = _eos_features(model, batch["caption_ids"], batch["caption_mask"], eos)
        sentences, _ = _eos_features(model, batch["sentence_ids"], batch["sentence_mask"], eos)
        scale = model.logit_scale.exp()
        assert scale < 100
        terms = {
            "global": _info_nce(images[:b], captions, scale),
            "local": _info_nce(images[b:], sentences, scale),
            "tsl_image": _tsl(tokens[:b, 1:], batch["patch_mask"], batch["image_tsl_valid"],
                              model.vision_model.post_layernorm, model.visual_projection, images[b:]),
            "tsl_text": _tsl(caption_states, batch["span_mask"], batch["text_tsl_valid"],
                             model.text_model.final_layer_norm, model.text_projection, sentences),
        }
    return {k: float(v) for k, v in terms.items()}


def test_goal_loss_equals_plain_torch_recomputation(step_setup, reference_terms) -> None:
    model, batch, _ = step_setup
    with torch.no_grad():
        loss, logs = training_step(model, batch, "goal", LossWeights())
    ref = reference_terms
    expected = 1.0 * ref["global"] + 0.5 * ref["local"] + 1.0 * (ref["tsl_image"] + ref["tsl_text"])
    assert float(loss) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    for key in ("global", "local", "tsl_image", "tsl_text"):
        assert float(logs[f"loss_{key}"]) == pytest.approx(ref[key], rel=1e-5, abs=1e-6), key
    assert all(v > 0 for v in ref.values())
    assert float(logs["logit_scale"]) == pytest.approx(math.exp(float(model.logit_scale.detach())), rel=1e-6)


@pytest.mark.parametrize(
    ("method", "terms", "weights"),
    [
        ("goal", {"global", "local", "tsl_image", "tsl_text"},
         {"global": 1.0, "local": 0.5, "tsl_image": 1.0, "tsl_text": 1.0}),
        ("wo-tsl", {"global", "local"}, {"global": 1.0, "local": 0.5}),
        ("global", {"global"}, {"global": 1.0}),
        ("local", {"local"}, {"local": 1.0}),  # the local loss alone
    ],
)
def test_training_step_terms_per_method(step_setup, reference_terms, method, terms, weights) -> None:
    model, local_batch, global_batch = step_setup
    batch = global_batch if method == "global" else local_batch
    model.zero_grad(set_to_none=True)
    loss, logs = training_step(model, batch, method, LossWeights())
    assert {k.removeprefix("loss_") for k in logs if k.startswith("loss_")} == terms
    assert ("tsl_cos_image" in logs) == ("tsl_image" in terms)
    expected = sum(w * reference_terms[k] for k, w in weights.items())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert float(logs["loss"]) == pytest.approx(float(loss.detach()))
    loss.backward()
    grad = model.text_model.embeddings.token_embedding.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)


def test_global_batch_has_no_crops(step_setup) -> None:
    _, _, global_batch = step_setup
    assert global_batch["pixel_values"].shape[0] == global_batch["caption_ids"].shape[0] == 4


# ----------------------------------------------------------------------------- the loop


def _config(tiny_world, out: Path, **overrides) -> TrainConfig:
    values = dict(model=str(tiny_world.model), data=str(tiny_world.mined), out=str(out), **TINY_TRAIN)
    values.update(overrides)
    return TrainConfig(**values)


def _long_clip_stretch(old: torch.Tensor, keep: int) -> torch.Tensor:
    length = old.shape[0]
    new = [old[i] for i in range(keep)]
    for i in range(length - 1 - keep):
        for j in range(4):
            new.append(old[i + keep] * (4 - j) / 4 + old[i + 1 + keep] * j / 4)
    for j in range(4):
        new.append(old[length - 1] + j * (old[length - 1] - old[length - 2]) / 4)
    return torch.stack(new)


@pytest.mark.parametrize("method", METHODS)
def test_train_end_to_end(tiny_world, tmp_path, method: str) -> None:
    out = tmp_path / method
    summary = train(_config(tiny_world, out, method=method, max_steps=2))
    assert summary["steps"] == 2 and summary["examples"] == 8 and summary["context_length"] == 52
    assert math.isfinite(summary["final_loss"])

    model = CLIPModel.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert model.config.text_config.max_position_embeddings == 52
    assert processor.tokenizer.model_max_length == 52
    base = CLIPModel.from_pretrained(tiny_world.model)
    stretched = _long_clip_stretch(base.text_model.embeddings.position_embedding.weight.detach(), keep=4)
    positions = model.text_model.embeddings.position_embedding.weight.detach()
    assert positions.shape == (52, 32)
    # Two AdamW steps at lr 5e-6 move each weight by about 1e-5 at most.
    assert torch.allclose(positions, stretched, atol=1e-4, rtol=0)
    trained, initial = model.state_dict(), base.state_dict()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial if "position_embedding" not in k)

    config = json.loads((out / "train_config.json").read_text())
    assert config["config"]["method"] == method
    assert config["derived"]["context_length"] == 52 and config["derived"]["total_steps"] == 2
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2]
    assert all(math.isfinite(m["loss"]) for m in metrics)
    assert not list(out.glob(".export-tmp*"))


def _final_weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "model.safetensors"))


@pytest.fixture(scope="module")
def six_examples(tiny_world, tmp_path_factory) -> Path:
    """6 examples at batch 2: 3 steps per epoch, so 4 steps cross an epoch boundary."""
    path = tmp_path_factory.mktemp("six") / "mined6.jsonl"
    lines = tiny_world.mined.read_text().splitlines()[:6]
    rows = [json.loads(line) for line in lines]
    for row in rows:
        row["image"] = str(tiny_world.root / row["image"])
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_world, six_examples, tmp_path_factory) -> dict[str, torch.Tensor]:
    out = tmp_path_factory.mktemp("full")
    summary = train(_config(tiny_world, out, data=str(six_examples), max_steps=4, checkpoint_every=2))
    assert summary["steps"] == 4
    return _final_weights(out)


@pytest.mark.parametrize("crash_at_call", [3, 4])  # 3: resume mid-epoch from step 2; 4: from the epoch end
def test_resume_after_crash_gives_identical_weights(
    tiny_world, six_examples, uninterrupted, tmp_path, monkeypatch, crash_at_step, crash_at_call: int
) -> None:
    crash_at_step(crash_at_call)
    config = dict(data=str(six_examples), max_steps=4, checkpoint_every=2)
    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_world, tmp_path, **config))
    monkeypatch.undo()
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").glob("step-*"))
    assert checkpoints == (["step-2"] if crash_at_call == 3 else ["step-2", "step-3"])
    assert not (tmp_path / "model.safetensors").exists()

    with pytest.raises(FileExistsError, match="pass --resume to continue"):
        train(_config(tiny_world, tmp_path, **config))  # a fresh run must not mix with the old checkpoints
    summary = train(_config(tiny_world, tmp_path, resume=True, **config))
    assert summary["steps"] == 4
    resumed = _final_weights(tmp_path)
    assert resumed.keys() == uninterrupted.keys()
    for key, value in uninterrupted.items():
        assert torch.allclose(resumed[key], value, atol=1e-6, rtol=0), key
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_resume_differs_from_a_fresh_shorter_schedule(tiny_world, six_examples, uninterrupted, tmp_path) -> None:
    """Negative control: stopping after 2 of 4 steps is not the same as the resumed run."""
    train(_config(tiny_world, tmp_path, data=str(six_examples), max_steps=2))
    short = _final_weights(tmp_path)
    assert any(not torch.allclose(short[k], uninterrupted[k], atol=1e-6, rtol=0) for k in short)


def test_non_finite_loss_names_the_step(tiny_world, tmp_path, monkeypatch) -> None:
    real_loss = objective.contrastive_loss
    calls = {"n": 0}

    def nan_on_second_call(*args, **kwargs):
        calls["n"] += 1
        loss = real_loss(*args, **kwargs)
        return loss * float("nan") if calls["n"] == 2 else loss

    monkeypatch.setattr(objective, "contrastive_loss", nan_on_second_call)
    with pytest.raises(TrainingError, match=r"at step 2\b.*step-1"):
        train(_config(tiny_world, tmp_path, method="global", max_steps=4, checkpoint_every=1))
    assert not (tmp_path / "model.safetensors").exists()


def test_nan_loss_weight_raises_at_step_one(tiny_world, tmp_path) -> None:
    weights = LossWeights(tsl=float("nan"))
    with pytest.raises(TrainingError, match=r"non-finite loss .* at step 1\b"):
        train(_config(tiny_world, tmp_path, method="goal", max_steps=2, weights=weights))


def test_train_config_validation(tiny_world, tmp_path) -> None:
    with pytest.raises(ValueError, match="--method"):
        train(_config(tiny_world, tmp_path, method="fancy"))
    with pytest.raises(ValueError, match="--batch-size"):
        train(_config(tiny_world, tmp_path, batch_size=1))


# ----------------------------------------------------------------------------- epoch_batches


def test_epoch_batches_deterministic_disjoint_equal() -> None:
    n, batch, world = 23, 3, 2
    ranks = [epoch_batches(n, batch, seed=7, epoch=1, rank=r, world=world) for r in range(world)]
    assert ranks[0] == epoch_batches(n, batch, seed=7, epoch=1, rank=0, world=world)
    assert ranks[0] != epoch_batches(n, batch, seed=7, epoch=2, rank=0, world=world)
    assert ranks[0] != epoch_batches(n, batch, seed=8, epoch=1, rank=0, world=world)
    steps = n // (batch * world)  # 3 full global batches; the 5 left over are dropped
    for batches in ranks:
        assert len(batches) == steps
        assert all(len(b) == batch for b in batches)
    seen = [i for batches in ranks for b in batches for i in b]
    assert len(seen) == len(set(seen)) == steps * batch * world
    assert set(seen) <= set(range(n))
    # Step s of every rank comes from the same global batch of the epoch's permutation.
    single = epoch_batches(n, batch * world, seed=7, epoch=1, rank=0, world=1)
    for s in range(steps):
        assert sorted(ranks[0][s] + ranks[1][s]) == sorted(single[s])
    # The permutation really shuffles.
    assert [i for b in epoch_batches(12, 12, seed=0, epoch=0, rank=0, world=1) for i in b] != list(range(12))
