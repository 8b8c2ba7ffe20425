"""CLIP loading, Long-CLIP position stretching, saving, state-dict files and tokenisation."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import AutoProcessor, CLIPModel

from goalclip.models.clip import (
    ModelLoadError,
    load_clip,
    save_clip,
    stretch_positions,
    stretched_positions,
)
from goalclip.models.embed import embed_token_ids, tokenize

LONG_TEXT = (
    "The picture has a plain white background. A red square is drawn here. Nothing else is in it. "
    "A blue circle is drawn here. A green square is drawn here."
)


def long_clip_reference(old: torch.Tensor, keep: int) -> torch.Tensor:
    """Long-CLIP's stretch written out as its loop (positional_embedding_res in their repo)."""
    length, dim = old.shape
    new = torch.zeros(4 * length - 3 * keep, dim, dtype=torch.float64)
    old = old.double()
    new[:keep] = old[:keep]
    for i in range(length - 1 - keep):
        new[4 * i + keep] = old[i + keep]
        new[4 * i + 1 + keep] = 3 * old[i + keep] / 4 + 1 * old[i + 1 + keep] / 4
        new[4 * i + 2 + keep] = 2 * old[i + keep] / 4 + 2 * old[i + 1 + keep] / 4
        new[4 * i + 3 + keep] = 1 * old[i + keep] / 4 + 3 * old[i + 1 + keep] / 4
    step = old[length - 1] - old[length - 2]
    for j in range(4):
        new[4 * length - 3 * keep - 4 + j] = old[length - 1] + j * step / 4
    return new


@pytest.mark.parametrize(("length", "keep", "expected"), [(77, 20, 248), (16, 4, 52), (32, 8, 104), (10, 0, 40)])
def test_stretched_positions_match_long_clip_loop(length: int, keep: int, expected: int) -> None:
    torch.manual_seed(length)
    old = torch.randn(length, 6)
    new = stretched_positions(old, keep)
    assert new.shape == (expected, 6)
    assert torch.allclose(new.double(), long_clip_reference(old, keep), atol=1e-6, rtol=0)
    assert torch.equal(new[:keep], old[:keep])


@pytest.mark.parametrize("keep", [-1, 15, 16, 40])
def test_stretched_positions_keep_out_of_range(keep: int) -> None:
    with pytest.raises(ValueError, match="keep_positions"):
        stretched_positions(torch.zeros(16, 4), keep)


def test_stretch_positions_in_place_with_shorter_target(tiny_world) -> None:
    bundle = load_clip(str(tiny_world.model))
    model = bundle.model
    old = model.text_model.embeddings.position_embedding.weight.detach().clone()
    assert stretch_positions(model, keep=4, target=40) == 40
    weight = model.text_model.embeddings.position_embedding.weight
    assert weight.shape == (40, old.shape[1])
    assert torch.allclose(weight.detach().double(), long_clip_reference(old, 4)[:40], atol=1e-6, rtol=0)
    assert model.config.text_config.max_position_embeddings == 40
    assert model.text_model.embeddings.position_ids.tolist() == [list(range(40))]
    # The model runs over the new context (it would raise an index error past 16 otherwise).
    tokens = tokenize(bundle, [LONG_TEXT], max_len=40)
    assert tokens["input_ids"].shape[1] > 16
    assert torch.isfinite(embed_token_ids(model, tokens["input_ids"], tokens["attention_mask"])).all()
    with pytest.raises(ValueError, match="stretch limit"):
        stretch_positions(load_clip(str(tiny_world.model)).model, keep=4, target=53)


def test_save_clip_round_trip_loads_with_transformers(tiny_world, tmp_path) -> None:
    bundle = load_clip(str(tiny_world.model))
    stretch_positions(bundle.model, keep=4)
    bundle.model.eval()
    out = save_clip(bundle, tmp_path / "m")
    assert (out / "model.safetensors").is_file()
    assert json.loads((out / "config.json").read_text())["text_config"]["max_position_embeddings"] == 52

    loaded = CLIPModel.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assert loaded.config.text_config.max_position_embeddings == 52
    assert processor.tokenizer.model_max_length == 52
    own, theirs = bundle.model.state_dict(), loaded.state_dict()
    assert own.keys() == theirs.keys()
    assert all(torch.equal(own[k], theirs[k]) for k in own)

    from PIL import Image

    image = Image.open(tiny_world.root / "images" / "img0.png").convert("RGB")
    inputs = processor(text=[LONG_TEXT, "a red square"], images=[image], padding=True, return_tensors="pt")
    assert inputs["input_ids"].shape[1] > 16  # beyond the original context
    with torch.no_grad():
        before = bundle.model(**inputs)
        after = loaded(**inputs)
    assert torch.equal(before.text_embeds, after.text_embeds)
    assert torch.equal(before.image_embeds, after.image_embeds)
    # And the folder loads back through our own loader too.
    again = load_clip(str(out))
    assert again.max_text_len == 52 and again.patch_grid == 4


@pytest.fixture(scope="module")
def stretched_state(tiny_world) -> dict[str, torch.Tensor]:
    """A state dict with 52 text positions (like the GOAL release's 248 over a 77-position base)."""
    bundle = load_clip(str(tiny_world.model))
    stretch_positions(bundle.model, keep=4)
    with torch.no_grad():
        for param in bundle.model.parameters():  # make it differ from the base everywhere
            param.add_(0.01)
    return {k: v.detach().clone().contiguous() for k, v in bundle.model.state_dict().items()}


def _assert_state_equal(model: CLIPModel, state: dict[str, torch.Tensor]) -> None:
    own = model.state_dict()
    assert own.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_load_clip_state_dict_file_on_base(tiny_world, stretched_state, tmp_path, suffix: str) -> None:
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(stretched_state, str(path))
    else:  # a training-script checkpoint: wrapped and DDP-prefixed
        torch.save({"state_dict": {f"module.{k}": v for k, v in stretched_state.items()}, "epoch": 3}, path)
    bundle = load_clip(str(path), base=str(tiny_world.model))
    assert bundle.max_text_len == 52
    assert bundle.model.text_model.embeddings.position_ids.shape == (1, 52)
    _assert_state_equal(bundle.model, stretched_state)
    tokens = tokenize(bundle, [LONG_TEXT])
    assert tokens["input_ids"].shape[1] > 16
    assert torch.isfinite(embed_token_ids(bundle.model, tokens["input_ids"], tokens["attention_mask"])).all()


def test_load_clip_state_dict_same_length(tiny_world, tmp_path) -> None:
    base = load_clip(str(tiny_world.model)).model
    state = {k: v + 0.5 for k, v in base.state_dict().items()}
    path = tmp_path / "same.safetensors"
    save_file(state, str(path))
    bundle = load_clip(str(path), base=str(tiny_world.model))
    assert bundle.max_text_len == 16
    _assert_state_equal(bundle.model, state)


def test_state_dict_needs_base(stretched_state, tmp_path) -> None:
    path = tmp_path / "w.safetensors"
    save_file(stretched_state, str(path))
    with pytest.raises(ModelLoadError, match="--base"):
        load_clip(str(path))


def test_state_dict_wrong_key_names_it(tiny_world, stretched_state, tmp_path) -> None:
    key = "vision_model.encoder.layers.1.mlp.fc1.weight"
    state = dict(stretched_state)
    state["vision_model.encoder.layers.1.mlp.fc_one.weight"] = state.pop(key)
    path = tmp_path / "renamed.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError) as info:
        load_clip(str(path), base=str(tiny_world.model))
    message = str(info.value)
    assert "missing (1)" in message and key in message
    assert "unexpected (1)" in message and "fc_one" in message


def test_state_dict_wrong_shape_names_it(tiny_world, stretched_state, tmp_path) -> None:
    key = "text_projection.weight"
    state = dict(stretched_state)
    state[key] = torch.zeros(7, state[key].shape[1])
    path = tmp_path / "shape.pth"
    torch.save(state, path)
    with pytest.raises(ModelLoadError) as info:
        load_clip(str(path), base=str(tiny_world.model))
    message = str(info.value)
    assert "mismatched (1)" in message and key in message and "(7, 32)" in message


def test_non_state_dict_files_give_clear_errors(tiny_world, tmp_path) -> None:
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listing)
    with pytest.raises(ModelLoadError, match="expected a state dict, found list"):
        load_clip(str(listing), base=str(tiny_world.model))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"this is not a safetensors file at all")
    with pytest.raises(ModelLoadError, match="cannot be read as a state dict"):
        load_clip(str(garbage), base=str(tiny_world.model))
    text_pth = tmp_path / "notes.pth"
    text_pth.write_text("hello")
    with pytest.raises(ModelLoadError, match="cannot be read as a state dict"):
        load_clip(str(text_pth), base=str(tiny_world.model))
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ModelLoadError, match="not a state dict"):
        load_clip(str(notes))


# ----------------------------------------------------------------------------- tokenize


def test_tokenize_pads_to_longest_and_truncates_with_eos(tiny_bundle) -> None:
    tokenizer = tiny_bundle.tokenizer
    short, medium = "a red square", "A blue circle is drawn here."
    out = tokenize(tiny_bundle, [short, medium])
    n_short = len(tokenizer(short)["input_ids"])
    n_medium = len(tokenizer(medium)["input_ids"])
    assert n_short < n_medium < 16
    assert out["input_ids"].shape == (2, n_medium)  # the batch's longest, not the context
    assert out["attention_mask"][0].tolist() == [1] * n_short + [0] * (n_medium - n_short)
    assert out["input_ids"][0, n_short:].eq(tokenizer.pad_token_id).all()
    assert out["input_ids"][1].tolist() == tokenizer(medium)["input_ids"]

    full = tokenizer(LONG_TEXT)["input_ids"]
    assert len(full) > 16
    out = tokenize(tiny_bundle, [short, LONG_TEXT])
    assert out["input_ids"].shape == (2, 16)
    assert out["input_ids"][1].tolist() == full[:15] + [tokenizer.eos_token_id]
    assert out["attention_mask"][1].all()
    out = tokenize(tiny_bundle, [LONG_TEXT], max_len=10)
    assert out["input_ids"][0].tolist() == full[:9] + [tokenizer.eos_token_id]


def test_tokenize_cleans_text(tiny_bundle) -> None:
    curly = tokenize(tiny_bundle, ["A \u201cred\u201d  square &amp; a circle"])["input_ids"]
    plain = tokenize(tiny_bundle, ['A "red" square & a circle'])["input_ids"]
    assert torch.equal(curly, plain)
    # No unknown (= EOS) token inside the text: every character maps to a real token.
    assert (plain[0, :-1] != tiny_bundle.tokenizer.eos_token_id).all()


def test_right_padding_does_not_change_embeddings(tiny_bundle) -> None:
    model = tiny_bundle.model
    texts = ["a red square", "A blue circle is drawn here. Nothing else is in it."]
    batch = tokenize(tiny_bundle, texts)
    assert batch["attention_mask"][0].eq(0).any()  # the first text really is padded
    padded = embed_token_ids(model, batch["input_ids"], batch["attention_mask"])
    for row, text in enumerate(texts):
        alone = tokenize(tiny_bundle, [text])
        with torch.no_grad():
            reference = model.get_text_features(
                input_ids=alone["input_ids"], attention_mask=alone["attention_mask"]
            ).pooler_output
        reference = reference / reference.norm(dim=-1, keepdim=True)
        assert torch.allclose(padded[row], reference[0], atol=1e-5, rtol=0)
