"""BLIP-2 retrieval rows: goalclip's scores are transformers' own image-text contrastive logits."""

from __future__ import annotations

import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, Blip2ForImageTextRetrieval

from goalclip.cli import main
from goalclip.evaluation.config import EvalConfig
from goalclip.evaluation.metrics import similarity
from goalclip.evaluation.retrieval import evaluate
from goalclip.models.embed import count_truncated, embed_pixels, embed_text_strings_counted, load_encoder


def test_similarity_equals_transformers_contrastive_logits(tiny_world, tiny_blip2):
    """Same images and texts, a batch size that mixes lengths and pads: max over the query tokens of the
    image query embeddings . text embedding, as ``use_image_text_matching_head=False`` computes."""
    paths = [tiny_world.root / f"images/img{i}.png" for i in range(4)]
    images = [Image.open(p).convert("RGB") for p in paths]
    texts = list(tiny_world.texts[:7])  # captions past the 16-token context and short sentences
    bundle = load_encoder(str(tiny_blip2))
    bundle.model.eval()
    pixels = bundle.image_processor(images, return_tensors="pt")["pixel_values"]
    ours_images = embed_pixels(bundle.model, pixels)
    ours_texts, cut = embed_text_strings_counted(bundle, texts, batch_size=3)
    ours = similarity(ours_images, ours_texts)

    model = Blip2ForImageTextRetrieval.from_pretrained(tiny_blip2).eval()
    tokenizer = AutoTokenizer.from_pretrained(tiny_blip2)
    tokens = tokenizer(texts, padding=True, truncation=True, max_length=16, return_tensors="pt")
    reference = AutoImageProcessor.from_pretrained(tiny_blip2)(images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        logits = model(pixel_values=reference, input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"],
                       use_image_text_matching_head=False).logits_per_image
    assert ours.shape == (4, 7) and ours_images.shape == (4, 4 * 16)
    torch.testing.assert_close(ours, logits, atol=1e-5, rtol=1e-5)
    lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
    assert cut == count_truncated(bundle, texts) == sum(n > 16 for n in lengths) > 0
    assert bundle.max_text_len == 16


def test_other_commands_refuse_a_blip2_folder_naming_the_kinds(tiny_world, tiny_blip2, tmp_path, capsys):
    code = main(["mine", "--model", str(tiny_blip2), "--data", str(tiny_world.captions), "--regions", "grid",
                 "--out", str(tmp_path / "m.jsonl"), "--num-workers", "0", "--no-progress", "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1, err
    assert "'blip-2'" in err[0] and "clip and siglip" in err[0] and "goalclip eval" in err[0]


def test_context_beyond_blip2s_own_is_refused(tiny_world, tiny_blip2, capsys):
    code = main(["eval", "--model", str(tiny_blip2), "--data", str(tiny_world.captions), "--context", "40",
                 "--keep-positions", "2", "--device", "cpu", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 1 and "cannot stretch" in err and "16" in err


def test_a_shorter_max_text_len_cuts_blip2_texts_there_ending_in_sep(tiny_world, tiny_blip2):
    bundle = load_encoder(str(tiny_blip2))
    tokens = bundle.tokenize(list(tiny_world.texts[:3]), 8)
    assert tokens["input_ids"].shape[1] == 8
    assert (tokens["input_ids"][:, -1] == bundle.tokenizer.sep_token_id).all()


def test_a_context_within_blip2s_own_cuts_its_texts_there_and_is_recorded(tiny_world, tiny_blip2):
    config = EvalConfig(models=[str(tiny_blip2)], data=str(tiny_world.captions), context=12, keep_positions=2,
                        progress=False)
    row = evaluate(config)["models"][0]
    assert row["text_len"] == 12 and row["truncated_texts"] == {"retrieval": 8}
