"""Attention and retrieval figures comparing models, and the viz command line (goalclip.viz.figures)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tests.viz.conftest import WORDS, scene
from PIL import Image

from goalclip.cli import build_parser, main
from goalclip.core.images import load_rgb, pixel_values
from goalclip.models.clip import load_clip
from goalclip.models.embed import embed_pixels, embed_token_ids, tokenize
from goalclip.viz import figures as viz


def test_plot_attention_writes_a_png_for_several_models(model_dirs, tmp_path):
    paths = []
    for i, cell in enumerate([(0, 0), (2, 1)]):
        paths.append(str(tmp_path / f"scene{i}.png"))
        scene(cell).save(paths[-1])
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


def test_viz_attention_pca_draws_each_models_attention_components(model_dirs, tmp_path, capsys):
    paths = []
    for i, cell in enumerate([(0, 0), (2, 1)]):
        paths.append(str(tmp_path / f"scene{i}.png"))
        scene(cell).save(paths[-1])
    out = tmp_path / "fig5.png"
    result = viz.plot_attention([str(model_dirs["random"]), str(model_dirs["other"])], paths, out,
                                labels=["pretrained", "fast-goal"], kind="pca", layer=0)
    assert result["layer"] == 0 and result["pca_clip"] > 0
    with Image.open(out) as png:
        assert png.format == "PNG"
    assert main(["viz", "attention", "--model", str(model_dirs["random"]), "--model", str(model_dirs["other"]),
                 "--images", *paths, "--kind", "pca", "--layer", "-1", "--out", str(tmp_path / "cli.png")]) == 0
    assert (tmp_path / "cli.png").is_file()
    assert "2 images x 2 models" in capsys.readouterr().out
    assert main(["viz", "attention", "--model", str(model_dirs["random"]), "--images", *paths, "--kind", "pca",
                 "--layer", "5", "--out", str(tmp_path / "bad.png")]) == 1
    assert "layer 5: the vision tower has 2 layers" in capsys.readouterr().err
