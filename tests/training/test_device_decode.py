"""``train --decode-on device`` (goalclip.training.device_decode): the batch's JPEGs decoded, cut and resized
in the main process on the model's device. On a CPU it must give the workers' batches exactly."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from PIL import Image

from goalclip.core.images import ImageError
from goalclip.training.config import TrainConfig
from goalclip.training.data import Collate, TrainDataset, load_examples
from goalclip.training.device_decode import DeviceViews
from goalclip.training.trainer import train
from tests.core.test_images import photo


@pytest.fixture(scope="module")
def jpeg_world(tiny_world, tmp_path_factory) -> Path:
    """The tiny world's mined manifest with its images as JPEGs (the format the device decoder reads), plus
    a CMYK JPEG (print-shop files: torchcodec refuses them, PIL reads them), a PNG (decoded in the workers
    whatever the flag) and a large photo with a pair (the crop far smaller than the image)."""
    folder = tmp_path_factory.mktemp("jpeg_world")
    records = [json.loads(line) for line in tiny_world.mined.read_text().splitlines()]
    for index, record in enumerate(records):
        source = tiny_world.root / record["image"]
        if index == 2:  # stays a PNG
            record["image"] = str(source)
            continue
        image = Image.open(source).convert("RGB")
        path = folder / f"{record['id']}.jpg"
        (image.convert("CMYK") if index == 1 else image).save(path, quality=95)
        record["image"] = str(path)
    big = folder / "big.jpg"
    photo(400, 300).save(big, quality=92)
    records.append({**records[0], "id": "big", "image": str(big),
                    "local": {**records[0]["local"], "box": [12.5, 30, 200.2, 250]}})
    out = folder / "mined.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return out


def _batch(bundle, manifest: Path, decode_on: str, need_local: bool = True) -> dict[str, torch.Tensor]:
    examples = load_examples(manifest, need_local=need_local)
    dataset = TrainDataset(examples, bundle, need_local=need_local, decode_on=decode_on)
    collated = Collate(pad_id=bundle.tokenizer.pad_token_id)([dataset[i] for i in range(len(dataset))])
    assert isinstance(collated["pixel_values"], DeviceViews) == (decode_on == "device")
    return dataset.to_device(collated, "cpu")


@pytest.mark.parametrize("need_local", [True, False])
def test_decoding_on_the_device_gives_the_workers_batch_exactly_on_a_cpu(tiny_bundle, jpeg_world, need_local) -> None:
    workers = _batch(tiny_bundle, jpeg_world, "workers", need_local)
    device = _batch(tiny_bundle, jpeg_world, "device", need_local)
    assert workers.keys() == device.keys()
    for key in workers:
        assert torch.equal(workers[key], device[key]), key


def test_training_with_decode_on_device_logs_the_workers_losses(tiny_world, jpeg_world, tmp_path) -> None:
    """The real trainer, both ways, on the JPEG world: the same loss at every step (the device run with two
    loader workers, so its undecoded batches cross between processes)."""
    losses = {}
    for place, workers in (("workers", 0), ("device", 2)):
        out = tmp_path / place
        train(TrainConfig(model=str(tiny_world.model), data=str(jpeg_world), out=str(out), max_steps=3, batch_size=2,
                          max_text_len=40, keep_positions=4, num_workers=workers, progress=False, log_every=1,
                          decode_on=place))
        losses[place] = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()
                         if "loss" in json.loads(line)]
    assert len(losses["workers"]) == 3 and losses["device"] == losses["workers"]


def _broken_copy(source: str, folder: Path) -> str:
    broken = folder / "broken.jpg"
    data = Path(source).read_bytes()
    broken.write_bytes(data[: data.index(b"\xff\xda") + 24])  # cut after the start of scan: the header reads
    return str(broken)


def test_an_image_the_device_cannot_decode_leaves_the_batch_as_a_failure_naming_it(tiny_bundle, jpeg_world,
                                                                                   tmp_path) -> None:
    """As in the workers: the batch goes on without that image (its caption, crops and pairs), and the reason
    travels in ``failed``; when no image is left, ``failed`` is the only key."""
    examples = load_examples(jpeg_world, need_local=True)[:3]
    examples[1].image = _broken_copy(examples[1].image, tmp_path)
    dataset = TrainDataset(examples, tiny_bundle, need_local=True, decode_on="device")
    collate = Collate(pad_id=tiny_bundle.tokenizer.pad_token_id)
    batch = dataset.to_device(collate([dataset[0], dataset[1], dataset[2]]), "cpu")
    [reason] = batch.pop("failed")
    assert reason.startswith(f"example {examples[1].id!r}:") and "broken.jpg" in reason
    survivors = TrainDataset([examples[0], examples[2]], tiny_bundle, need_local=True)
    expected = survivors.to_device(collate([survivors[0], survivors[1]]), "cpu")
    assert batch.keys() == expected.keys()
    for key in expected:
        width = expected[key].shape[1] if key in ("caption_ids", "caption_mask", "span_mask") else None
        assert torch.equal(batch[key][:, :width] if width else batch[key], expected[key]), key
    assert dataset.to_device(collate([dataset[1]]), "cpu") == {"failed": [reason]}


def test_skip_invalid_skips_and_counts_an_image_the_device_cannot_decode(tiny_world, jpeg_world, tmp_path) -> None:
    records = [json.loads(line) for line in jpeg_world.read_text().splitlines()]
    records[3]["image"] = _broken_copy(records[3]["image"], tmp_path)
    data = tmp_path / "mined.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    config = TrainConfig(model=str(tiny_world.model), data=str(data), out=str(tmp_path / "run"), epochs=1,
                         batch_size=3, max_text_len=40, keep_positions=4, num_workers=0, progress=False,
                         decode_on="device")  # one epoch of 3 batches of 3: every image is read
    with pytest.raises(ImageError, match="broken.jpg.*--skip-invalid"):
        train(config)
    result = train(replace(config, out=str(tmp_path / "skipping"), skip_invalid=True))
    assert result["steps"] == 3 and result["skipped"] == 1
    assert any("broken.jpg" in reason for reason in result["skipped_reasons"])


def test_decode_on_device_needs_a_clip_style_processor(tiny_bundle) -> None:
    from transformers import SiglipImageProcessor

    bundle = replace(tiny_bundle, image_processor=SiglipImageProcessor(size={"height": 32, "width": 32}))
    with pytest.raises(ValueError, match="--decode-on device needs"):
        TrainDataset([], bundle, need_local=False, decode_on="device")


@pytest.mark.multiprocess
def test_two_processes_decoding_on_the_device_train_like_one_process(tiny_world, jpeg_world, tmp_path,
                                                                     launch_ranks) -> None:
    """`goalclip train --decode-on device` in 2 CPU processes at batch 2 logs the losses of 1 process at batch 4
    (each rank decodes its own share of the global batch)."""
    common = ["--max-steps", "2", "--max-text-len", "40", "--keep-positions", "4", "--num-workers", "0",
              "--no-progress", "--log-every", "1", "--decode-on", "device", "--model", str(tiny_world.model),
              "--data", str(jpeg_world)]
    train(TrainConfig(model=str(tiny_world.model), data=str(jpeg_world), out=str(tmp_path / "one"), max_steps=2,
                      batch_size=4, max_text_len=40, keep_positions=4, num_workers=0, progress=False, log_every=1,
                      decode_on="device"))
    done = launch_ranks(["-m", "goalclip.cli", "train", *common, "--batch-size", "2", "--out", tmp_path / "two"],
                        CUDA_VISIBLE_DEVICES="")
    assert done.returncode == 0, done.stdout + done.stderr
    losses = [[json.loads(line)["loss"] for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
              for run in ("one", "two")]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    record = json.loads((tmp_path / "two" / "train_config.json").read_text())
    assert record["config"]["decode_on"] == "device" and record["derived"]["num_processes"] == 2
