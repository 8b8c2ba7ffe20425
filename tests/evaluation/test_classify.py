"""Zero-shot classification (``goalclip eval --task classify``) against a brute-force loop.

The reference below uses transformers directly (``get_text_features`` / ``get_image_features``,
one prompt and one image at a time), so the harness's batching, template averaging, label
bookkeeping and top-k ranking are all checked against an independent computation.
"""

import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval, CLIPImageProcessor, CLIPModel

from goalclip.cli import main
from goalclip.core.text import clean_text
from goalclip.evaluation.classify import (
    ClassifyConfig,
    class_embeddings,
    classify,
    load_classify_data,
    read_templates,
    top_k_accuracy,
)

COLOURS = {"red": (220, 40, 40), "blue": (40, 90, 225), "green": (40, 165, 60)}


def _unit(x):
    x = x.pooler_output if hasattr(x, "pooler_output") else x
    return x[0] / x[0].norm()


@torch.no_grad()
def _brute_force_class_vectors(model, tokenizer, classes, templates):
    class_vectors = []
    for name in classes:
        prompts = [_unit(model.get_text_features(**tokenizer([clean_text(t.format(name))], return_tensors="pt",
                                                             truncation=True, max_length=16)))
                   for t in templates]
        mean = torch.stack(prompts).mean(0)
        class_vectors.append(mean / mean.norm())
    return class_vectors


def _brute_force_accuracy(model_dir, images, labels, classes, templates, ks):
    model = CLIPModel.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    processor = CLIPImageProcessor.from_pretrained(model_dir)
    unit = _unit
    class_vectors = _brute_force_class_vectors(model, tokenizer, classes, templates)
    with torch.no_grad():
        hits = {k: 0 for k in ks}
        for image, label in zip(images, labels):
            emb = unit(model.get_image_features(**processor(images=[image], return_tensors="pt")))
            scores = [float(emb @ c) for c in class_vectors]
            better = sum(s >= scores[label] for i, s in enumerate(scores) if i != label)  # ties count against
            for k in ks:
                hits[k] += better < k
    return {f"top{k}": 100.0 * hits[k] / len(labels) for k in ks}


@pytest.fixture
def colour_folder(tmp_path):
    root = tmp_path / "colours"
    images, labels = [], []
    for label, (name, rgb) in enumerate(sorted(COLOURS.items())):
        (root / name).mkdir(parents=True)
        for j in range(3):
            shade = tuple(max(0, c - 30 * j) for c in rgb)
            image = Image.new("RGB", (40, 32), shade)
            image.save(root / name / f"{j}.png")
            images.append(image)
            labels.append(label)
    return root, images, labels


def test_imagefolder_accuracy_equals_a_brute_force_loop(tiny_world, colour_folder):
    root, images, labels = colour_folder
    templates = ["a {} picture.", "a {} square is drawn here."]
    (root.parent / "templates.txt").write_text("\n".join(templates) + "\n")
    result = classify(ClassifyConfig(models=[str(tiny_world.model)], data=str(root), ks=(1, 2),
                                     templates=str(root.parent / "templates.txt"), progress=False))
    classes = sorted(COLOURS)
    want = _brute_force_accuracy(tiny_world.model, images, labels, classes, templates, (1, 2))
    got = result["models"][0]["metrics"]
    assert got == pytest.approx(want, abs=1e-6)
    assert result["classes"] == 3 and result["images"] == 9


def _write_cifar10(root, n=12, seed=0):
    rng = np.random.default_rng(seed)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
    labels = [int(x) for x in rng.integers(0, 10, size=n)]
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with (folder / "test_batch").open("wb") as handle:
        pickle.dump({b"data": data, b"labels": labels}, handle)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({b"label_names": names}, handle)
    images = [Image.fromarray(row.reshape(3, 32, 32).transpose(1, 2, 0)) for row in data]
    return images, labels, [n.decode() for n in names]


def test_cifar_pickles_through_the_cli_equal_a_brute_force_loop(tiny_world, tmp_path, capsys):
    images, labels, classes = _write_cifar10(tmp_path)
    out = tmp_path / "acc.json"
    assert main(["eval", "--task", "classify", "--format", "cifar10", "--data", str(tmp_path), "--model",
                 str(tiny_world.model), "--model", str(tiny_world.model), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == "| model | top1 | top5 |"
    assert printed[-1].startswith("classified 12 images into 10 classes with 7 templates, 2 model(s)")
    got = json.loads(out.read_text())["models"][0]["metrics"]
    want = _brute_force_accuracy(tiny_world.model, images, labels, classes, read_templates(None), (1, 5))
    assert got == pytest.approx(want, abs=1e-6)


def test_class_embeddings_are_normalised_template_means(tiny_bundle):
    classes, templates = ["red square", "blue circle", "green"], list(read_templates(None))
    want = torch.stack(_brute_force_class_vectors(tiny_bundle.model, tiny_bundle.tokenizer, classes, templates))
    got = class_embeddings(tiny_bundle, classes, templates, batch_size=5)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_top_k_accuracy_counts_ties_against_the_model():
    scores = torch.tensor([[0.5, 0.5, 0.1], [0.9, 0.2, 0.3], [0.1, 0.2, 0.3]])
    labels = torch.tensor([0, 0, 0])
    assert top_k_accuracy(scores, labels, (1, 2, 3)) == pytest.approx(
        {"top1": 100 / 3, "top2": 200 / 3, "top3": 100.0})


def test_class_names_file_in_each_form(colour_folder, tmp_path):
    root = colour_folder[0]
    keyed = tmp_path / "keyed.txt"
    keyed.write_text("blue sky blue\ngreen grass green\nred fire red\n")
    assert load_classify_data(str(root), "imagefolder", str(keyed)).classes == ["sky blue", "grass green", "fire red"]
    ordered = tmp_path / "ordered.txt"
    ordered.write_text("B\nG\nR\n")
    assert load_classify_data(str(root), "imagefolder", str(ordered)).classes == ["B", "G", "R"]
    as_json = tmp_path / "names.json"
    as_json.write_text(json.dumps({"blue": "b", "green": "g", "red": "r"}))
    assert load_classify_data(str(root), "imagefolder", str(as_json)).classes == ["b", "g", "r"]
    short = tmp_path / "short.txt"
    short.write_text("only one\n")
    with pytest.raises(ValueError, match="1 lines for 3 class folders"):
        load_classify_data(str(root), "imagefolder", str(short))


def test_bad_templates_and_folders_are_clear_errors(tmp_path, tiny_world):
    bad = tmp_path / "t.txt"
    bad.write_text("a photo of a {}.\nno placeholder here\n")
    with pytest.raises(ValueError, match=r"t.txt:2: a template needs exactly one"):
        read_templates(str(bad))
    (tmp_path / "only").mkdir()
    code = main(["eval", "--task", "classify", "--data", str(tmp_path / "only"), "--model", str(tiny_world.model)])
    assert code == 1


def test_a_blip2_row_scores_each_class_by_its_best_query_token(tiny_blip2, colour_folder):
    """With one template a class vector is that prompt's embedding, so the scores are transformers' own
    ``Blip2ForImageTextRetrieval`` contrastive logits between each image and the class prompts."""
    root, images, labels = colour_folder
    (root.parent / "one.txt").write_text("a {} square is drawn here.\n")
    result = classify(ClassifyConfig(models=[str(tiny_blip2)], data=str(root), ks=(1, 2),
                                     templates=str(root.parent / "one.txt"), progress=False))
    model = Blip2ForImageTextRetrieval.from_pretrained(tiny_blip2).eval()
    prompts = AutoTokenizer.from_pretrained(tiny_blip2)([f"a {c} square is drawn here." for c in sorted(COLOURS)],
                                                        padding=True, return_tensors="pt")
    pixels = AutoImageProcessor.from_pretrained(tiny_blip2)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=pixels, **prompts, use_image_text_matching_head=False).logits_per_image
    want = top_k_accuracy(logits, torch.tensor(labels), (1, 2))
    assert result["models"][0]["metrics"] == pytest.approx(want, abs=1e-6)
