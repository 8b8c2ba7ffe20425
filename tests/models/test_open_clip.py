"""open_clip models as ``goalclip eval`` rows (``--model open_clip:...``), against open_clip run by hand.

The reference side loads the same checkpoint with open_clip itself, embeds with its
``encode_image`` / ``encode_text`` (its own eval transform and tokenizer, one call each) and
ranks by hand, so the shared encode path (batching, length sorting, cropping, caching) must give
exactly what open_clip gives. The tiny architecture is registered from a JSON config, as a user
registers a custom one; its text tower keeps OpenAI's 49,408-token vocabulary so open_clip's own
BPE tokenizer (shipped in its wheel) is used unchanged.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from goalclip.cli import main
from goalclip.evaluation import metrics
from goalclip.evaluation import retrieval as ev
from goalclip.evaluation.cache import cache_path
from goalclip.evaluation.items import retrieval_items

open_clip = pytest.importorskip("open_clip")

TINY_ARCH = "goalclip-tiny-open-clip"
TINY_CFG = {
    "embed_dim": 24,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
COLOURS = {"red": (220, 40, 40), "blue": (40, 90, 225), "green": (40, 165, 60)}


@pytest.fixture(scope="module")
def oc(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One random tiny open_clip model as a checkpoint file (ARCH:PATH) and as a local-dir folder."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("open_clip")
    (root / "configs").mkdir()
    (root / "configs" / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY_ARCH)
    with torch.no_grad():  # spread the embeddings: default init leaves tiny towers nearly constant
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    checkpoint = root / "tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, checkpoint)
    folder = root / "tiny-dir"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return {
        "root": root,
        "checkpoint": checkpoint,
        "spec": f"open_clip:{TINY_ARCH}:{checkpoint}",
        "dir_spec": f"open_clip:local-dir:{folder}",
    }


@torch.no_grad()
def _reference(oc: dict, images: list[Image.Image], texts: list[str], context: int | None = None):
    """Normalised embeddings straight from open_clip: its transform, its tokenizer, one call each."""
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH, pretrained=str(oc["checkpoint"]))
    model.eval()
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    tokens = tokenizer(texts, context_length=context) if context else tokenizer(texts)
    tokens = F.pad(tokens, (0, model.context_length - tokens.shape[1]))
    image = F.normalize(model.encode_image(torch.stack([preprocess(im) for im in images])), dim=-1)
    return image, F.normalize(model.encode_text(tokens), dim=-1)


def _recall_by_hand(sim: torch.Tensor, ks: list[int]) -> dict[str, float]:
    """One caption per image, caption i of image i: rank = how many others score as high (ties count against)."""
    own = sim.diag()
    i2t = (sim >= own[:, None]).sum(1) - 1
    t2i = (sim >= own[None, :]).sum(0) - 1
    out = {f"i2t@{k}": 100.0 * (i2t < k).double().mean().item() for k in ks}
    out.update({f"t2i@{k}": 100.0 * (t2i < k).double().mean().item() for k in ks})
    return out


def _world_images(tiny_world) -> tuple[list[Image.Image], list[str], list[list[float]], list[str]]:
    records = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    images = [Image.open(tiny_world.root / r["image"]).convert("RGB") for r in records]
    return images, [r["caption"] for r in records], [r["local"]["box"] for r in records], \
        [r["local"]["sentence"] for r in records]


def _eval(argv: list[str], out: Path) -> dict:
    assert main(["eval", *argv, "--out", str(out), "--no-progress"]) == 0
    return json.loads(out.read_text())


# ----------------------------------------------------------------------------- retrieval


def test_open_clip_row_equals_open_clip_by_hand(tiny_world, oc, tmp_path):
    ks = [1, 2, 5]
    results = _eval(["--model", oc["spec"], "--data", str(tiny_world.captions), "--ks", "1", "2", "5",
                     "--batch-size", "3"], tmp_path / "m.json")
    images, captions, _, _ = _world_images(tiny_world)
    image, text = _reference(oc, images, captions)
    row = results["models"][0]
    assert row["metrics"] == pytest.approx(_recall_by_hand(image @ text.T, ks), abs=1e-9)
    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    assert row["truncated_texts"] == {"retrieval": sum(len(tokenizer.encode(c)) + 2 > 16 for c in captions)}
    assert row["text_len"] == 16
    # Texts cut shorter than the model's context: cut by open_clip's tokenizer, zero-padded as it pads.
    short = _eval(["--model", oc["spec"], "--data", str(tiny_world.captions), "--ks", "1", "2", "5",
                   "--max-text-len", "13"], tmp_path / "short.json")
    image, text = _reference(oc, images, captions, context=13)  # 13 tokens still reach the colour and shape
    assert short["models"][0]["metrics"] == pytest.approx(_recall_by_hand(image @ text.T, ks), abs=1e-9)
    assert short["models"][0]["metrics"] != row["metrics"]
    assert short["models"][0]["text_len"] == 13


def test_hf_and_open_clip_rows_in_one_table_with_joint_and_cache(tiny_world, oc, tmp_path, capsys):
    argv = ["--model", str(tiny_world.model), "--model", oc["dir_spec"], "--data", str(tiny_world.captions),
            "--joint", str(tiny_world.mined), "--ks", "1", "5", "--cache-dir", str(tmp_path / "cache")]
    results = _eval(argv, tmp_path / "both.json")
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| model | i2t@1 | i2t@5 | t2i@1 | t2i@5 | i2t_map@10 | t2i_map@10 |"
    assert [line.split(" | ")[0] for line in table[2:4]] == ["| model", f"| {oc['dir_spec']}"]
    hf_alone = _eval(["--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--joint",
                      str(tiny_world.mined), "--ks", "1", "5"], tmp_path / "hf.json")
    assert results["models"][0]["metrics"] == hf_alone["models"][0]["metrics"]

    images, captions, boxes, sentences = _world_images(tiny_world)
    image, text = _reference(oc, images, captions)
    got = results["models"][1]["metrics"]
    assert {k: got[k] for k in ("i2t@1", "i2t@5", "t2i@1", "t2i@5")} == pytest.approx(
        _recall_by_hand(image @ text.T, [1, 5]), abs=1e-9)
    crops = [im.crop(tuple(int(v) for v in box)) for im, box in zip(images, boxes)]
    joint_images = [x for pair in zip(images, crops) for x in pair]
    joint_texts = [x for pair in zip(captions, sentences) for x in pair]
    groups = torch.arange(len(images)).repeat_interleave(2)
    image, text = _reference(oc, joint_images, joint_texts)
    want = metrics.joint_map_at_k(image @ text.T, groups, groups, k=10)
    assert {k: got[k] for k in want} == pytest.approx(want, abs=1e-9)

    again = _eval(argv, tmp_path / "again.json")
    assert [row["from_cache"] for row in again["models"]] == [True, True]
    assert [row["metrics"] for row in again["models"]] == [row["metrics"] for row in results["models"]]


def test_checkpoint_and_local_dir_forms_agree_and_the_cache_keys_on_the_file(tiny_world, oc, tmp_path):
    by_file = _eval(["--model", oc["spec"], "--data", str(tiny_world.captions)], tmp_path / "a.json")
    by_dir = _eval(["--model", oc["dir_spec"], "--data", str(tiny_world.captions)], tmp_path / "b.json")
    assert by_file["models"][0]["metrics"] == by_dir["models"][0]["metrics"]

    checkpoint = tmp_path / "copy.pt"
    checkpoint.write_bytes(oc["checkpoint"].read_bytes())
    spec = f"open_clip:{TINY_ARCH}:{checkpoint}"
    config = ev.EvalConfig(models=[spec], data=str(tiny_world.captions), cache_dir=str(tmp_path / "cache"))
    items = retrieval_items(config.data)
    before = cache_path(config, spec, items)
    checkpoint.write_bytes(oc["checkpoint"].read_bytes() + b"\0")  # a rewritten checkpoint
    assert cache_path(config, spec, items) != before


# ----------------------------------------------------------------------------- classify


def test_classify_with_an_open_clip_row(oc, tmp_path):
    root = tmp_path / "colours"
    images, labels = [], []
    for label, (name, rgb) in enumerate(sorted(COLOURS.items())):
        (root / name).mkdir(parents=True)
        for j in range(3):
            image = Image.new("RGB", (40, 32), tuple(max(0, c - 40 * j) for c in rgb))
            image.save(root / name / f"{j}.png")
            images.append(image)
            labels.append(label)
    templates = ["a {} picture.", "a photo of something {}."]
    (tmp_path / "templates.txt").write_text("\n".join(templates) + "\n")
    results = _eval(["--task", "classify", "--model", oc["spec"], "--data", str(root), "--templates",
                     str(tmp_path / "templates.txt"), "--ks", "1", "2"], tmp_path / "acc.json")

    classes = sorted(COLOURS)
    prompts = [t.format(c) for c in classes for t in templates]
    image, text = _reference(oc, images, prompts)
    weights = F.normalize(text.view(len(classes), len(templates), -1).mean(1), dim=-1)
    scores = image @ weights.T
    own = scores[torch.arange(len(labels)), torch.tensor(labels)]
    rank = (scores >= own[:, None]).sum(1) - 1
    want = {f"top{k}": 100.0 * (rank < k).double().mean().item() for k in (1, 2)}
    assert results["models"][0]["metrics"] == pytest.approx(want, abs=1e-9)


# ----------------------------------------------------------------------------- the hub path and errors


def test_hub_spec_goes_to_open_clip_as_arch_and_tag(tiny_world, oc, tmp_path, monkeypatch):
    """``open_clip:ARCH/TAG`` is what users run; the download itself is open_clip's (no network here)."""
    calls = []
    create, get_tokenizer = open_clip.create_model_and_transforms, open_clip.get_tokenizer

    def fake_create(name, pretrained=None, **kwargs):
        calls.append((name, pretrained))
        return create(TINY_ARCH, pretrained=str(oc["checkpoint"]), **kwargs)

    monkeypatch.setattr(open_clip, "create_model_and_transforms", fake_create)
    monkeypatch.setattr(open_clip, "get_tokenizer", lambda name, **kw: get_tokenizer(TINY_ARCH, **kw))
    hub = _eval(["--model", "open_clip:EVA02-B-16/merged2b_s8b_b131k", "--data", str(tiny_world.captions)],
                tmp_path / "hub.json")
    assert calls == [("EVA02-B-16", "merged2b_s8b_b131k")]
    local = _eval(["--model", oc["spec"], "--data", str(tiny_world.captions)], tmp_path / "local.json")
    assert hub["models"][0]["metrics"] == local["models"][0]["metrics"]
    assert hub["models"][0]["model"] == "open_clip:EVA02-B-16/merged2b_s8b_b131k"


@pytest.mark.parametrize(
    ("spec", "extra", "message"),
    [
        ("open_clip:no-such-arch/laion2b_s34b_b88k", [], "unknown open_clip architecture 'no-such-arch'"),
        (f"open_clip:{TINY_ARCH}", [], "open_clip:ARCH/TAG"),
        ("open_clip:", [], "open_clip:ARCH/TAG"),
        (f"open_clip:{TINY_ARCH}/laion2b_s34b_b88k", [], f"no pretrained tag 'laion2b_s34b_b88k' for {TINY_ARCH}"),
        ("open_clip:ViT-B-16/no_such_tag", [], "known tags: "),
        (f"open_clip:{TINY_ARCH}:/no/such/checkpoint.pt", [], "no checkpoint file /no/such/checkpoint.pt"),
        ("SPEC", ["--context", "40"], "cannot stretch the text positions of an open_clip or BLIP-2 model"),
    ],
)
def test_clear_errors(tiny_world, oc, capsys, spec, extra, message):
    spec = oc["spec"] if spec == "SPEC" else spec
    assert main(["eval", "--model", spec, "--data", str(tiny_world.captions), "--no-progress", *extra]) == 1
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_checkpoint_that_does_not_fit_names_the_keys_on_one_line(tiny_world, oc, tmp_path, capsys):
    state = torch.load(oc["checkpoint"], weights_only=True)["state_dict"]
    del state["module.text_projection"]
    torch.save(state, tmp_path / "broken.pt")
    spec = f"open_clip:{TINY_ARCH}:{tmp_path / 'broken.pt'}"
    assert main(["eval", "--model", spec, "--data", str(tiny_world.captions), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip()
    assert "open_clip cannot load it" in err and 'Missing key(s) in state_dict: "text_projection"' in err
    assert len(err.splitlines()) == 1


def test_missing_extra_names_it(tiny_world, oc, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "open_clip", None)  # what an install without the extra looks like
    assert main(["eval", "--model", oc["spec"], "--data", str(tiny_world.captions), "--no-progress"]) == 1
    assert "pip install 'goalclip[open_clip]'" in capsys.readouterr().err


def test_commands_that_need_transformers_internals_refuse_open_clip(oc):
    from goalclip.models.clip import ModelLoadError, load_clip

    with pytest.raises(ModelLoadError, match="work only in 'goalclip eval'"):
        load_clip(oc["spec"])


def test_other_tokenizers_count_with_their_own_vocabulary_and_are_never_cut_short(tiny_world, oc):
    """SigLIP-style open_clip tokenizers wrap a transformers tokenizer; here one is built offline from a folder."""
    from dataclasses import replace

    from transformers import AutoTokenizer

    from goalclip.models.embed import count_truncated, tokenize
    from goalclip.models.open_clip import OpenClipError, load_open_clip

    wrapped = open_clip.tokenizer.HFTokenizer(str(tiny_world.model), context_length=16)
    bundle = replace(load_open_clip(oc["spec"]), tokenizer=wrapped)
    texts = list(tiny_world.texts)
    lengths = [len(ids) for ids in AutoTokenizer.from_pretrained(tiny_world.model)(texts)["input_ids"]]
    assert count_truncated(bundle, texts, 12) == sum(n > 12 for n in lengths) > 0
    assert torch.equal(tokenize(bundle, texts)["input_ids"], wrapped(texts))
    with pytest.raises(OpenClipError, match="only for open_clip models with CLIP's tokenizer, not HFTokenizer"):
        tokenize(bundle, texts, 12)
