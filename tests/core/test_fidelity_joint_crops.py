"""One rule for joint manifests whose local items are crop files (issue #20, item 11).

The GOAL authors' published joint tests list each local item as a crop image file without a box.
``eval --joint`` accepted them while ``read_manifest`` and ``data joint`` rejected them
("local.box ... got None"); every reader now takes a ``local`` pair with a box or a crop file.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from goalclip.cli import main
from goalclip.core.manifest import ManifestError, write_jsonl
from goalclip.core.records import read_manifest
from goalclip.training.data import load_examples


def _crop_file_joint(tiny_world, root: Path) -> Path:
    """The tiny world's mined pairs with each local item saved as a crop file (relative path, no box)."""
    (root / "crops").mkdir(parents=True)
    records = []
    for line in Path(tiny_world.mined).read_text().splitlines():
        record = json.loads(line)
        record["image"] = str(tiny_world.root / record["image"])
        crop = root / "crops" / f"{record['id']}.png"
        Image.open(record["image"]).crop(tuple(int(v) for v in record["local"]["box"])).save(crop)
        local = {k: v for k, v in record["local"].items() if k != "box"}
        records.append({**record, "local": {**local, "image": f"crops/{crop.name}"}})
    write_jsonl(root / "cropped.jsonl", records)
    return root / "cropped.jsonl"


def test_crop_file_pairs_pass_read_manifest_data_joint_and_eval_joint(tiny_world, tmp_path, capsys) -> None:
    cropped = _crop_file_joint(tiny_world, tmp_path / "authors")
    records = read_manifest(cropped)  # before: ManifestError "local.box ... got None"
    assert records[0]["local"]["image"] == str(tmp_path / "authors" / "crops" / "img0.png")
    assert "box" not in records[0]["local"]

    out = tmp_path / "elsewhere" / "joint.jsonl"
    out.parent.mkdir()
    assert main(["data", "joint", "--data", str(tiny_world.captions), "--mined", str(cropped), "--out", str(out)]) == 0
    written = json.loads(out.read_text().splitlines()[0])
    assert written["local"]["image"] == "../authors/crops/img0.png"  # relative to the new manifest, like "image"
    assert Path(read_manifest(out)[0]["local"]["image"]).resolve() == Path(records[0]["local"]["image"])

    capsys.readouterr()
    assert main(["eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions), "--joint", str(out),
                 "--no-progress", "--device", "cpu", "--batch-size", "4"]) == 0
    assert "map@10" in capsys.readouterr().out.lower()


def test_training_on_crop_file_pairs_says_why_not(tiny_world, tmp_path) -> None:
    cropped = _crop_file_joint(tiny_world, tmp_path)
    message = r"cropped\.jsonl:1: field 'local' is a crop file .* training needs the box"
    with pytest.raises(ManifestError, match=message):
        load_examples(cropped, need_local=True)
    assert len(load_examples(cropped, need_local=False)) == len(tiny_world.ids)  # global training reads it
