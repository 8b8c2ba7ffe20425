"""Mining's CPU work runs in worker processes, and the mined pairs equal the in-process computation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

import goalclip.models.embed as embed_module
from goalclip.core.images import crop_to_box, load_rgb, pixel_values
from goalclip.core.manifest import captions_of
from goalclip.core.records import read_manifest
from goalclip.core.text import clean_text, split_sentences
from goalclip.mining.feed import CropCutter, PackedImages
from goalclip.mining.mine import MineConfig, match_pairs, mine, mine_batch
from goalclip.mining.regions import build_proposer
from goalclip.models.clip import load_clip
from goalclip.models.embed import embed_pixels, embed_text_strings_counted

SCORE_TOLERANCE = 1e-6  # scores are written rounded to 1e-6; the same pixels give the same embeddings


@pytest.fixture(scope="module")
def detector_dir(tmp_path_factory) -> Path:
    from transformers import YolosConfig, YolosForObjectDetection, YolosImageProcessor

    torch.manual_seed(1)
    model = YolosForObjectDetection(YolosConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                                intermediate_size=32, image_size=[64, 96], patch_size=16,
                                                num_detection_tokens=6, num_labels=2))
    with torch.no_grad():  # detection tokens start as zeros: make them differ, or every box is the same
        model.vit.embeddings.detection_tokens.normal_(std=1.0)
    folder = tmp_path_factory.mktemp("feed_yolos")
    model.save_pretrained(folder)
    YolosImageProcessor(size={"shortest_edge": 64, "longest_edge": 96}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def captions(tiny_world, tmp_path_factory) -> Path:
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    for record in records:
        record["image"] = str(tiny_world.root / record["image"])
    path = tmp_path_factory.mktemp("feed_data") / "captions.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _config(tiny_world, captions: Path, detector_dir: Path, out: Path, workers: int) -> MineConfig:
    return MineConfig(model=str(tiny_world.model), data=str(captions), out=str(out), regions="flism",
                      detector=str(detector_dir), threshold=0.0, max_boxes=4, top_k=3, batch_size=3,
                      crop_batch_size=7, num_workers=workers, progress=False)


def _reference(config: MineConfig) -> dict[str, list[dict]]:
    """Candidates per image id, computed the way mining did before its feed moved to workers: the
    proposer on the batch's PIL images, every crop through the image processor in this process."""
    bundle = load_clip(config.model)
    proposer = build_proposer(config.regions, detector=config.detector, threshold=config.threshold,
                              max_boxes=config.max_boxes)
    records = read_manifest(config.data)
    out = {}
    for start in range(0, len(records), config.batch_size):
        batch = records[start : start + config.batch_size]
        images = [load_rgb(r["image"]) for r in batch]
        regions = proposer.propose(images, [r["id"] for r in batch])
        sentences = [[s.text for s in split_sentences(clean_text(captions_of(r)[0]))] for r in batch]
        crops = [crop_to_box(image, reg.box) for image, regs in zip(images, regions) for reg in regs]
        pixels = pixel_values(bundle.image_processor, crops)
        crop_emb = torch.cat([embed_pixels(bundle.model, pixels[i : i + config.crop_batch_size])
                              for i in range(0, len(pixels), config.crop_batch_size)])
        text_emb, _ = embed_text_strings_counted(bundle, [s for sents in sentences for s in sents],
                                           batch_size=config.crop_batch_size)
        crop_at = text_at = 0
        for record, regs, sents in zip(batch, regions, sentences):
            similarity = text_emb[text_at : text_at + len(sents)] @ crop_emb[crop_at : crop_at + len(regs)].T
            out[record["id"]] = match_pairs(similarity, sents, regs, config.top_k).candidates
            crop_at += len(regs)
            text_at += len(sents)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 2])
def test_mined_pairs_equal_the_in_process_computation(tiny_world, captions, detector_dir, tmp_path, workers) -> None:
    config = _config(tiny_world, captions, detector_dir, tmp_path / "mined.jsonl", workers)
    summary = mine(config)
    expected = _reference(config)
    mined = {r["id"]: r["candidates"] for r in read_manifest(config.out)}
    assert summary["pairs"] == len(expected) == len(tiny_world.ids)
    assert {"detector", "grid"} <= {c["source"] for cands in mined.values() for c in cands}
    for image_id, candidates in expected.items():
        got = mined[image_id]
        assert [(c["sentence"], c["box"], c["source"]) for c in got] == \
               [(c["sentence"], c["box"], c["source"]) for c in candidates]
        assert [c["score"] for c in got] == pytest.approx([c["score"] for c in candidates], abs=SCORE_TOLERANCE)


@pytest.mark.slow
def test_mine_runs_no_image_processor_in_the_main_process(tiny_world, captions, detector_dir, tmp_path,
                                                          monkeypatch) -> None:
    """Decoding, the detector's processor, cropping and the matcher's processor all run in workers."""
    from transformers import AutoImageProcessor

    from goalclip.models.clip import load_processors

    main = os.getpid()
    classes = {type(load_processors(str(tiny_world.model))[1]), type(AutoImageProcessor.from_pretrained(detector_dir))}
    for cls in classes:
        real = cls.__call__

        def guarded(self, *args, _real=real, _name=cls.__name__, **kwargs):
            assert os.getpid() != main, f"{_name} ran in the main process"
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__call__", guarded)
    summary = mine(_config(tiny_world, captions, detector_dir, tmp_path / "mined.jsonl", workers=2))
    assert summary["pairs"] == len(tiny_world.ids)


def test_mining_cleans_each_sentence_once(tiny_world, tiny_bundle, monkeypatch) -> None:
    records = [json.loads(line) for line in tiny_world.captions.read_text().splitlines()]
    images = [load_rgb(tiny_world.root / r["image"]) for r in records]
    cleaned_again = []
    monkeypatch.setattr(embed_module, "clean_text", lambda text: cleaned_again.append(text) or clean_text(text))
    mined = mine_batch(tiny_bundle, build_proposer("grid"), records, images, top_k=3, crop_batch_size=16,
                       device=torch.device("cpu"))
    assert all(match is not None for _, match, _ in mined.results)
    assert cleaned_again == []  # split from the cleaned caption: cleaning each sentence again was wasted


def test_a_batch_of_images_crosses_processes_as_one_tensor(tiny_world) -> None:
    """The loader's images pack into one flat uint8 tensor (one shared-memory piece to pass, not one per image),
    and each unpacks to exactly the decoded pixels; the crop cutter's jobs all name that one tensor."""
    images = [load_rgb(path) for path in sorted((tiny_world.root / "images").glob("*.png"))[:3]]
    packed = PackedImages.pack(images)
    assert packed.flat.dim() == 1 and packed.flat.dtype == torch.uint8 and len(packed) == len(images)
    for index, image in enumerate(images):
        assert torch.equal(packed.image(index), torch.from_numpy(np.array(image)))
    with CropCutter(load_clip(str(tiny_world.model)).image_processor, (3, 32, 32), workers=1) as cutter:
        boxes = [[(0.0, 0.0, 8.0, 8.0)], [], [(1.0, 2.0, 9.5, 20.0), (0.0, 0.0, 4.0, 4.0)]]
        crops = cutter.submit(packed, boxes)()
    processor = load_clip(str(tiny_world.model)).image_processor
    expected = pixel_values(processor, [crop_to_box(images[i], b) for i, bs in enumerate(boxes) for b in bs])
    assert torch.equal(crops, expected)
