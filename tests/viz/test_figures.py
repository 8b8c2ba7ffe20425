"""Attention/PCA maps, retrieval grids and mined-pair pictures (goalclip.viz.figures)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from goalclip.cli import build_parser, main
from goalclip.viz import figures as viz
from goalclip.core.images import load_rgb, pixel_values
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models.clip import ClipBundle, load_clip, save_clip
from goalclip.models.embed import embed_pixels, embed_token_ids, model_view_box, tokenize

TEXTS = [
    "a red square in the top left of a dark picture",
    "a blue square on the right side of a dark picture",
    "a green square near the bottom of a grey image",
    "a yellow square in the middle. the rest is dark.",
] * 4
WORDS = sorted({w.strip(".") for t in TEXTS for w in t.split()})
DARK = (30, 30, 30)
BRIGHT = (250, 250, 250)


def _tiny(seed: int = 0) -> ClipBundle:
    return build_tiny_clip(TEXTS, image_size=32, patch_size=8, width=32, layers=2, heads=2, seed=seed)


def _scene(cell: tuple[int, int], size: tuple[int, int] = (32, 32), offset: int = 0, colour=BRIGHT) -> Image.Image:
    """A dark image with one bright 8x8 square on patch cell (row, col), shifted right by ``offset`` px."""
    image = Image.new("RGB", size, DARK)
    row, col = cell
    x, y = offset + 8 * col, 8 * row
    ImageDraw.Draw(image).rectangle((x, y, x + 7, y + 7), fill=colour)
    return image


def _spotlight(bundle: ClipBundle) -> ClipBundle:
    """Rewire a tiny CLIP so that, in the last layer, CLS attends to the brightest patch.

    Channel 0 of every patch embedding is the patch's summed (normalised) brightness: strongly
    positive for the bright square, strongly negative for the dark background; the CLS token's
    channel 0 is strongly negative. Layer 0 is made an identity (zero residual branches). In the
    last layer every query is the constant ``c * e0`` (per head) and every key reads channel 0,
    so the CLS row of the attention puts almost all its mass on the bright patch. The expected
    map is therefore known exactly in patch-grid coordinates, which a wrong CLS offset, a
    transposed grid, a patch-to-CLS column instead of the CLS row, or a crop mismatch would break.
    """
    vision = bundle.model.vision_model
    head_dim = vision.config.hidden_size // vision.config.num_attention_heads
    with torch.no_grad():
        vision.embeddings.patch_embedding.weight.zero_()
        vision.embeddings.patch_embedding.weight[0] = 1.0
        vision.embeddings.position_embedding.weight[:, 0] = 0.0
        vision.embeddings.class_embedding[0] = -300.0
        first = vision.encoder.layers[0]
        for linear in (first.self_attn.out_proj, first.mlp.fc2):
            linear.weight.zero_()
            linear.bias.zero_()
        last = vision.encoder.layers[-1].self_attn
        last.q_proj.weight.zero_()
        last.q_proj.bias.zero_()
        last.k_proj.weight.zero_()
        last.k_proj.bias.zero_()
        for head in range(vision.config.num_attention_heads):
            last.q_proj.bias[head * head_dim] = 10.0
            last.k_proj.weight[head * head_dim, 0] = 1.0
    return bundle


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("viz_models")
    return {
        "random": save_clip(_tiny(0), root / "random"),
        "other": save_clip(_tiny(1), root / "other"),
        "spotlight": save_clip(_spotlight(_tiny(0)), root / "spotlight"),
    }


def _manual_cls_attention(bundle: ClipBundle, pixels: torch.Tensor) -> torch.Tensor:
    """Last-layer CLS-to-patch attention recomputed from the layer's input with q/k projections."""
    vision = bundle.model.vision_model
    out = vision(pixel_values=pixels, output_hidden_states=True)
    layer = vision.encoder.layers[-1]
    x = layer.layer_norm1(out.hidden_states[-2])
    heads = vision.config.num_attention_heads
    n, t, d = x.shape
    q = layer.self_attn.q_proj(x).reshape(n, t, heads, d // heads).transpose(1, 2)
    k = layer.self_attn.k_proj(x).reshape(n, t, heads, d // heads).transpose(1, 2)
    weights = torch.softmax(q @ k.transpose(-1, -2) * (d // heads) ** -0.5, dim=-1)
    grid = math.isqrt(t - 1)
    return weights[:, :, 0, 1:].mean(dim=1).reshape(n, grid, grid)


@torch.no_grad()
def test_maps_are_the_models_attention_in_range_and_on_the_grid(model_dirs):
    bundle = load_clip(str(model_dirs["random"]), attn_implementation="eager")
    images = [_scene((0, 0)), _scene((1, 3)), _scene((3, 2), colour=(40, 90, 225))]
    attention, z = viz.attention_maps(bundle, images)
    colours = viz.pca_rgb(z, viz.shared_pca_clip([z]))
    assert attention.shape == (3, 4, 4) and colours.shape == (3, 4, 4, 3)
    assert attention.min() >= 0 and attention.max() <= 1
    assert colours.min() >= 0 and colours.max() <= 1
    assert torch.allclose(attention.amin(dim=(1, 2)), torch.zeros(3))
    assert torch.allclose(attention.amax(dim=(1, 2)), torch.ones(3))

    pixels = pixel_values(bundle.image_processor, images)
    reported = bundle.model.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1]
    from_output = viz.normalise_per_image(reported[:, :, 0, 1:].mean(dim=1).reshape(3, 4, 4))
    assert torch.allclose(attention, from_output, atol=1e-6)
    manual = viz.normalise_per_image(_manual_cls_attention(bundle, pixels[:1]))
    assert torch.allclose(attention[:1], manual, atol=1e-5)

    # A model loaded with sdpa is switched to eager for the call, gives the same maps, and is restored.
    sdpa = load_clip(str(model_dirs["random"]))
    assert sdpa.model.config._attn_implementation == "sdpa"
    again, z_again = viz.attention_maps(sdpa, images)
    assert sdpa.model.config._attn_implementation == "sdpa"
    assert torch.allclose(again, attention, atol=1e-5)
    assert torch.equal(z_again, viz.attention_maps(sdpa, images)[1])  # deterministic colours


@torch.no_grad()
def test_patch_kind_is_the_mean_attention_each_patch_receives_from_all_patches(model_dirs, tmp_path, capsys):
    bundle = load_clip(str(model_dirs["random"]), attn_implementation="eager")
    images = [_scene((0, 0)), _scene((1, 3))]
    attention, _ = viz.raw_maps(bundle, images, kind="patch")
    pixels = pixel_values(bundle.image_processor, images)
    weights = bundle.model.vision_model(pixel_values=pixels, output_attentions=True).attentions[-1]
    patches = weights.shape[-1] - 1
    by_loop = torch.zeros(2, patches)
    for j in range(patches):  # patch j receives, from each patch query i, averaged over heads then queries
        by_loop[:, j] = torch.stack([weights[:, :, 1 + i, 1 + j].mean(dim=1) for i in range(patches)]).mean(dim=0)
    assert torch.allclose(attention.reshape(2, -1), by_loop, atol=1e-6)
    cls, _ = viz.raw_maps(bundle, images, kind="cls")
    assert not torch.allclose(attention, cls)
    with pytest.raises(viz.VizError, match="attention kind"):
        viz.raw_maps(bundle, images, kind="rollout")
    image_file = tmp_path / "a.png"
    images[0].save(image_file)
    assert main(["viz", "attention", "--model", str(model_dirs["random"]), "--images", str(image_file),
                 "--kind", "patch", "--out", str(tmp_path / "att.png")]) == 0
    assert (tmp_path / "att.png").is_file()


def test_pca_zscores_are_principal_components_with_fixed_sign():
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 16, 8, generator=generator) * torch.tensor([5.0, 3.0, 2.0, 1, 1, 1, 1, 1])
    z = viz.pca_zscores(tokens)
    flat = z.reshape(-1, 3).double()
    assert torch.allclose(flat.var(dim=0), torch.ones(3, dtype=torch.float64), atol=1e-4)
    for j in range(3):
        assert flat[flat[:, j].abs().argmax(), j] > 0
    x = tokens.reshape(-1, 8).double()
    x = x - x.mean(dim=0)
    _, vectors = torch.linalg.eigh(x.T @ x)
    reference = x @ vectors[:, [-1, -2, -3]]
    reference = reference / reference.std(dim=0)
    assert torch.allclose(flat.abs(), reference.abs(), atol=1e-4)
    assert torch.equal(z, viz.pca_zscores(tokens.clone()))
    colours = viz.pca_rgb(z, viz.shared_pca_clip([z]))
    assert colours.shape == (2, 4, 4, 3) and 0 <= colours.min() and colours.max() <= 1


@torch.no_grad()
def test_attention_follows_the_bright_object_of_a_spotlight_model(model_dirs):
    """Can fail: the map must peak on the object's cell wherever it is, including off-centre crops."""
    bundle = load_clip(str(model_dirs["spotlight"]), attn_implementation="eager")
    cells = [(0, 0), (1, 3), (3, 2)]
    attention, z = viz.attention_maps(bundle, [_scene(cell) for cell in cells])
    colours = viz.pca_rgb(z, viz.shared_pca_clip([z]))
    for i, (row, col) in enumerate(cells):
        assert divmod(int(attention[i].argmax()), 4) == (row, col)
        others = attention[i].clone()
        others[row, col] = 0
        assert others.max() < 0.05
        # First principal component separates the bright patch: full red there, mid-grey elsewhere.
        red = colours[i, :, :, 0]
        assert red[row, col] > 0.9 and red[row, col] == red.max()
        assert (red > 0.75).sum() == 1

    # A 48x32 photo is centre-cropped to x in [8, 40): an object at x = 8..15 is the crop's column 0.
    wide = _scene((1, 0), size=(48, 32), offset=8)
    assert model_view_box(wide.size, bundle.image_processor) == (8.0, 0.0, 40.0, 32.0)
    wide_attention, _ = viz.attention_maps(bundle, [wide])
    assert divmod(int(wide_attention[0].argmax()), 4) == (1, 0)
    view = np.asarray(viz.model_view(wide, bundle.image_processor, 32))
    assert view[12, 4].tolist() == list(BRIGHT) and view[12, 20].tolist() == list(DARK)


def test_plot_attention_writes_a_png_for_several_models(model_dirs, tmp_path):
    paths = []
    for i, cell in enumerate([(0, 0), (2, 1)]):
        paths.append(str(tmp_path / f"scene{i}.png"))
        _scene(cell).save(paths[-1])
    out = tmp_path / "figs" / "attention.png"
    result = viz.plot_attention(
        [str(model_dirs["random"]), str(model_dirs["spotlight"])], paths, str(out), labels=["base", "spot"]
    )
    assert result["models"] == ["base", "spot"] and result["pca_clip"] > 0
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width > 600
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def _noise_world(folder: Path, n: int = 7) -> Path:
    """Distinct noisy images with distinct captions (no score ties), one record sharing another's image.

    Captions use only words the tiny tokenizer was trained on: an unknown word becomes the
    end-of-text token, where CLIP pools, and would make every caption embed the same.
    """
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        pixels = rng.integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i}.png")
        records.append(
            {
                "id": f"r{i}",
                "image": f"img{i}.png",
                "captions": [
                    " ".join(rng.choice(WORDS, 12)) + ". " + " ".join(rng.choice(WORDS, 6)) + ".",
                    " ".join(rng.choice(WORDS, 7)),
                ],
            }
        )
    records.append({"id": "dup", "image": "img0.png", "caption": "a yellow square in the middle."})
    manifest = folder / "data.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return manifest


@torch.no_grad()
def test_retrieval_frames_match_a_brute_force_ranking(model_dirs, tmp_path):
    manifest = _noise_world(tmp_path)
    models = [str(model_dirs["random"]), str(model_dirs["other"])]
    k = 3
    result = viz.plot_retrieval(models, manifest, tmp_path / "retrieval.png", queries=4, k=k, seed=3)
    assert (tmp_path / "retrieval.png").is_file()
    records = [json.loads(line) for line in manifest.read_text().splitlines()]
    by_id = {r["id"]: r for r in records}
    gallery = [str((tmp_path / f"img{i}.png").resolve()) for i in range(7)]
    assert result["gallery"] == gallery
    all_captions = [c for r in records for c in r.get("captions", [r.get("caption")])]
    caption_image = [int(r["image"][3]) for r in records for _ in r.get("captions", [r.get("caption")])]
    verdicts = []
    for name, source in zip(result["models"], models):
        bundle = load_clip(source)
        images = torch.cat(
            [embed_pixels(bundle.model, pixel_values(bundle.image_processor, [load_rgb(p)])) for p in gallery]
        )
        texts = [(by_id[q].get("captions") or [by_id[q]["caption"]])[0] for q in result["queries"]]
        tokens = tokenize(bundle, texts)
        sims = embed_token_ids(bundle.model, tokens["input_ids"], tokens["attention_mask"]) @ images.T
        order = sims.argsort(dim=1, descending=True)
        sorted_sims = sims.gather(1, order)
        assert (sorted_sims[:, : k + 1].diff(dim=1).abs() > 1e-6).all()  # no ties at the cut
        gt = [int(by_id[q]["image"][3]) for q in result["queries"]]
        expected_hits = [[int(i) == g for i in row[:k]] for row, g in zip(order, gt)]
        t2i = result["t2i"][name]
        assert t2i["topk"] == order[:, :k].tolist()
        assert t2i["frames"] == [["hit" if h else "miss" for h in row] for row in expected_hits]
        assert t2i["gt_rank"] == [int((order[q] == g).nonzero()) + 1 for q, g in enumerate(gt)]
        verdicts += [h for row in expected_hits for h in row]

        cap_tokens = tokenize(bundle, all_captions)
        cap = embed_token_ids(bundle.model, cap_tokens["input_ids"], cap_tokens["attention_mask"])
        cap_sims = images[gt[:3]] @ cap.T
        cap_order = cap_sims.argsort(dim=1, descending=True)[:, :3]
        assert (cap_sims.gather(1, cap_order).diff(dim=1).abs() > 1e-6).all()
        assert result["i2t"][name]["hits"] == [
            [caption_image[int(c)] == g for c in row] for row, g in zip(cap_order, gt[:3])
        ]
    assert any(verdicts) and not all(verdicts)  # both frame colours are exercised


def test_plot_pairs_draws_the_box_where_it_belongs(tmp_path):
    records = []
    for i, box in enumerate([[10, 6, 40, 30], [0, 20, 25, 48]]):
        Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / f"p{i}.png")
        records.append(
            {
                "id": f"pair/{i}",
                "image": f"p{i}.png",
                "caption": "A cat. A dog.",
                "local": {
                    "sentence": "A cat sits on a mat next to a very long sentence " * 3,
                    "box": box,
                    "score": 0.25 + i,
                    "source": "grid",
                },
            }
        )
    Image.new("RGB", (64, 48)).save(tmp_path / "plain.png")
    records.append({"id": "plain", "image": "plain.png", "caption": "No local pair."})
    manifest = tmp_path / "mined.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    files = viz.plot_pairs(manifest, tmp_path / "pairs", limit=10)
    assert [Path(f).name for f in files] == ["0000_pair_0.png", "0001_pair_1.png"]
    scale = viz.PAIR_IMAGE_SIDE / 64
    for path, record in zip(files, records):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        magenta = np.all(pixels == viz.BOX_COLOUR, axis=-1)
        ys, xs = np.nonzero(magenta)
        x1, y1, x2, y2 = (round(v * scale) for v in record["local"]["box"])
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, min(x2, 512), min(y2, 384))
        assert magenta[(y1 + y2) // 2, x1 + 1] and not magenta[(y1 + y2) // 2, (x1 + x2) // 2]
        assert pixels.shape[0] > 384  # the text panel sits under the image

    assert viz.plot_pairs(manifest, tmp_path / "one", limit=1) == [str(tmp_path / "one" / "0000_pair_0.png")]
    (tmp_path / "none.jsonl").write_text(json.dumps(records[-1]) + "\n", encoding="utf-8")
    with pytest.raises(viz.VizError, match="no records with a mined 'local' pair"):
        viz.plot_pairs(tmp_path / "none.jsonl", tmp_path / "x")


def test_viz_command_line_options_have_help_and_run(tmp_path, capsys):
    parser = next(a for a in build_parser()._actions if a.dest == "command").choices["viz"]
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(subparsers.choices) == {"attention", "retrieval", "errors", "pairs"}
    for sub in subparsers.choices.values():
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"{sub.prog} {action.option_strings} has no help"

    Image.new("RGB", (40, 30), (200, 200, 200)).save(tmp_path / "a.png")
    record = {
        "id": "a",
        "image": "a.png",
        "caption": "x.",
        "local": {"sentence": "x.", "box": [1, 2, 20, 25], "score": 0.5, "source": "external"},
    }
    (tmp_path / "m.jsonl").write_text(json.dumps(record) + "\n", encoding="utf-8")
    assert main(["viz", "pairs", "--data", str(tmp_path / "m.jsonl"), "--out", str(tmp_path / "out")]) == 0
    assert len(list((tmp_path / "out").glob("*.png"))) == 1
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("viz pairs: 1 pairs")
