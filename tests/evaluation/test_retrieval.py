"""The eval harness against an independent computation on a tiny world of drawn shapes.

The reference side encodes with the model directly (one processor call, one tokenizer call,
no batching, sorting, sharding or caching) and scores with plain Python loops, so a wrong
ground-truth index, a shifted caption after an excluded image or a stale cache shows up as a
metric mismatch.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from goalclip.cli import main
from goalclip.evaluation import gallery
from goalclip.evaluation import retrieval as ev
from goalclip.core.manifest import ManifestError, write_jsonl
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models.clip import load_clip, save_clip
from goalclip.models.embed import tokenize

SHAPES = [
    ("red", "square"),
    ("blue", "circle"),
    ("green", "square"),
    ("yellow", "circle"),
    ("purple", "square"),
    ("orange", "circle"),
]
FILLER = "it sits in the middle of a plain white picture with nothing else around it at all"


def _caption(colour: str, shape: str, variant: int = 0) -> str:
    return f"a {colour} {shape}. " + ("" if variant == 0 else "seen from above. ") + FILLER + "."


def _draw(path: Path, colour: str, shape: str) -> None:
    image = Image.new("RGB", (48, 40), "white")
    draw = ImageDraw.Draw(image)
    (draw.rectangle if shape == "square" else draw.ellipse)((8, 6, 36, 34), fill=colour)
    image.save(path)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("world")
    (root / "images").mkdir()
    for i, (colour, shape) in enumerate(SHAPES):
        _draw(root / "images" / f"{i}.png", colour, shape)
    texts = [_caption(c, s, v) for c, s in SHAPES for v in (0, 1)] + [f"the {c} {s}" for c, s in SHAPES]
    models = []
    for seed in (0, 1):
        bundle = build_tiny_clip(
            texts, image_size=32, patch_size=8, width=64, layers=2, heads=2,
            projection_dim=32, context_length=16, vocab_size=300, seed=seed,
        )
        models.append(str(save_clip(bundle, root / f"model{seed}")))
    return {"root": root, "models": models}


def _single(root: Path, name: str = "single.jsonl", missing: int | None = None) -> str:
    records = [
        {"id": f"img{i}", "image": f"images/{'gone' if i == missing else i}.png", "caption": _caption(c, s)}
        for i, (c, s) in enumerate(SHAPES)
    ]
    write_jsonl(root / name, records)
    return str(root / name)


def _multi(root: Path) -> str:
    # Uneven caption counts, so a mapping that assumes k captions per image would be caught.
    records = [
        {
            "id": f"img{i}",
            "image": f"images/{i}.png",
            "captions": [_caption(c, s, 0), _caption(c, s, 1), f"the {c} {s}"][: 1 + i % 3],
        }
        for i, (c, s) in enumerate(SHAPES)
    ]
    write_jsonl(root / "multi.jsonl", records)
    return str(root / "multi.jsonl")


def _boxes(i: int) -> list[float]:
    return [4.5, 2.0, 30.0 + i, 38.0]


def _joint(root: Path) -> str:
    records = [
        {
            "id": f"img{i}",
            "image": f"images/{i}.png",
            "caption": _caption(c, s),
            "local": {"sentence": f"the {c} {s}", "box": _boxes(i), "score": 0.3, "source": "grid"},
        }
        for i, (c, s) in enumerate(SHAPES)
    ]
    write_jsonl(root / "joint.jsonl", records)
    return str(root / "joint.jsonl")


# ----------------------------------------------------------------------------- reference side


@torch.no_grad()
def _reference_embeddings(model_dir: str, images: list[Image.Image], texts: list[str]):
    bundle = load_clip(model_dir)
    model = bundle.model.eval()
    pixels = bundle.image_processor(images=images, return_tensors="pt")["pixel_values"]
    image_embeds = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
    tokens = tokenize(bundle, texts)
    text_embeds = F.normalize(
        model.get_text_features(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]).pooler_output,
        dim=-1,
    )
    return image_embeds, text_embeds


def _reference_recall(sim: torch.Tensor, text_image: list[int], ks: list[int]) -> dict[str, float]:
    n_images, n_texts = sim.shape
    image_rank, text_rank = [], []
    for i in range(n_images):
        order = sorted(range(n_texts), key=lambda t: -float(sim[i, t]))
        image_rank.append(min(pos for pos, t in enumerate(order) if text_image[t] == i) + 1)
    for t in range(n_texts):
        order = sorted(range(n_images), key=lambda i: -float(sim[i, t]))
        text_rank.append(order.index(text_image[t]) + 1)
    out = {}
    for name, ranks in (("i2t", image_rank), ("t2i", text_rank)):
        for k in ks:
            out[f"{name}@{k}"] = 100.0 * sum(r <= k for r in ranks) / len(ranks)
    return out


def _reference_map(sim: torch.Tensor, image_groups: list[int], text_groups: list[int], k: int) -> dict[str, float]:
    def mean_ap(scores: torch.Tensor, query_groups: list[int], gallery_groups: list[int]) -> float:
        aps = []
        for q, group in enumerate(query_groups):
            order = sorted(range(len(gallery_groups)), key=lambda g: -float(scores[q, g]))[:k]
            relevant = sum(g == group for g in gallery_groups)
            hits, total = 0, 0.0
            for pos, g in enumerate(order, start=1):
                if gallery_groups[g] == group:
                    hits += 1
                    total += hits / pos
            aps.append(total / min(k, relevant))
        return 100.0 * sum(aps) / len(aps)

    return {
        f"i2t_map@{k}": mean_ap(sim, image_groups, text_groups),
        f"t2i_map@{k}": mean_ap(sim.T, text_groups, image_groups),
    }


def _assert_close(got: dict[str, float], want: dict[str, float]) -> None:
    assert got.keys() == want.keys()
    for key in want:
        assert got[key] == pytest.approx(want[key], abs=1e-6), key


def _config(world: dict, data: str, **kwargs) -> ev.EvalConfig:
    kwargs.setdefault("progress", False)
    kwargs.setdefault("batch_size", 4)
    return ev.EvalConfig(models=[world["models"][0]], data=data, **kwargs)


# ----------------------------------------------------------------------------- tests


def test_single_caption_matches_reference_and_warns_once_about_truncation(world, caplog):
    data = _single(world["root"])
    with caplog.at_level(logging.WARNING, logger="goalclip"):
        results = ev.evaluate(_config(world, data))
    images = [Image.open(world["root"] / "images" / f"{i}.png").convert("RGB") for i in range(6)]
    texts = [_caption(c, s) for c, s in SHAPES]
    img, txt = _reference_embeddings(world["models"][0], images, texts)
    assert results["ks"] == [1, 5, 25, 50]
    _assert_close(results["models"][0]["metrics"], _reference_recall(img @ txt.T, list(range(6)), [1, 5, 25, 50]))
    truncation = [r.getMessage() for r in caplog.records if "truncated" in r.getMessage()]
    assert len(truncation) == 1 and "retrieval 6 of 6" in truncation[0] and "16-token" in truncation[0]
    assert results["models"][0]["truncated_texts"] == {"retrieval": 6}


def test_multi_caption_uses_each_texts_own_image(world):
    data = _multi(world["root"])
    results = ev.evaluate(_config(world, data, batch_size=3))
    texts, text_image = [], []
    for i, (c, s) in enumerate(SHAPES):
        caps = [_caption(c, s, 0), _caption(c, s, 1), f"the {c} {s}"][: 1 + i % 3]
        texts += caps
        text_image += [i] * len(caps)
    images = [Image.open(world["root"] / "images" / f"{i}.png").convert("RGB") for i in range(6)]
    img, txt = _reference_embeddings(world["models"][0], images, texts)
    assert results["ks"] == [1, 5, 10]
    assert results["sets"]["retrieval"]["text_items"] == len(texts) == 12
    _assert_close(results["models"][0]["metrics"], _reference_recall(img @ txt.T, text_image, [1, 5, 10]))


def test_missing_image_is_excluded_with_its_captions(world, caplog):
    data = _single(world["root"], "missing.jsonl", missing=2)
    with caplog.at_level(logging.WARNING, logger="goalclip"):
        results = ev.evaluate(_config(world, data, ks=[1, 2, 5]))
    kept = [0, 1, 3, 4, 5]
    images = [Image.open(world["root"] / "images" / f"{i}.png").convert("RGB") for i in kept]
    texts = [_caption(*SHAPES[i]) for i in kept]
    img, txt = _reference_embeddings(world["models"][0], images, texts)
    _assert_close(results["models"][0]["metrics"], _reference_recall(img @ txt.T, list(range(5)), [1, 2, 5]))
    assert results["sets"]["retrieval"] == {
        "manifest": data, "records": 5, "image_items": 5, "text_items": 5, "excluded_ids": ["img2"],
    }
    excluded = [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]
    assert len(excluded) == 1 and "1 of 6 images" in excluded[0] and "img2" in excluded[0]


def test_joint_items_and_map(world):
    data, joint = _single(world["root"]), _joint(world["root"])
    results = ev.evaluate(_config(world, data, joint=joint))
    assert results["sets"]["joint"]["image_items"] == 12
    assert results["sets"]["joint"]["text_items"] == 12
    images, texts, groups = [], [], []
    for i, (c, s) in enumerate(SHAPES):
        whole = Image.open(world["root"] / "images" / f"{i}.png").convert("RGB")
        x1, y1, x2, y2 = _boxes(i)
        images += [whole, whole.crop((int(x1), int(y1), int(x2), int(y2)))]
        texts += [_caption(c, s), f"the {c} {s}"]
        groups += [i, i]
    img, txt = _reference_embeddings(world["models"][0], images, texts)
    got = {k: v for k, v in results["models"][0]["metrics"].items() if "map" in k}
    _assert_close(got, _reference_map(img @ txt.T, groups, groups, 10))


def test_joint_requires_local_pairs(world):
    with pytest.raises(ManifestError, match="img0"):
        ev.evaluate(_config(world, _single(world["root"]), joint=_single(world["root"], "nolocal.jsonl")))


def test_duplicate_ids_are_an_error(world):
    path = world["root"] / "dup.jsonl"
    write_jsonl(path, [{"id": "x", "image": "images/0.png", "caption": "a"}] * 2)
    with pytest.raises(ManifestError, match="duplicate id 'x'"):
        ev.evaluate(_config(world, str(path)))


def test_cache_hit_does_not_encode(world, tmp_path, monkeypatch):
    data, joint = _single(world["root"]), _joint(world["root"])
    config = _config(world, data, joint=joint, cache_dir=str(tmp_path / "cache"))
    first = ev.evaluate(config)
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2

    def boom(*args, **kwargs):
        raise AssertionError("encoded although the cache holds the embeddings")

    for module, name in ((gallery, "embed_pixels"), (gallery, "embed_text_strings_counted"), (ev, "load_encoder")):
        monkeypatch.setattr(module, name, boom)
    second = ev.evaluate(config)
    assert second["models"][0]["metrics"] == first["models"][0]["metrics"]
    assert second["models"][0]["from_cache"] and not first["models"][0]["from_cache"]
    # A different precision is a different key: it must encode (and so hit the patched encoder).
    with pytest.raises(AssertionError, match="encoded although"):
        ev.evaluate(_config(world, data, cache_dir=str(tmp_path / "cache"), precision="bf16"))


def test_two_models_one_table_and_cli(world, tmp_path, capsys):
    out = tmp_path / "metrics.json"
    assert main(
        ["eval", "--model", world["models"][0], "--model", world["models"][1], "--data", _single(world["root"]),
         "--joint", _joint(world["root"]), "--ks", "1", "5", "--device", "cpu", "--out", str(out), "--no-progress"]
    ) == 0
    results = json.loads(out.read_text())
    table = ev.markdown_table(results).splitlines()
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[:-1] == table
    assert printed[-1].startswith("evaluated 2 model(s); retrieval: 6 images / 6 texts; joint: 12 images")
    assert table[0] == "| model | i2t@1 | i2t@5 | t2i@1 | t2i@5 | i2t_map@10 | t2i_map@10 |"
    # rows are named by folder when the folder names tell the models apart
    assert [line.split(" | ")[0] for line in table[2:]] == [f"| {Path(m).name}" for m in world["models"]]
    assert ev.row_names(["/a/m", "/b/m"]) == ["/a/m", "/b/m"]
    assert json.loads(out.read_text())["models"][1]["model"] == world["models"][1]
    # Different random models give different numbers: each row was encoded with its own model.
    assert results["models"][0]["metrics"] != results["models"][1]["metrics"]


def test_max_text_len_caps_and_enters_the_cache_key(world, tmp_path):
    data = _single(world["root"])
    short = ev.evaluate(_config(world, data, max_text_len=6, cache_dir=str(tmp_path)))
    long = ev.evaluate(_config(world, data, max_text_len=64, cache_dir=str(tmp_path)))
    assert short["models"][0]["text_len"] == 6
    assert long["models"][0]["text_len"] == 16
    assert len(list(tmp_path.glob("*.safetensors"))) == 2
