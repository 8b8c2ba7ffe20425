"""Mined pairs drawn as pictures (goalclip.viz.pairs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from goalclip.viz import pairs as viz
from goalclip.viz.drawing import VizError


def test_plot_pairs_draws_the_box_where_it_belongs(tmp_path):
    records = []
    for i, box in enumerate([[10, 6, 40, 30], [0, 20, 25, 48]]):
        Image.new("RGB", (64, 48), (128, 128, 128)).save(tmp_path / f"p{i}.png")
        records.append(
            {
                "id": f"pair/{i}",
                "image": f"p{i}.png",
                "caption": "A cat. A dog.",
                "local": {
                    "sentence": "A cat sits on a mat next to a very long sentence " * 3,
                    "box": box,
                    "score": 0.25 + i,
                    "source": "grid",
                },
            }
        )
    Image.new("RGB", (64, 48)).save(tmp_path / "plain.png")
    records.append({"id": "plain", "image": "plain.png", "caption": "No local pair."})
    manifest = tmp_path / "mined.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")

    files = viz.plot_pairs(manifest, tmp_path / "pairs", limit=10)
    assert [Path(f).name for f in files] == ["0000_pair_0.png", "0001_pair_1.png"]
    scale = viz.PAIR_IMAGE_SIDE / 64
    for path, record in zip(files, records):
        pixels = np.asarray(Image.open(path).convert("RGB"))
        magenta = np.all(pixels == viz.BOX_COLOUR, axis=-1)
        ys, xs = np.nonzero(magenta)
        x1, y1, x2, y2 = (round(v * scale) for v in record["local"]["box"])
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x1, y1, min(x2, 512), min(y2, 384))
        assert magenta[(y1 + y2) // 2, x1 + 1] and not magenta[(y1 + y2) // 2, (x1 + x2) // 2]
        assert pixels.shape[0] > 384  # the text panel sits under the image

    assert viz.plot_pairs(manifest, tmp_path / "one", limit=1) == [str(tmp_path / "one" / "0000_pair_0.png")]
    (tmp_path / "none.jsonl").write_text(json.dumps(records[-1]) + "\n", encoding="utf-8")
    with pytest.raises(VizError, match="no records with a mined 'local' pair"):
        viz.plot_pairs(tmp_path / "none.jsonl", tmp_path / "x")
