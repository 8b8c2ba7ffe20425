"""The SigLIP backbone: kind from the config, SigLIP's own embeddings, TSL pooling by hand, padding, stretch."""

from __future__ import annotations

import copy
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import AutoTokenizer, SiglipModel

from goalclip.models.backbone import clamp_temperature, masked_mean
from goalclip.models.clip import ModelLoadError, load_clip, prepare_text_positions, save_clip
from goalclip.models.embed import embed_pixels, embed_text_strings, tokenize

TEXTS = ["A red square is drawn here.", "The picture has a plain white background. A blue circle is drawn here."]


def test_kind_comes_from_the_config(tiny_siglip_bundle, tiny_bundle) -> None:
    assert isinstance(tiny_siglip_bundle.model, SiglipModel)
    assert (tiny_siglip_bundle.kind, tiny_bundle.kind) == ("siglip", "clip")
    assert tiny_siglip_bundle.embed_dim == tiny_siglip_bundle.model.config.vision_config.hidden_size


def test_a_model_of_another_kind_is_refused_by_name(tiny_siglip: Path, tmp_path: Path) -> None:
    folder = tmp_path / "other"
    shutil.copytree(tiny_siglip, folder)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "siglip2"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="'siglip2' model; goalclip trains and encodes clip and siglip"):
        load_clip(str(folder))


def test_embeddings_are_siglips_own_with_texts_padded_to_the_context(tiny_siglip_bundle) -> None:
    """What SigLIP's documentation asks for: ``padding="max_length"``, the pooled last position, no mask."""
    bundle = tiny_siglip_bundle
    model, context = bundle.model, bundle.max_text_len
    ids = bundle.tokenizer(TEXTS, padding="max_length", max_length=context, return_tensors="pt")["input_ids"]
    tokens = tokenize(bundle, TEXTS)
    assert torch.equal(tokens["input_ids"], ids)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want_text = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        want_image = F.normalize(model.get_image_features(pixel_values=pixels).pooler_output, dim=-1)
        short = bundle.tokenizer(TEXTS[:1], return_tensors="pt")["input_ids"]
        assert short.shape[1] < context
        unpadded = F.normalize(model.get_text_features(input_ids=short).pooler_output, dim=-1)
    torch.testing.assert_close(embed_text_strings(bundle, TEXTS), want_text, atol=1e-6, rtol=0)
    torch.testing.assert_close(embed_pixels(model, pixels), want_image, atol=1e-6, rtol=0)
    assert not torch.allclose(unpadded, want_text[:1], atol=1e-3)  # padding to the context matters


def test_region_feature_is_the_attention_head_on_the_regions_patches_only(tiny_siglip_bundle) -> None:
    backbone, model = tiny_siglip_bundle.backbone, tiny_siglip_bundle.model
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    mask = torch.zeros(3, 16, dtype=torch.bool)
    mask[0, [0, 1, 4, 5]] = True
    mask[1, 7:] = True  # mask[2] is empty: an unusable box
    with torch.no_grad():
        image, tokens = backbone.image(pixels)
        pooled = backbone.project_patches(backbone.pool_patches(tokens, mask))
        for row in range(2):  # by hand: SigLIP's head run on a sequence of the region's tokens alone
            alone = model.vision_model.head(tokens[row, mask[row]].unsqueeze(0))[0]
            torch.testing.assert_close(pooled[row], alone, atol=1e-5, rtol=0)
        whole = backbone.pool_patches(tokens, torch.ones(3, 16, dtype=torch.bool))
    torch.testing.assert_close(whole, image, atol=1e-5, rtol=0)  # every patch: the image embedding
    assert torch.isfinite(pooled[2]).all()


def test_viz_attention_is_the_pooling_heads_attention_recomputed_from_its_weights(tiny_siglip_bundle) -> None:
    """What `viz attention --kind cls` draws for SigLIP: per head, softmax(q k^T / sqrt(d)) of the probe's query
    against the last hidden state's keys, from the head's packed projection weights."""
    backbone, head = tiny_siglip_bundle.backbone, tiny_siglip_bundle.model.vision_model.head
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        _, hidden = backbone.image(pixels)
        drawn = backbone.pooling_attention(None, hidden)
        heads, width = head.attention.num_heads, hidden.shape[-1]
        w_q, w_k, _ = head.attention.in_proj_weight.chunk(3)
        b_q, b_k, _ = head.attention.in_proj_bias.chunk(3)
        q = (head.probe[0] @ w_q.T + b_q).view(1, heads, width // heads).transpose(0, 1)  # [H, 1, d]
        k = (hidden @ w_k.T + b_k).view(2, -1, heads, width // heads).permute(0, 2, 1, 3)  # [N, H, P, d]
        want = torch.softmax(q.unsqueeze(0) @ k.transpose(-1, -2) / math.sqrt(width // heads), dim=-1)[:, :, 0]
    assert drawn.shape == (2, heads, 16)
    torch.testing.assert_close(drawn, want, atol=1e-5, rtol=0)


def test_sentence_feature_is_the_span_mean_through_the_final_norm_and_head(tiny_siglip_bundle) -> None:
    backbone, text_model = tiny_siglip_bundle.backbone, tiny_siglip_bundle.model.text_model
    ids = tokenize(tiny_siglip_bundle, TEXTS)["input_ids"]
    span = torch.zeros(ids.shape, dtype=torch.bool)
    span[0, 1:4] = True
    span[1, 8:12] = True
    with torch.no_grad():
        _, states = backbone.text(ids, None, token_states=True)
        pooled = backbone.project_text(backbone.pool_text(states, span))
        layers = text_model(input_ids=ids, output_hidden_states=True).hidden_states
        for row, (start, stop) in enumerate([(1, 4), (8, 12)]):
            mean = layers[-1][row, start:stop].mean(dim=0)
            torch.testing.assert_close(pooled[row], text_model.head(text_model.final_layer_norm(mean)),
                                       atol=1e-5, rtol=0)
    torch.testing.assert_close(backbone.pool_text(states, span), masked_mean(states, span))


def test_stretch_keeps_the_first_k_positions_exactly_and_the_folder_keeps_the_context(tiny_siglip_bundle,
                                                                                     tmp_path: Path) -> None:
    bundle = tiny_siglip_bundle
    before = bundle.model.text_model.embeddings.position_embedding.weight.detach().clone()
    assert prepare_text_positions(bundle, 40, keep=4) == 40
    after = bundle.model.text_model.embeddings.position_embedding.weight.detach()
    assert after.shape == (40, before.shape[1])
    assert torch.equal(after[:4], before[:4])
    torch.testing.assert_close(after[4:8], before[4:5] + torch.arange(4).view(4, 1) / 4 * (before[5] - before[4]))
    assert tokenize(bundle, TEXTS)["input_ids"].shape == (2, 40)
    reloaded = load_clip(str(save_clip(bundle, tmp_path / "stretched")))
    assert reloaded.max_text_len == reloaded.tokenizer.model_max_length == 40
    assert torch.equal(reloaded.model.text_model.embeddings.position_embedding.weight, after)


def test_a_text_cut_shorter_than_the_context_still_pads_to_the_context(tiny_siglip_bundle) -> None:
    """``--max-text-len`` below the context cuts the text (keeping ``</s>`` last) but SigLIP still reads a full
    context, as it was trained: the embedding is that of the cut text padded to the context."""
    bundle = tiny_siglip_bundle
    tokens = tokenize(bundle, TEXTS, max_len=8)["input_ids"]
    full = bundle.tokenizer(TEXTS[1])["input_ids"]
    eos = bundle.tokenizer.eos_token_id
    assert tokens.shape == (2, bundle.max_text_len)
    assert tokens[1].tolist() == full[:7] + [eos] * (bundle.max_text_len - 7)


def test_clips_temperature_is_clamped_at_100_and_siglips_is_free(tiny_siglip_bundle, tiny_bundle) -> None:
    for bundle, want in ((tiny_siglip_bundle, math.log(200.0)), (copy.deepcopy(tiny_bundle), math.log(100.0))):
        with torch.no_grad():
            bundle.model.logit_scale.fill_(math.log(200.0))
        clamp_temperature(bundle.model)
        assert bundle.model.logit_scale.item() == pytest.approx(want), bundle.kind


@pytest.fixture(scope="module")
def siglip2_like(tiny_world, tmp_path_factory) -> Path:
    """A tiny SigLIP with SigLIP 2's tokenizer setup: transformers' GemmaTokenizer (the class SigLIP 2's
    fixed-resolution folders name: it pads on the left unless told otherwise and does not lowercase),
    ``<pad>`` 0, ``<eos>`` 1 appended, no ``<bos>``; character pieces only."""
    from transformers import GemmaTokenizer

    from tests.conftest import save_tiny_siglip_weights

    folder = tmp_path_factory.mktemp("siglip2_like")
    pieces = sorted({c for text in tiny_world.texts for c in text.replace(" ", "▁")})
    vocab = {piece: index for index, piece in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", *pieces])}
    tokenizer = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=False, add_eos_token=True, model_max_length=64)
    assert tokenizer.padding_side == "left" and tokenizer("A")["input_ids"] == [vocab["A"], 1]
    tokenizer.save_pretrained(folder)
    save_tiny_siglip_weights(folder, tiny_world.texts, vocab_size=len(vocab), pad_id=0, eos_id=1)
    return folder


def siglip2_reference(tokenizer, texts: list[str], length: int = 64) -> torch.Tensor:
    """How SigLIP 2 was trained and evaluated (big_vision: ``lower|tok(length=64, model="gemma", bos="no",
    eos="sticky")``): lowercase, ids + ``<eos>``, a longer text cut to its first 63 ids and ``<eos>``, then
    ``<pad>`` on the right up to 64."""
    rows = []
    for ids in tokenizer([text.lower() for text in texts])["input_ids"]:
        ids = ids[: length - 1] + ids[-1:] if len(ids) > length else ids
        rows.append(ids + [tokenizer.pad_token_id] * (length - len(ids)))
    return torch.tensor(rows)


def test_siglip2_texts_are_lowercased_and_padded_on_the_right_to_64_as_trained(siglip2_like, tiny_world) -> None:
    bundle = load_clip(str(siglip2_like))
    texts = [TEXTS[0], " ".join(tiny_world.texts[:4])]  # the second is longer than 64 pieces
    plain = AutoTokenizer.from_pretrained(siglip2_like)
    want = siglip2_reference(plain, texts)
    assert len(plain(texts[1].lower())["input_ids"]) > 64
    assert torch.equal(tokenize(bundle, texts)["input_ids"], want)
    saved = AutoTokenizer.from_pretrained(save_clip(bundle, siglip2_like.parent / "saved"))
    assert torch.equal(saved(texts[:1], padding="max_length", max_length=64, return_tensors="pt")["input_ids"],
                       want[:1])
