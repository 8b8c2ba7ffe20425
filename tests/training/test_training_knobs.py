"""The experiment knobs of the papers: top-k local pairs, learned TSL heads, the authors' recipe, two stages.

Each knob is checked against an independent computation (plain torch, numbers worked out by hand)
and through the path a user takes (``goalclip train`` on the tiny world).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import CLIPModel

import goalclip.training.trainer as train_module
from goalclip.cli import build_parser, main
from goalclip.models.clip import load_clip
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.heads import TslHeads
from goalclip.training.config import LossOptions, LossWeights
from goalclip.training.step import training_step

BACKGROUND = "The picture has a plain white background."


def _records(images: Path, candidates: bool) -> list[dict]:
    """Four records; with ``candidates``, mined top-k lists of 3, 1 (only the local pair) and 2 (+1 bad)."""
    def caption(colour: str, shape: str) -> str:
        return f"A {colour} {shape} is drawn here. {BACKGROUND} Nothing else."

    rows = [
        ("a", "img4.png", "red", "circle", [10, 10, 40, 40], 0.9),
        ("b", "img1.png", "blue", "circle", [36, 20, 60, 44], 0.8),
        ("c", "img2.png", "green", "square", [4, 30, 20, 60], 0.6),
        ("d", "img0.png", "red", "square", [0, 0, 6, 48], 0.5),  # box left of the centre crop: image TSL masked
    ]
    records = []
    for rid, image, colour, shape, box, score in rows:
        local = {"sentence": f"A {colour} {shape} is drawn here.", "box": box, "score": score, "source": "grid"}
        record = {"id": rid, "image": str(images / image), "caption": caption(colour, shape), "local": local}
        if candidates:
            record["candidates"] = [local]
            if rid == "a":
                record["candidates"] += [
                    {"sentence": BACKGROUND, "box": [0, 0, 24, 24], "score": 0.5, "source": "grid"},
                    {"sentence": "Nothing else.", "box": [24, 24, 48, 48], "score": 0.2, "source": "grid"},
                ]
            if rid == "c":
                record["candidates"] += [
                    {"sentence": "Not in the caption.", "box": [0, 0, 10, 10], "score": 0.4, "source": "grid"},
                    {"sentence": "Nothing else.", "box": [0, 0, 48, 32], "score": -0.1, "source": "grid"},
                ]
        records.append(record)
    return records


def _write(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture(scope="module")
def manifests(tiny_world, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("knobs")
    images = tiny_world.root / "images"
    return {"plain": _write(folder / "plain.jsonl", _records(images, candidates=False)),
            "topk": _write(folder / "topk.jsonl", _records(images, candidates=True))}


@pytest.fixture(scope="module")
def bundle(tiny_world):
    return load_clip(str(tiny_world.model))


def _batch(bundle, path: Path, local_pairs: int = 1, pair_weighting: str = "uniform") -> dict[str, torch.Tensor]:
    examples = load_examples(path, need_local=True, local_pairs=local_pairs, pair_weighting=pair_weighting)
    dataset = TrainDataset(examples, bundle, need_local=True, pair_weighting=pair_weighting)
    collate = Collate(pad_id=bundle.tokenizer.pad_token_id, weighted=local_pairs > 1)
    return dataset.to_device(collate([dataset[i] for i in range(len(dataset))]), "cpu")


def _loss_and_grads(model, batch, heads=None):
    model.zero_grad(set_to_none=True)
    loss, logs = training_step(model, batch, "goal", LossWeights(), heads=heads)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return loss.detach(), logs, grads


# ----------------------------------------------------------------------------- 13.1 top-k local pairs


def test_one_local_pair_reproduces_todays_batch_loss_and_gradients_exactly(bundle, manifests) -> None:
    today = _batch(bundle, manifests["plain"])
    k1 = _batch(bundle, manifests["topk"], local_pairs=1, pair_weighting="similarity")
    assert today.keys() == k1.keys()
    assert all(torch.equal(today[k], k1[k]) for k in today)
    loss_today, _, grads_today = _loss_and_grads(bundle.model, today)
    loss_k1, _, grads_k1 = _loss_and_grads(bundle.model, k1)
    assert torch.equal(loss_today, loss_k1)
    assert grads_today.keys() == grads_k1.keys() and all(torch.equal(grads_today[n], grads_k1[n]) for n in grads_today)


def test_weighted_pair_path_with_one_pair_per_image_equals_todays_loss(bundle, manifests) -> None:
    """The top-k machinery (pair owners, weights) on records that have one pair each is today's loss."""
    today = _batch(bundle, manifests["plain"])
    topk = _batch(bundle, manifests["plain"], local_pairs=3, pair_weighting="uniform")
    assert topk["pair_owner"].tolist() == [0, 1, 2, 3] and topk["pair_weight"].tolist() == [1.0] * 4
    loss_today, logs_today, grads_today = _loss_and_grads(bundle.model, today)
    loss_topk, logs_topk, grads_topk = _loss_and_grads(bundle.model, topk)
    assert float(loss_topk) == pytest.approx(float(loss_today), rel=1e-6)
    for key in ("loss_local", "loss_tsl_image", "loss_tsl_text"):
        assert float(logs_topk[key]) == pytest.approx(float(logs_today[key]), rel=1e-6, abs=1e-7)
    for name, grad in grads_today.items():
        assert torch.allclose(grads_topk[name], grad, rtol=1e-4, atol=1e-7), name


def test_similarity_weights_are_mining_scores_normalised_per_image(bundle, manifests) -> None:
    batch = _batch(bundle, manifests["topk"], local_pairs=3, pair_weighting="similarity")
    # a: 3 pairs (0.9, 0.5, 0.2); b: 1; c: the local pair and "Nothing else." (score -0.1 counts as 0:
    # the candidate not in the caption is dropped); d: 1.
    assert batch["pair_owner"].tolist() == [0, 0, 0, 1, 2, 2, 3]
    expected = [0.9 / 1.6, 0.5 / 1.6, 0.2 / 1.6, 1.0, 1.0, 0.0, 1.0]
    assert batch["pair_weight"].tolist() == pytest.approx(expected, abs=1e-7)
    uniform = _batch(bundle, manifests["topk"], local_pairs=3, pair_weighting="uniform")
    assert uniform["pair_weight"].tolist() == pytest.approx([1 / 3] * 3 + [1.0, 0.5, 0.5, 1.0], abs=1e-7)
    assert batch["pixel_values"].shape[0] == 4 + 7  # one vision forward over [globals ; all crops]
    assert batch["sentence_ids"].shape[0] == batch["span_mask"].shape[0] == batch["patch_mask"].shape[0] == 7
    two = _batch(bundle, manifests["topk"], local_pairs=2, pair_weighting="similarity")
    assert two["pair_owner"].tolist() == [0, 0, 1, 2, 2, 3]
    assert two["pair_weight"].tolist() == pytest.approx([0.9 / 1.4, 0.5 / 1.4, 1.0, 1.0, 0.0, 1.0], abs=1e-7)


def test_topk_loss_equals_weighted_plain_torch_recomputation(bundle, manifests) -> None:
    model = bundle.model
    batch = _batch(bundle, manifests["topk"], local_pairs=3, pair_weighting="similarity")
    owner, weight = batch["pair_owner"], batch["pair_weight"]
    b = batch["caption_ids"].shape[0]
    with torch.no_grad():
        loss, logs = training_step(model, batch, "goal", LossWeights(), options=LossOptions(local_pair_loss="all"))
        best_loss, best_logs = training_step(model, batch, "goal", LossWeights())  # the default reading
        vision = model.vision_model(pixel_values=batch["pixel_values"], output_hidden_states=True)
        tokens = vision.hidden_states[-1]
        images = F.normalize(model.visual_projection(vision.pooler_output), dim=-1)
        sentence_out = model.text_model(input_ids=batch["sentence_ids"], attention_mask=batch["sentence_mask"])
        sentences = F.normalize(model.text_projection(sentence_out.pooler_output), dim=-1)
        caption_states = model.text_model(input_ids=batch["caption_ids"], attention_mask=batch["caption_mask"],
                                           output_hidden_states=True).hidden_states[-1]
        scale = model.logit_scale.exp()
        crops = images[b:]
        local = 0.0
        for p in range(len(owner)):  # row by row: -log softmax of the matching pair, both directions
            keep = (owner != owner[p]) | (torch.arange(len(owner)) == p)  # other pairs of its image are no negatives
            i2t = -torch.log_softmax(scale * crops[p] @ sentences[keep].T, dim=0)[keep[:p].sum()]
            t2i = -torch.log_softmax(scale * sentences[p] @ crops[keep].T, dim=0)[keep[:p].sum()]
            local += weight[p] * (i2t + t2i) / 2
        local /= weight.sum()
        first = [p for p in range(len(owner)) if p == 0 or owner[p] != owner[p - 1]]  # each image's best pair
        logits = scale * crops[first] @ sentences[first].T
        labels = torch.arange(len(first))
        best_local = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2

        def tsl(states, masks, valid, norm, proj, targets):
            num = den = 0.0
            for p in range(len(owner)):
                if valid[p]:
                    pooled = states[owner[p]][masks[p]].mean(0)
                    cos = F.cosine_similarity(proj(norm(pooled)), targets[p], dim=0)
                    num, den = num + weight[p] * (cos - 1) ** 2, den + weight[p]
            return num / den

        tsl_image = tsl(tokens[:b, 1:], batch["patch_mask"], batch["image_tsl_valid"],
                        model.vision_model.post_layernorm, model.visual_projection, crops)
        tsl_text = tsl(caption_states, batch["span_mask"], batch["text_tsl_valid"],
                       model.text_model.final_layer_norm, model.text_projection, sentences)
    assert not batch["image_tsl_valid"].all() and not batch["text_tsl_valid"].all()  # masks are exercised
    assert float(logs["loss_local"]) == pytest.approx(float(local), rel=1e-5)
    assert float(logs["loss_tsl_image"]) == pytest.approx(float(tsl_image), rel=1e-5)
    assert float(logs["loss_tsl_text"]) == pytest.approx(float(tsl_text), rel=1e-5)
    expected = float(logs["loss_global"]) + 0.5 * float(local) + float(tsl_image) + float(tsl_text)
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    # default: L_local on each image's best pair, TSL on the K weighted pairs as above
    assert float(best_logs["loss_local"]) == pytest.approx(float(best_local), rel=1e-5)
    assert float(best_logs["loss_tsl_image"]) == pytest.approx(float(tsl_image), rel=1e-5)


def test_similarity_weighting_needs_scores(tiny_world, manifests, bundle, tmp_path) -> None:
    records = [json.loads(line) for line in manifests["topk"].read_text().splitlines()]
    del records[1]["local"]["score"]
    records[1]["candidates"][0] = records[1]["local"]
    path = _write(tmp_path / "noscore.jsonl", records)
    with pytest.raises(ValueError, match=r"noscore.jsonl:2: field 'local.score'"):
        load_examples(path, need_local=True, local_pairs=2, pair_weighting="similarity")


def test_train_cli_with_top_k_pairs_runs_and_records_them(tiny_world, manifests, tmp_path, capsys) -> None:
    out = tmp_path / "topk"
    assert main(["train", "--model", str(tiny_world.model), "--data", str(manifests["topk"]), "--out", str(out),
                 "--local-pairs", "3", "--pair-weighting", "similarity", "--max-steps", "2", "--batch-size", "2",
                 "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0", "--no-progress"]) == 0
    assert "trained goal for 2 steps" in capsys.readouterr().out
    config = json.loads((out / "train_config.json").read_text())["config"]
    assert config["local_pairs"] == 3 and config["pair_weighting"] == "similarity"
    assert main(["train", "--model", str(tiny_world.model), "--data", str(manifests["topk"]),
                 "--out", str(tmp_path / "bad"), "--local-pairs", "0"]) == 1


# ----------------------------------------------------------------------------- 13.2 learned TSL heads


def test_separate_tsl_heads_equal_shared_at_init(bundle, manifests) -> None:
    batch = _batch(bundle, manifests["plain"])
    heads = TslHeads(bundle.model)
    loss_shared, _, grads_shared = _loss_and_grads(bundle.model, batch)
    loss_separate, _, grads_separate = _loss_and_grads(bundle.model, batch, heads=heads)
    assert torch.equal(loss_shared, loss_separate)
    # CLIP's own norm/projection no longer carry the TSL gradient: it goes to the heads instead.
    assert grads_separate.keys() <= grads_shared.keys()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


def _train(tiny_world, data: Path, out: Path, *extra: str, model: Path | None = None) -> None:
    assert main(["train", "--model", str(model or tiny_world.model), "--data", str(data), "--out", str(out),
                 "--batch-size", "2", "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0",
                 "--no-progress", "--log-every", "1", *extra]) == 0


def test_separate_tsl_heads_train_export_beside_a_plain_clip_and_reload(tiny_world, manifests, tmp_path) -> None:
    stage1 = tmp_path / "stage1"
    _train(tiny_world, manifests["plain"], stage1, "--tsl-heads", "separate", "--max-steps", "2", "--lr", "1e-3")
    _, info = CLIPModel.from_pretrained(stage1, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    meta = json.loads((stage1 / "tsl_heads.json").read_text())
    assert meta["format"] == "goalclip-tsl-heads"
    heads = load_file(str(stage1 / "tsl_heads.safetensors"))
    clip_weights = load_file(str(stage1 / "model.safetensors"))
    assert not torch.equal(heads["vision_proj.weight"], clip_weights["visual_projection.weight"])
    assert not torch.equal(heads["text_norm.weight"], clip_weights["text_model.final_layer_norm.weight"])

    # Continued training from the folder reloads the heads (lr 0: they come back unchanged).
    stage2 = tmp_path / "stage2"
    _train(tiny_world, manifests["plain"], stage2, "--tsl-heads", "separate", "--max-steps", "1", "--lr", "0",
           model=stage1)
    again = load_file(str(stage2 / "tsl_heads.safetensors"))
    assert again.keys() == heads.keys() and all(torch.equal(again[k], heads[k]) for k in heads)
    record = json.loads((stage2 / "train_config.json").read_text())
    assert record["derived"]["tsl_heads_from"] == str(stage1)
    # --overwrite clears the heads with the rest of the run
    _train(tiny_world, manifests["plain"], stage2, "--max-steps", "1", "--overwrite", model=stage1)
    assert not (stage2 / "tsl_heads.safetensors").exists()


def test_separate_tsl_heads_need_a_method_with_tsl(tiny_world, manifests, tmp_path, capsys) -> None:
    assert main(["train", "--model", str(tiny_world.model), "--data", str(manifests["plain"]), "--out",
                 str(tmp_path / "o"), "--method", "wo-tsl", "--tsl-heads", "separate"]) == 1
    assert "--tsl-heads separate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 13.3 the authors' recipe


@pytest.fixture
def spies(monkeypatch):
    seen: dict[str, list] = {"optimizers": [], "clips": []}
    real_build = train_module.build_optimizer

    def build(*args, **kwargs):
        optimizer = real_build(*args, **kwargs)
        seen["optimizers"].append(optimizer)
        return optimizer

    def clip(self, parameters, max_norm, *args, **kwargs):
        seen["clips"].append(max_norm)

    monkeypatch.setattr(train_module, "build_optimizer", build)
    monkeypatch.setattr(Accelerator, "clip_grad_norm_", clip)
    return seen


def test_reference_recipe_decays_every_parameter_and_never_clips(tiny_world, manifests, tmp_path, spies) -> None:
    out = tmp_path / "ref"
    _train(tiny_world, manifests["plain"], out, "--recipe", "reference", "--max-steps", "1")
    [optimizer] = spies["optimizers"]
    [group] = optimizer.param_groups
    clip = CLIPModel.from_pretrained(tiny_world.model)
    assert group["weight_decay"] == 0.05 and len(group["params"]) == len(list(clip.parameters()))
    assert spies["clips"] == []
    record = json.loads((out / "train_config.json").read_text())
    assert record["config"]["recipe"] == "reference"
    assert record["resolved"] == {"decay_all": True, "grad_clip": 0.0, "precision": "bf16"}


def test_default_recipe_exempts_flat_parameters_and_clips_at_one(tiny_world, manifests, tmp_path, spies) -> None:
    _train(tiny_world, manifests["plain"], tmp_path / "default", "--max-steps", "1")
    [optimizer] = spies["optimizers"]
    decay, flat = optimizer.param_groups
    assert decay["weight_decay"] == 0.05 and flat["weight_decay"] == 0.0 and flat["params"]
    assert all(p.ndim >= 2 for p in decay["params"])
    assert spies["clips"] == [1.0]
    record = json.loads((tmp_path / "default" / "train_config.json").read_text())
    assert record["resolved"] == {"decay_all": False, "grad_clip": 1.0, "precision": "no"}


def test_flags_override_the_recipe(tiny_world, manifests, tmp_path, spies) -> None:
    out = tmp_path / "mixed"
    _train(tiny_world, manifests["plain"], out, "--recipe", "reference", "--max-steps", "1", "--grad-clip", "0.5",
           "--no-decay-all", "--precision", "no")
    assert len(spies["optimizers"][0].param_groups) == 2 and spies["clips"] == [0.5]
    record = json.loads((out / "train_config.json").read_text())
    assert record["resolved"] == {"decay_all": False, "grad_clip": 0.5, "precision": "no"}
    _train(tiny_world, manifests["plain"], tmp_path / "noclip", "--max-steps", "1", "--grad-clip", "0")
    assert spies["clips"] == [0.5]  # --grad-clip 0 turns clipping off under the default recipe


def test_reference_recipe_trains_baselines_with_bf16_weights(tiny_world, manifests, tmp_path) -> None:
    out = tmp_path / "global"
    _train(tiny_world, manifests["plain"], out, "--recipe", "reference", "--method", "global", "--max-steps", "1",
           "--lr", "1e-3")
    record = json.loads((out / "train_config.json").read_text())
    assert record["resolved"]["precision"] == "bf16-weights"
    weights = load_file(str(out / "model.safetensors"))
    assert all(w.dtype == torch.float32 for w in weights.values())  # exported as a plain fp32 CLIP
    assert all(torch.equal(w.to(torch.bfloat16).float(), w) for w in weights.values())  # values bf16 held


# ----------------------------------------------------------------------------- 13.4 two-stage training


def test_model_help_says_stage_two_starts_a_fresh_optimizer() -> None:
    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = " ".join(train_parser.format_help().split())
    assert "fresh optimizer and schedule" in help_text


def test_stage_two_from_a_run_folder_carries_no_optimizer_state(tiny_world, manifests, tmp_path) -> None:
    stage1 = tmp_path / "stage1"
    _train(tiny_world, manifests["plain"], stage1, "--max-steps", "2", "--checkpoint-every", "1", "--lr", "1e-3")
    assert list((stage1 / "checkpoints").glob("step-*/optimizer*"))  # optimizer state is there to be (not) used
    bare = tmp_path / "bare"
    bare.mkdir()
    for item in stage1.iterdir():
        if item.is_file() and item.name not in ("train_config.json", "metrics.jsonl"):
            shutil.copy(item, bare / item.name)
    _train(tiny_world, manifests["plain"], tmp_path / "stage2", "--max-steps", "1", "--lr", "1e-3", model=stage1)
    _train(tiny_world, manifests["plain"], tmp_path / "fresh", "--max-steps", "1", "--lr", "1e-3", model=bare)
    stage2, fresh = load_file(str(tmp_path / "stage2" / "model.safetensors")), load_file(
        str(tmp_path / "fresh" / "model.safetensors"))
    assert stage2.keys() == fresh.keys() and all(torch.equal(stage2[k], fresh[k]) for k in fresh)
    steps = [json.loads(line)["step"] for line in (tmp_path / "stage2" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1]


def test_resume_restores_separate_tsl_heads_from_the_checkpoint(tiny_world, manifests, tmp_path, monkeypatch,
                                                                crash_at_step) -> None:
    args = ("--tsl-heads", "separate", "--max-steps", "3", "--checkpoint-every", "1", "--lr", "1e-3")
    _train(tiny_world, manifests["plain"], tmp_path / "full", *args)
    crash_at_step(3)
    assert main(["train", "--model", str(tiny_world.model), "--data", str(manifests["plain"]), "--out",
                 str(tmp_path / "crashed"), "--batch-size", "2", "--max-text-len", "40", "--keep-positions", "4",
                 "--num-workers", "0", "--no-progress", *args]) == 130
    monkeypatch.undo()
    _train(tiny_world, manifests["plain"], tmp_path / "crashed", *args, "--resume")
    full = load_file(str(tmp_path / "full" / "tsl_heads.safetensors"))
    resumed = load_file(str(tmp_path / "crashed" / "tsl_heads.safetensors"))
    assert not torch.equal(full["vision_proj.weight"], load_file(str(tmp_path / "full" / "model.safetensors"))[
        "visual_projection.weight"])
    for key, value in full.items():
        assert torch.allclose(resumed[key], value, atol=1e-6, rtol=0), key


def test_top_k_pairs_train_on_what_goalclip_mine_writes(tiny_world, tmp_path, capsys) -> None:
    mined = tmp_path / "mined.jsonl"
    assert main(["mine", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--regions", "flism",
                 "--boxes", str(tiny_world.boxes), "--out", str(mined), "--num-workers", "0", "--no-progress"]) == 0
    records = [json.loads(line) for line in mined.read_text().splitlines()]
    assert all(len(r["candidates"]) > 1 and r["candidates"][0] == r["local"] for r in records)
    out = tmp_path / "topk"
    _train(tiny_world, mined, out, "--local-pairs", "3", "--pair-weighting", "similarity", "--max-steps", "1")
    [metrics] = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 1 < metrics["local_pairs"] <= 3


# The weighted losses under 2 gloo processes (uneven pair counts, as top-k batches have) must equal
# one process on the whole batch: loss = mean over ranks, gradients = DDP's average. The same code
# (two linear "towers", 8 weighted pairs, 2 masked TSL rows) runs in the test and in each rank.
_WEIGHTED_SETUP = r'''
import torch
from goalclip.training.losses import contrastive_loss, tsl_loss

def weighted_setup():
    torch.manual_seed(0)
    towers = torch.nn.ModuleDict({"image": torch.nn.Linear(6, 4), "text": torch.nn.Linear(5, 4)})
    data = {"image": torch.randn(8, 6), "text": torch.randn(8, 5), "pooled": torch.randn(8, 6),
            "valid": torch.tensor([1, 1, 0, 1, 1, 1, 0, 1], dtype=torch.bool),
            "weight": torch.tensor([0.5, 0.3, 0.2, 1.0, 0.6, 0.4, 1.0, 1.0]),
            "owner": torch.tensor([0, 0, 0, 1, 2, 3, 3, 4])}  # each pair's image (no image spans the ranks)
    return towers, data

def weighted_loss(towers, data):
    image, text = towers["image"](data["image"]), towers["text"](data["text"])
    local = contrastive_loss(image, text, torch.tensor(10.0), weights=data["weight"])
    same_image = contrastive_loss(image, text, torch.tensor(10.0), weights=data["weight"], groups=data["owner"])
    pooled = towers["image"](data["pooled"])
    tsl, _ = tsl_loss(pooled, text, data["valid"], weights=data["weight"])
    identity, _ = tsl_loss(pooled, text, data["valid"], weights=data["weight"], tsl_target="identity",
                           groups=data["owner"])
    return local + tsl + same_image + identity
'''
_WEIGHTED_RANK = r'''
import sys
from datetime import timedelta
import torch, torch.distributed as dist
sys.path.insert(0, sys.argv[2])
from weighted_case import weighted_loss, weighted_setup
out = sys.argv[1]
dist.init_process_group("gloo", timeout=timedelta(seconds=60))  # env:// from torchrun
rank, world = dist.get_rank(), dist.get_world_size()
towers, data = weighted_setup()
rows = slice(0, 5) if rank == 0 else slice(5, None)
loss = weighted_loss(towers, {k: v[rows] for k, v in data.items()})
loss.backward()
for param in towers.parameters():  # what DDP does: average the gradients over processes
    dist.all_reduce(param.grad)
    param.grad /= world
mean = loss.detach().clone()
dist.all_reduce(mean)
if rank == 0:
    torch.save({"loss": float(mean) / world, "grads": {n: p.grad for n, p in towers.named_parameters()}}, out)
dist.barrier()  # no rank tears the group down while its peer still works
dist.destroy_process_group()
'''


@pytest.mark.multiprocess
def test_weighted_losses_under_two_processes_equal_one_process(tmp_path, launch_ranks) -> None:
    out = tmp_path / "rank0.pt"
    (tmp_path / "weighted_case.py").write_text(_WEIGHTED_SETUP)
    (tmp_path / "weighted_rank.py").write_text(_WEIGHTED_RANK)
    done = launch_ranks([tmp_path / "weighted_rank.py", out, tmp_path], timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    got = torch.load(out, weights_only=True)
    spec = importlib.util.spec_from_file_location("weighted_case", tmp_path / "weighted_case.py")
    case = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(case)
    towers, data = case.weighted_setup()
    loss = case.weighted_loss(towers, data)
    loss.backward()
    assert got["loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
    for name, param in towers.named_parameters():
        assert torch.allclose(got["grads"][name], param.grad, atol=1e-6, rtol=0), name


def test_a_record_from_before_recipes_keeps_its_meaning() -> None:
    """Before recipes, ``grad_clip: null`` meant no clipping; read back, it must not become the recipe's 1.0."""
    from goalclip.training.config import TrainConfig

    old = {"model": "m", "data": "d", "out": "o", "grad_clip": None, "precision": "no"}
    assert TrainConfig.from_dict(old).resolved() == {"decay_all": False, "grad_clip": 0.0, "precision": "no"}
    new = {**old, "recipe": "goalclip"}
    assert TrainConfig.from_dict(new).resolved()["grad_clip"] == 1.0
