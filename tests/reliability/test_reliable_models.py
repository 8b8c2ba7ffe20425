"""Promises about model folders: what goalclip writes loads everywhere, and a broken folder is one clear error.

Each test name states one promise. Models are tiny and built here; folders go through the
real command line (``goalclip.cli.main``) where a user would meet them.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
import transformers
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModel,
    CLIPModel,
    CLIPProcessor,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPVisionModelWithProjection,
)

from goalclip.cli import main
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models.clip import ModelLoadError, load_clip, save_clip

TEXTS = [
    "this is a photo of a red square",
    "this is a photo of a blue circle",
    "a green square near the bottom of a grey image",
    "a yellow circle in the middle. the rest is dark.",
] * 3
LABELS = ["red square", "blue circle", "green square"]


def _image(colour: tuple[int, int, int], size: tuple[int, int] = (40, 32)) -> Image.Image:
    pixels = np.random.default_rng(sum(colour)).integers(0, 60, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    image.paste(colour, (8, 8, 24, 24))
    return image


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A goalclip-saved folder whose projection (48) and tower widths (text 24, vision 32) all differ."""
    bundle = build_tiny_clip(
        TEXTS, image_size=32, patch_size=8, width=32, text_width=24, layers=2, heads=2,
        projection_dim=48, context_length=32, vocab_size=300,
    )
    return save_clip(bundle, tmp_path_factory.mktemp("exported") / "model")


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    for i, colour in enumerate([(220, 40, 40), (40, 90, 225), (40, 165, 60)]):
        _image(colour).save(root / f"img{i}.png")
    return root


def _assert_loads_as_every_hf_clip_class(folder: Path) -> None:
    """Every transformers class a downstream user loads gives the full CLIPModel's embeddings."""
    full = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    inputs = processor(text=["a red square", "a blue circle"], images=[_image((220, 40, 40))],
                       return_tensors="pt", padding=True)
    text_args = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    with torch.no_grad():
        want_text = full.get_text_features(**text_args).pooler_output
        want_image = full.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        want_pooled = full.text_model(**text_args).pooler_output

        text = CLIPTextModelWithProjection.from_pretrained(folder).eval()(**text_args).text_embeds
        vision = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
        image = vision(pixel_values=inputs["pixel_values"]).image_embeds
        pooled = CLIPTextModel.from_pretrained(folder).eval()(**text_args).pooler_output
        auto = AutoModel.from_pretrained(folder).eval()
        auto_text = auto.get_text_features(**text_args).pooler_output
    assert want_text.shape[-1] == full.config.projection_dim
    torch.testing.assert_close(text, want_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(image, want_image, atol=1e-6, rtol=0)
    torch.testing.assert_close(pooled, want_pooled, atol=1e-6, rtol=0)
    torch.testing.assert_close(auto_text, want_text, atol=1e-6, rtol=0)

    pipe = transformers.pipeline("zero-shot-image-classification", model=str(folder))
    picture = _image((40, 90, 225))
    scores = {row["label"]: row["score"] for row in pipe(picture, candidate_labels=LABELS)}
    prompts = [f"This is a photo of {label}." for label in LABELS]  # the pipeline's default template
    tokens = pipe.tokenizer(prompts, return_tensors="pt", padding=True)
    pixels = pipe.image_processor(images=[picture], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text_emb = torch.nn.functional.normalize(full.get_text_features(**tokens).pooler_output, dim=-1)
        image_emb = torch.nn.functional.normalize(full.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        want = (full.logit_scale.exp() * image_emb @ text_emb.T).softmax(dim=-1)[0]
    assert [scores[label] for label in LABELS] == pytest.approx(want.tolist(), abs=1e-5)


# ----------------------------------------------------------------------------- 10.2: sub-model round trip


def test_exported_folder_loads_as_every_hf_clip_class_with_the_full_models_embeddings(exported):
    config = json.loads((exported / "config.json").read_text())
    assert config["text_config"]["projection_dim"] == config["vision_config"]["projection_dim"] == 48
    _assert_loads_as_every_hf_clip_class(exported)


def test_convert_longclip_output_loads_as_every_hf_clip_class(exported, tmp_path, capsys):
    tokenizer = load_clip(str(exported)).tokenizer
    torch.manual_seed(0)
    reference = open_clip.model.CLIP(
        embed_dim=48,
        vision_cfg={"layers": 1, "width": 96, "head_width": 48, "patch_size": 8, "image_size": 32},
        text_cfg={"context_length": 248, "vocab_size": len(tokenizer), "width": 64, "heads": 2, "layers": 1,
                  "pool_type": "eos", "eos_id": tokenizer.eos_token_id},
        quick_gelu=True,
    )
    state = reference.state_dict()
    state["positional_embedding_res"] = state["positional_embedding"].flip(0)
    torch.save(state, tmp_path / "longclip.pt")
    out = tmp_path / "converted"
    assert main(["import-checkpoint", "longclip", "--checkpoint", str(tmp_path / "longclip.pt"), "--processor",
                 str(exported), "--out", str(out), "--heads", "2"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["text_config"]["projection_dim"] == config["vision_config"]["projection_dim"] == 48
    _assert_loads_as_every_hf_clip_class(out)


# ----------------------------------------------------------------------------- 10.5: processor layouts


@pytest.fixture(scope="module")
def processor_layout(exported, tmp_path_factory) -> Path:
    """The same model saved the transformers 5 way: processor_config.json, no preprocessor_config.json."""
    folder = tmp_path_factory.mktemp("processor_layout") / "model"
    bundle = load_clip(str(exported))
    bundle.model.save_pretrained(folder)
    CLIPProcessor(image_processor=bundle.image_processor, tokenizer=bundle.tokenizer).save_pretrained(folder)
    assert (folder / "processor_config.json").is_file() and not (folder / "preprocessor_config.json").exists()
    return folder


def test_load_clip_reads_both_processor_layouts_alike(exported, processor_layout):
    ours, theirs = load_clip(str(exported)), load_clip(str(processor_layout))
    assert type(ours.image_processor) is type(theirs.image_processor)
    assert ours.image_processor.to_dict() == theirs.image_processor.to_dict()
    assert ours.tokenizer("a red square")["input_ids"] == theirs.tokenizer("a red square")["input_ids"]


def test_search_and_viz_accept_a_folder_saved_by_clip_processor(exported, processor_layout, photos, tmp_path, capsys):
    results = {}
    for name, folder in (("ours", exported), ("processor", processor_layout)):
        out = tmp_path / f"{name}.json"
        assert main(["search", "--model", str(folder), "--images", str(photos), "--query", "a red square",
                     "--k", "3", "--out", str(out), "--index-dir", str(tmp_path / f"index-{name}")]) == 0, (
            capsys.readouterr().err
        )
        results[name] = json.loads(out.read_text())["results"]
        figure = tmp_path / f"{name}.png"
        assert main(["viz", "attention", "--model", str(folder), "--images", str(photos), "--out", str(figure)]) == 0
        assert figure.is_file()
    assert results["ours"] == results["processor"]


# ----------------------------------------------------------------------------- 11.4: incomplete folders


def _copy(folder: Path, tmp_path: Path, name: str) -> Path:
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def test_a_model_folder_without_tokenizer_files_is_an_error_naming_the_folder(exported, photos, tmp_path, capsys):
    folder = _copy(exported, tmp_path, "no_tokenizer")
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json"):
        (folder / name).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=f"{folder}.*tokenizer"):
        load_clip(str(folder))
    assert main(["search", "--model", str(folder), "--images", str(photos), "--query", "a red square"]) != 0
    err = capsys.readouterr().err
    assert str(folder) in err and "tokenizer" in err and "Traceback" not in err


def test_a_model_folder_with_missing_or_unexpected_weights_is_an_error_naming_the_keys(exported, tiny_world,
                                                                                      tmp_path, capsys):
    folder = _copy(exported, tmp_path, "half")
    state = load_file(folder / "model.safetensors")
    dropped = sorted(k for k in state if k.startswith("vision_model.encoder.layers.1."))
    kept = {k: v for k, v in state.items() if k not in dropped}
    save_file({**kept, "extra.weight": torch.zeros(3)}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError) as caught:
        load_clip(str(folder))
    message = str(caught.value)
    assert str(folder) in message and dropped[0] in message and "extra.weight" in message
    assert main(["eval", "--model", str(folder), "--data", str(tiny_world.captions), "--no-progress"]) != 0
    err = capsys.readouterr().err
    assert dropped[0] in err and "Traceback" not in err


def test_a_model_folder_whose_weights_do_not_fit_its_config_is_an_error_naming_the_keys(exported, tmp_path):
    folder = _copy(exported, tmp_path, "mismatched")
    config = json.loads((folder / "config.json").read_text())
    for section in (config, config["text_config"], config["vision_config"]):
        section["projection_dim"] = 40
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError,
                       match=r"mismatched \(2\): text_projection.weight: file \(48, 24\) vs config \(40, 24\)"):
        load_clip(str(folder))


def test_a_model_folder_holding_another_models_tokenizer_is_an_error(exported, tmp_path):
    folder = _copy(exported, tmp_path, "foreign_tokenizer")
    bigger = build_tiny_clip([*TEXTS, "purple triangles and orange hexagons everywhere"], vocab_size=700)
    assert len(bigger.tokenizer) > json.loads((folder / "config.json").read_text())["text_config"]["vocab_size"]
    bigger.tokenizer.save_pretrained(folder)
    with pytest.raises(ModelLoadError, match=f"{folder}: the tokenizer has {len(bigger.tokenizer)} tokens"):
        load_clip(str(folder))


def test_a_complete_folder_loads_without_complaint(exported, caplog):
    from transformers.utils import logging as hf_logging

    hf_logging.enable_propagation()  # transformers' own warnings (missing or unused weights) reach caplog too
    try:
        with caplog.at_level(logging.INFO):
            bundle = load_clip(str(exported))
    finally:
        hf_logging.disable_propagation()
    assert bundle.model.config.projection_dim == 48 and len(bundle.tokenizer) > 200
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


# ----------------------------------------------------------------------------- 11.6: non-finite models


@pytest.fixture(scope="module")
def nan_model(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's model with one NaN weight in each tower, saved as a folder."""
    bundle = load_clip(str(tiny_world.model))
    with torch.no_grad():
        bundle.model.visual_projection.weight[0, 0] = float("nan")
        bundle.model.text_projection.weight[0, 0] = float("nan")
    return save_clip(bundle, tmp_path_factory.mktemp("nan") / "nan_model")


def test_mining_with_a_nan_producing_model_is_an_error_naming_the_model(nan_model, tiny_world, tmp_path, capsys):
    out = tmp_path / "mined.jsonl"
    code = main(["mine", "--model", str(nan_model), "--data", str(tiny_world.captions), "--regions", "flism",
                 "--boxes", str(tiny_world.boxes), "--out", str(out), "--num-workers", "0", "--no-progress"])
    err = capsys.readouterr().err
    assert code != 0 and str(nan_model) in err and "non-finite" in err and "Traceback" not in err
    assert not out.exists()


def test_search_with_a_nan_producing_model_is_an_error_naming_the_model(nan_model, photos, tmp_path, capsys):
    code = main(["search", "--model", str(nan_model), "--images", str(photos), "--query", "a red square",
                 "--index-dir", str(tmp_path / "index")])
    err = capsys.readouterr().err
    assert code != 0 and str(nan_model) in err and "non-finite" in err


# ----------------------------------------------------------------------------- 11.12a: corrupt weights


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_a_corrupt_model_safetensors_is_one_line_naming_the_file(exported, tmp_path, capsys, damage):
    folder = _copy(exported, tmp_path, "corrupt")
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2] if damage == "truncated" else b"not a safetensors file" * 4)
    with pytest.raises(ModelLoadError, match="model.safetensors"):
        load_clip(str(folder))
    assert main(["search", "--model", str(folder), "--images", str(tmp_path), "--query", "x"]) != 0
    err = capsys.readouterr().err.strip()
    assert str(weights) in err and "Traceback" not in err and len(err.splitlines()) == 1

