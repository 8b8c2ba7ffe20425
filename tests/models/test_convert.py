"""Checkpoint import: OpenAI-layout (open_clip) and Long-CLIP state dicts -> transformers.CLIPModel.

The reference is open_clip itself, run on the same pixels and token ids. Text pooling: OpenAI
CLIP pools at ``argmax(token id)``, which is the end token only because OpenAI's end token has the
highest id. The tiny tokenizer here has ``<|endoftext|>`` = 1, so the open_clip model is built
with ``pool_type="eos"`` and that id: it pools at the first end token, which is what
``CLIPModel`` does for a config whose ``eos_token_id`` is not the legacy 2, and the same token that
argmax picks on real OpenAI vocabularies.
"""

from __future__ import annotations


import open_clip
import pytest
import torch
from safetensors.torch import save_file

from goalclip.cli import main
from goalclip.demo.tiny import build_tiny_clip
from goalclip.models import convert as convert
from goalclip.models.clip import ModelLoadError, load_clip, save_clip

TEXTS = [
    "a red square sits in the top left corner of a white picture",
    "two blue circles and a small green triangle near the bottom edge of the frame",
    "a large yellow star",
]
LONG_TEXT = " ".join(TEXTS * 6)  # far past Long-CLIP's 20 kept positions with this tiny vocabulary


@pytest.fixture(scope="module")
def tiny() -> dict:
    bundle = build_tiny_clip(TEXTS, image_size=32, patch_size=8, width=64, layers=1, heads=2,
                             projection_dim=32, context_length=16, vocab_size=200)
    return {"bundle": bundle, "tokenizer": bundle.tokenizer}


def _open_clip(tokenizer, context_length: int, seed: int = 0) -> open_clip.model.CLIP:
    torch.manual_seed(seed)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg={"layers": 2, "width": 64, "head_width": 32, "patch_size": 8, "image_size": 32},
        text_cfg={
            "context_length": context_length, "vocab_size": len(tokenizer), "width": 64, "heads": 2,
            "layers": 2, "pool_type": "eos", "eos_id": tokenizer.eos_token_id,
        },
        quick_gelu=True,
    )
    # Perturb every tensor so zero-initialised biases and unit layer norms are checked too.
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return model.eval()


def _tokens(tokenizer, texts: list[str], length: int) -> dict[str, torch.Tensor]:
    return tokenizer(texts, padding="max_length", truncation=True, max_length=length, return_tensors="pt")


def _hf_embeddings(bundle, pixels, tokens):
    with torch.no_grad():
        image = bundle.model.get_image_features(pixel_values=pixels).pooler_output
        text = bundle.model.get_text_features(
            input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"]
        ).pooler_output
    return image, text


def _convert(state, tiny, **kwargs):
    return convert.convert_openai_state_dict(
        state, tokenizer_source=tiny["bundle"], text_heads=2, vision_heads=2, **kwargs
    )


def test_open_clip_state_dict_converts_exactly(tiny):
    reference = _open_clip(tiny["tokenizer"], context_length=16)
    state = reference.state_dict()
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in state  # the OpenAI layout
    bundle = _convert(state, tiny)
    config = bundle.model.config
    assert (config.vision_config.image_size, config.vision_config.patch_size) == (32, 8)
    assert (config.text_config.max_position_embeddings, config.text_config.vocab_size) == (16, len(tiny["tokenizer"]))
    assert (config.text_config.num_hidden_layers, config.vision_config.num_hidden_layers) == (2, 2)
    assert config.projection_dim == 32 and config.text_config.hidden_act == "quick_gelu"

    pixels = torch.randn(3, 3, 32, 32)
    tokens = _tokens(tiny["tokenizer"], TEXTS, 16)
    image, text = _hf_embeddings(bundle, pixels, tokens)
    with torch.no_grad():
        want_image = reference.encode_image(pixels)
        want_text = reference.encode_text(tokens["input_ids"])
    torch.testing.assert_close(image, want_image, atol=1e-4, rtol=0)
    torch.testing.assert_close(text, want_text, atol=1e-4, rtol=0)
    assert float(bundle.model.logit_scale.detach()) == pytest.approx(float(reference.logit_scale.detach()))


def test_longclip_tables_fold_into_one(tiny):
    reference = _open_clip(tiny["tokenizer"], context_length=248, seed=1)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    state["positional_embedding_res"] = state["positional_embedding"] + 0.05 * torch.randn(248, 64)
    # Long-CLIP's encode_text: x + pos * mask1 + pos_res * mask2, mask1 = rows < 20, mask2 = rows >= 20.
    mask1 = torch.zeros(248, 1)
    mask1[:20] = 1
    mask2 = 1 - mask1
    tokens = _tokens(tiny["tokenizer"], [LONG_TEXT, "a red square"], 248)
    assert int(tokens["attention_mask"][0].sum()) > 60 and int(tokens["attention_mask"][1].sum()) <= 20
    with torch.no_grad():
        plain = reference.encode_text(tokens["input_ids"])
        reference.positional_embedding.copy_(
            state["positional_embedding"] * mask1 + state["positional_embedding_res"] * mask2
        )
        want = reference.encode_text(tokens["input_ids"])

    bundle = _convert(state, tiny)
    assert bundle.max_text_len == 248 and bundle.tokenizer.model_max_length == 248
    _, text = _hf_embeddings(bundle, torch.zeros(1, 3, 32, 32), tokens)
    torch.testing.assert_close(text, want, atol=1e-4, rtol=0)
    # The residual table matters past position 20 and only there: the long text moves, the short one does not.
    assert not torch.allclose(want[0], plain[0], atol=1e-3)
    torch.testing.assert_close(want[1], plain[1], atol=1e-5, rtol=0)


def test_cli_converts_an_fp16_checkpoint_file(tiny, tmp_path, capsys):
    reference = _open_clip(tiny["tokenizer"], context_length=248, seed=2)
    state = reference.state_dict()
    state["positional_embedding_res"] = state["positional_embedding"].flip(0)
    half = {k: v.half() for k, v in state.items()}  # released Long-CLIP checkpoints are fp16
    torch.save(half, tmp_path / "longclip.pt")
    processor_dir = save_clip(tiny["bundle"], tmp_path / "processor")

    assert main(
        ["import-checkpoint", "longclip", "--checkpoint", str(tmp_path / "longclip.pt"), "--processor",
         str(processor_dir), "--out", str(tmp_path / "converted"), "--heads", "2"]
    ) == 0
    assert "text context 248" in capsys.readouterr().out

    loaded = load_clip(str(tmp_path / "converted"))
    direct = _convert(half, tiny)
    want_state = direct.model.state_dict()
    for key, value in loaded.model.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, want_state[key], atol=0, rtol=0)
    # from_pretrained may pick another attention kernel than a fresh CLIPModel: equal up to rounding.
    tokens = _tokens(loaded.tokenizer, [LONG_TEXT], 248)
    pixels = torch.randn(2, 3, 32, 32)
    for got, want in zip(_hf_embeddings(loaded, pixels, tokens), _hf_embeddings(direct, pixels, tokens)):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    assert loaded.tokenizer.model_max_length == 248


def test_unknown_and_resnet_layouts_are_named(tiny):
    state = _open_clip(tiny["tokenizer"], context_length=16).state_dict()
    with pytest.raises(ModelLoadError, match="logit_bias"):
        _convert({**state, "logit_bias": torch.zeros(())}, tiny)
    with pytest.raises(ModelLoadError, match="ResNet"):
        _convert({**state, "visual.layer1.0.conv1.weight": torch.zeros(1)}, tiny)
    with pytest.raises(ModelLoadError, match="missing ln_final.weight"):
        _convert({k: v for k, v in state.items() if k != "ln_final.weight"}, tiny)
    with pytest.raises(ModelLoadError, match="cannot be split into 3 heads"):
        convert.convert_openai_state_dict(state, tokenizer_source=tiny["bundle"], text_heads=3)


def test_processor_size_must_match(tiny):
    state = _open_clip(tiny["tokenizer"], context_length=16).state_dict()
    other = build_tiny_clip(TEXTS, image_size=64, width=32, layers=1, heads=1, projection_dim=16, vocab_size=200)
    with pytest.raises(ModelLoadError, match="64px images but the checkpoint expects 32px"):
        convert.convert_openai_state_dict(state, tokenizer_source=other, text_heads=2, vision_heads=2)


def test_goal_style_hf_state_dict_with_more_positions_loads_on_a_base(tiny, tmp_path):
    base = save_clip(tiny["bundle"], tmp_path / "base")
    state = {k: v.clone() for k, v in tiny["bundle"].model.state_dict().items()}
    positions = torch.randn(40, 64)
    state["text_model.embeddings.position_embedding.weight"] = positions
    save_file(state, tmp_path / "goal.safetensors")
    torch.save(state, tmp_path / "goal.pth")
    for name in ("goal.safetensors", "goal.pth"):
        loaded = load_clip(str(tmp_path / name), base=str(base))
        assert loaded.max_text_len == 40
        torch.testing.assert_close(loaded.model.text_model.embeddings.position_embedding.weight, positions)
        assert loaded.model.text_model.embeddings.position_ids.shape == (1, 40)

    state["text_projection.weight"] = torch.zeros(31, 64)
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ModelLoadError, match=r"text_projection\.weight: file \(31, 64\)") as error:
        load_clip(str(tmp_path / "bad.pth"), base=str(base))
    assert "extra.weight" in str(error.value)


def test_long_clip_l_shapes_give_768_in_every_config_section():
    """Long-CLIP-L projects to 768: the text and vision sections must say so too, not 512."""
    shapes = {
        "visual.conv1.weight": (1024, 3, 14, 14), "visual.positional_embedding": (257, 1024),
        "visual.proj": (1024, 768), "token_embedding.weight": (49408, 768), "positional_embedding": (248, 768),
        "ln_final.weight": (768,), "text_projection": (768, 768),
        **{f"transformer.resblocks.{i}.mlp.c_fc.weight": (3072, 768) for i in range(12)},
        **{f"visual.transformer.resblocks.{i}.mlp.c_fc.weight": (4096, 1024) for i in range(24)},
    }
    config = convert.infer_openai_config({k: torch.empty(s, device="meta") for k, s in shapes.items()})
    sections = (config, config.text_config, config.vision_config)
    assert [section.projection_dim for section in sections] == [768, 768, 768]
    assert (config.text_config.hidden_size, config.vision_config.hidden_size) == (768, 1024)
