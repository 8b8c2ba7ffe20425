"""docs/reproduce.md runs: every command of its ```bash blocks, in order, on tiny stand-ins.

The guide names downloads by shell variables ($DOCCI, $GOAL_REPO, ...) and models by hub ids. Here
each variable points at a tiny copy of that dataset's on-disk layout, each hub id at a tiny model
built offline (a CLIP with OpenAI's 77 positions, so 77 -> 248 stretches exactly as on the real
model), and a few sizes are scaled down (SCALE). Nothing else is changed: the flags are the guide's.
A variable or hub id without a stand-in fails the test instead of reaching the network.
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import json
import os
import pickle
import re
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.conftest import TINY_OBJECTS, build_tiny_blip2, tiny_caption
from PIL import Image

from goalclip.cli import main

REPO = Path(__file__).resolve().parents[2]
GUIDE = REPO / "docs" / "reproduce.md"

# Flags whose value is a file or folder the command must have written (and not left empty).
OUTPUT_FLAGS = ("--out", "--out-test", "--out-rest", "--scores-out", "--boxes-out")
# Real sizes -> tiny ones (same code path, less work): (flag, guide value) -> replacement arguments.
SCALE = {
    ("--test-size", "1999"): ["--test-size", "2"],
    ("--shapes", "real"): ["--shapes", "tiny"],
    ("--images", "20"): ["--images", "2"],
    ("--device", "cuda"): ["--device", "cpu"],
    ("--steps", "20"): ["--steps", "2", "--n-train", "8", "--batch-size", "4"],
    ("--batch-size", "256"): ["--batch-size", "4"],
    ("--batch-size", "64"): ["--batch-size", "4"],
    ("--grad-cache-chunk", "64"): ["--grad-cache-chunk", "2"],
}
# Added where the guide leaves the default: the authors' batch of 16 needs more pairs than tiny LISM mines.
SCALE_DEFAULTS = {("goalclip", "train"): ["--batch-size", "4"]}
HUB_IDS = {
    "openai/clip-vit-base-patch16": "clip",
    "openai/clip-vit-large-patch14": "clip",
    "openai/clip-vit-large-patch14-336": "clip",
    "facebook/sam-vit-huge": "sam",
    "hustvl/yolos-tiny": "yolos",
    "google/siglip-base-patch16-224": "siglip",
    "Salesforce/blip2-itm-vit-g": "blip2",
}


# ----------------------------------------------------------------------------- reading the guide


@dataclass(frozen=True)
class Command:
    line: int  # line of docs/reproduce.md where the command starts
    argv: tuple[str, ...]  # as written, variables not yet expanded

    def __str__(self) -> str:
        return f"docs/reproduce.md:{self.line}: {shlex.join(self.argv)}"


def guide_commands(text: str) -> list[Command]:
    """The commands of every ```bash block: continuation lines joined, comments dropped."""
    commands, block, pending, start = [], False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip().startswith("```"):
            if block and pending:
                raise ValueError(f"docs/reproduce.md:{start}: block ends inside a continued command")
            block = line.strip() == "```bash" if not block else False
            continue
        if not block:
            continue
        if not pending:
            start = number
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        argv = shlex.split(pending, comments=True)
        pending = ""
        if argv:
            commands.append(Command(start, tuple(argv)))
    return commands


def resolve(command: Command, variables: dict[str, str], models: dict[str, str]) -> list[str]:
    """The command as the test runs it: variables expanded, hub ids and sizes swapped for tiny ones."""

    def expand(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in variables:
            raise KeyError(f"{command}: ${name} has no tiny stand-in in tests/docs/test_reproduce_guide.py")
        return variables[name]

    argv = [re.sub(r"\$\{(\w+)\}|\$(\w+)", expand, token) for token in command.argv]
    argv = [models[HUB_IDS[token]] if token in HUB_IDS else token for token in argv]
    argv = [models["open_clip"] if token.startswith("open_clip:") else token for token in argv]
    out: list[str] = []
    i = 0
    while i < len(argv):
        pair = tuple(argv[i : i + 2])
        if pair in SCALE:
            out += SCALE[pair]
            i += 2
        else:
            out.append(argv[i])
            i += 1
    extra = SCALE_DEFAULTS.get(tuple(argv[:2]), [])
    if extra and extra[0] not in out:
        out += extra
    return out


def _benchmark(script: str):
    path = REPO / script
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(f"guide_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_argv(argv: list[str]) -> int:
    """Run one command in this process: ``goalclip ...`` through the CLI's main, ``python benchmarks/X.py ...``
    through the script's main. Anything else is not a command the guide may use."""
    if argv[0] == "goalclip":
        try:
            return main(argv[1:])
        except SystemExit as exc:  # argparse: usage errors
            return int(exc.code or 0)
    if argv[0] == "python" and len(argv) > 1 and argv[1].startswith("benchmarks/"):
        entry = _benchmark(argv[1]).main
        old = sys.argv
        sys.argv = argv[1:]
        try:
            entry(argv[2:]) if inspect.signature(entry).parameters else entry()
        except SystemExit as exc:
            return int(exc.code or 0)
        finally:
            sys.argv = old
        return 0
    raise ValueError(f"not a goalclip or benchmarks/ command: {shlex.join(argv)}")


# ----------------------------------------------------------------------------- tiny stand-ins


def _copy_image(index: int, dest: Path, world_root: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(world_root / "images" / f"img{index % len(TINY_OBJECTS)}.png").convert("RGB").save(dest)
    return dest


def _caption(index: int) -> str:
    colour, shape, _, _ = TINY_OBJECTS[index % len(TINY_OBJECTS)]
    return tiny_caption(colour, shape)[0]


def _json(path: Path, obj: object) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj), encoding="utf-8")
    return str(path)


def _datasets(root: Path, world_root: Path) -> dict[str, str]:
    """Each dataset's layout as downloaded, with the tiny world's pictures and captions."""
    n = len(TINY_OBJECTS)
    docci = root / "docci"
    lines = [(f"train_{i:05d}", "train", i) for i in range(n)]
    lines += [(f"test_{i:05d}", "test", i) for i in range(6)] + [(f"qual_test_{i:05d}", "qual_test", i) for i in (6, 7)]
    for rid, _, i in lines:
        _copy_image(i, docci / "images" / f"{rid}.jpg", world_root)
    (docci / "docci_descriptions.jsonlines").write_text("".join(
        json.dumps({"example_id": rid, "split": split, "image_file": f"{rid}.jpg", "description": _caption(i)}) + "\n"
        for rid, split, i in lines), encoding="utf-8")

    dci = root / "dci" / "densely_captioned_images"
    for i in range(n):
        _copy_image(i, dci / "photos" / f"sa_{i}.jpg", world_root)
        x1, y1, x2, y2 = TINY_OBJECTS[i][2]
        mask = {"bounds": {"topLeft": {"x": x1, "y": y1}, "bottomRight": {"x": x2, "y": y2}}, "mask_quality": 0,
                "label": "thing", "caption": "a thing", "parent": -1, "requirements": []}
        _json(dci / "annotations" / f"sa_{i}.json", {"image": f"sa_{i}.jpg", "short_caption": "A drawing.",
                                                     "extra_caption": _caption(i), "mask_data": {"0": mask},
                                                     "mask_keys": ["0"]})
    _json(dci / "splits.json", {"train": [f"sa_{i}.json" for i in range(5)], "valid": [],
                                "test": [f"sa_{i}.json" for i in range(5, n)]})

    # The GOAL repo's DCI test ids and joint test (crops as files, no boxes; one whole-image pair).
    prefix, crops_prefix = "../DCI/dataset/densely_captioned_images/photos", "../pipline/segment_DCI_test"
    test = [{"filename": f"{prefix}/sa_{i}.jpg", "caption": _caption(i)} for i in (5, 6, 7)]
    crops = root / "goal_crops"
    joint = list(test)
    for i in (5, 6, 7):
        name = "original_image.jpg" if i == 7 else f"sa_{i}_max_1.png"
        if i != 7:
            (crops / f"sa_{i}.jpg_results").mkdir(parents=True, exist_ok=True)
            crop = Image.open(dci / "photos" / f"sa_{i}.jpg").crop(TINY_OBJECTS[i][2])
            crop.save(crops / f"sa_{i}.jpg_results" / name)
        sentence = tiny_caption(*TINY_OBJECTS[i][:2])[1]
        joint.append({"filename": f"{crops_prefix}/sa_{i}.jpg_results/{name}", "caption": sentence,
                      "similarity_score": 30.0 - i})
    goal = root / "GOAL"
    _json(goal / "datasets" / "DCI_test.json", test)
    _json(goal / "datasets" / "DCI_test_joint_sim_max_11.json", joint)

    urban = root / "urban" / "Urban1k"
    (urban / "caption").mkdir(parents=True)
    for i in range(n):
        _copy_image(i, urban / "image" / f"{i + 1}.jpg", world_root)
        (urban / "caption" / f"{i + 1}.txt").write_text(_caption(i), encoding="utf-8")

    share = root / "sharegpt4v"
    records = []
    for i in range(n):
        _copy_image(i, share / "sam" / "images" / f"sa_{i}.jpg", world_root)
        records.append({"id": f"sa_{i}", "image": f"sam/images/sa_{i}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image in detail."},
            {"from": "gpt", "value": _caption(i)}]})
    _json(share / "share-captioner_coco_lcs_sam_1246k_1107.json", records)

    def karpathy(folder: Path, name: str, sub: str) -> None:
        images = []
        for i in range(n):
            file = f"{i:012d}.jpg"
            _copy_image(i, folder / sub / file, world_root)
            colour, shape, _, _ = TINY_OBJECTS[i]
            sentences = [f"A {colour} {shape}.", f"A {shape} coloured {colour}.", f"One {colour} {shape} on white.",
                         f"The {shape} is {colour}.", f"A drawing of a {colour} {shape}."]
            images.append({"filepath": sub, "filename": file, "imgid": i, "cocoid": i, "split": "test",
                           "sentences": [{"raw": s, "tokens": s.lower().split(), "sentid": j}
                                         for j, s in enumerate(sentences)]})
        _json(folder / name, {"images": images, "dataset": name})

    karpathy(root / "coco", "dataset_coco.json", "val2014")
    karpathy(root / "flickr30k", "dataset_flickr30k.json", "flickr30k-images")

    cifar = root / "cifar"
    rng = np.random.default_rng(0)
    for folder, batch, meta, labels_key, names_key, classes in (
        ("cifar-10-batches-py", "test_batch", "batches.meta", b"labels", b"label_names", 10),
        ("cifar-100-python", "test", "meta", b"fine_labels", b"fine_label_names", 100),
    ):
        (cifar / folder).mkdir(parents=True)
        data = rng.integers(0, 256, size=(12, 3 * 32 * 32), dtype=np.uint8)
        with (cifar / folder / batch).open("wb") as handle:
            pickle.dump({b"data": data, labels_key: [int(x) for x in rng.integers(0, classes, 12)]}, handle)
        with (cifar / folder / meta).open("wb") as handle:
            pickle.dump({names_key: [f"class {k}".encode() for k in range(classes)]}, handle)

    imagenet = root / "imagenet_val"
    names = []
    for k, colour in enumerate(("red", "blue", "green", "yellow")):
        synset = f"n{k:08d}"
        names.append(f"{synset} {colour} thing")
        for i, obj in enumerate(TINY_OBJECTS):
            if obj[0] == colour:
                _copy_image(i, imagenet / synset / f"{i}.jpg", world_root)
    (root / "imagenet_names.txt").write_text("\n".join(names) + "\n", encoding="utf-8")

    return {"DOCCI": str(docci), "DCI": str(root / "dci"), "URBAN1K": str(root / "urban"), "SHAREGPT4V": str(share),
            "COCO": str(root / "coco"), "FLICKR30K": str(root / "flickr30k"), "GOAL_REPO": str(goal),
            "GOAL_CROPS": str(crops), "CIFAR": str(cifar), "IMAGENET_VAL": str(imagenet),
            "IMAGENET_NAMES": str(root / "imagenet_names.txt")}


def _confident_sam(folder: str) -> None:
    """A random SAM predicts low IoUs and near-zero mask logits, so SAM's quality filters drop every
    mask and LISM has only the whole image (no pair). Predicting IoU 1 and scaling the mask logits
    far from 0 lets its masks through, so the guide's LISM steps mine pairs as they do on real data."""
    from transformers import SamModel

    model = SamModel.from_pretrained(folder)
    with torch.no_grad():
        head = model.mask_decoder.iou_prediction_head.proj_out
        head.weight.zero_()
        head.bias.fill_(1.0)
        for mlp in model.mask_decoder.output_hypernetworks_mlps:
            mlp.proj_out.weight.mul_(1e7)
    model.save_pretrained(folder)


def _confident_yolos(folder: str) -> None:
    """A random YOLOS scores every box near chance, under the 0.3 threshold, so detector-only mining
    (FAST-GOAL Table VII) would find no region. A large bias on the first class makes every
    detection token sure of it, so its (random) boxes pass, as trained YOLOS's boxes do."""
    from transformers import YolosForObjectDetection

    model = YolosForObjectDetection.from_pretrained(folder)
    with torch.no_grad():
        model.class_labels_classifier.layers[-1].bias[0] = 20.0
    model.save_pretrained(folder)


def _tiny_open_clip(folder: Path) -> str:
    """Every ``open_clip:`` row of the guide becomes this tiny open_clip model, as a local-dir spec."""
    import open_clip
    from safetensors.torch import save_file
    from tests.models.test_open_clip import TINY_CFG

    folder.mkdir()
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CFG, "preprocess_cfg": {}}))
    model = open_clip.CLIP(**TINY_CFG)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, folder / "open_clip_model.safetensors")
    return f"open_clip:local-dir:{folder}"


def _models(root: Path, texts: tuple[str, ...]) -> tuple[dict[str, str], dict[str, str]]:
    """Tiny CLIP (77 positions), SigLIP (64), BLIP-2 (512), SAM and YOLOS folders; the authors' GOAL weights and a
    Long-CLIP checkpoint."""
    import open_clip

    from goalclip.demo.tiny import build_tiny_clip, build_tiny_siglip
    from goalclip.models.clip import save_clip, stretch_positions

    torch.manual_seed(0)
    corpus = list(texts) + [_caption(i) for i in range(len(TINY_OBJECTS))]
    bundle = build_tiny_clip(corpus, image_size=32, patch_size=8, width=32, layers=2, heads=2, projection_dim=32,
                             context_length=77)
    clip = str(save_clip(bundle, root / "clip"))
    detectors = _benchmark("benchmarks/lism_vs_flism.py").build_models(root / "detectors", "tiny")
    _confident_sam(detectors["sam"])
    _confident_yolos(detectors["yolos"])
    # The GOAL authors release 248-position state dicts of the stretched CLIP.
    stretch_positions(bundle.model, keep=20, target=248)
    torch.save(bundle.model.state_dict(), root / "goal_b16.pth")
    # Long-CLIP: an OpenAI-layout CLIP with 248 positions and its residual position table (width 64 = 1 head).
    tokenizer = bundle.tokenizer
    longclip = open_clip.model.CLIP(
        embed_dim=32, vision_cfg={"layers": 1, "width": 64, "head_width": 64, "patch_size": 8, "image_size": 32},
        text_cfg={"context_length": 248, "vocab_size": len(tokenizer), "width": 64, "heads": 1, "layers": 1,
                  "pool_type": "eos", "eos_id": tokenizer.eos_token_id}, quick_gelu=True)
    state = longclip.state_dict()
    state["positional_embedding_res"] = state["positional_embedding"].flip(0).clone()
    torch.save(state, root / "longclip_b16.pt")
    siglip = build_tiny_siglip(corpus, image_size=32, patch_size=8, width=32, layers=2, heads=2, context_length=64)
    models = {"clip": clip, "sam": detectors["sam"], "yolos": detectors["yolos"],
              "open_clip": _tiny_open_clip(root / "open_clip"), "siglip": str(save_clip(siglip, root / "siglip")),
              "blip2": str(build_tiny_blip2(corpus, root / "blip2", context=512))}
    return models, {"GOAL_B16": str(root / "goal_b16.pth"), "LONGCLIP_B16": str(root / "longclip_b16.pt"),
                    "LONGCLIP_L14": str(root / "longclip_b16.pt")}


# ----------------------------------------------------------------------------- running the guide


def _written(path: Path) -> bool:
    """A non-empty file, or a folder holding one (an empty output is as missing as an absent one)."""
    if path.is_dir():
        return any(p.is_file() and p.stat().st_size > 0 for p in path.rglob("*"))
    return path.is_file() and path.stat().st_size > 0


@dataclass
class Result:
    argv: list[str]
    code: int | None = None  # None: not run, because an earlier command failed
    seconds: float = 0.0
    output: str = ""
    missing: list[str] = field(default_factory=list)
    shares: int | None = None  # line of the train command whose run this one shares


def train_path(command: Command) -> tuple | None:
    """What decides a train command's code path: every option but its data and output, and whether it
    starts from a hub model or from a run folder (two-stage). Two train commands with the same path
    share one run in this test; the later one is still parsed by the real parser."""
    argv = command.argv
    if argv[:2] != ("goalclip", "train"):
        return None
    options = []
    for i, token in enumerate(argv):
        if not token.startswith("--") or token in ("--data", "--out"):
            continue
        value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
        options.append((token, ("hub" if value in HUB_IDS else "run") if token == "--model" else value))
    return tuple(sorted(options))


def _option(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def share_run(result: Result, earlier: Result, work: Path) -> int:
    """A train command on an already-run path: its flags must parse and its data exist; its model is
    a copy of the earlier run's."""
    from goalclip.cli import build_parser

    try:
        build_parser().parse_args(result.argv[1:])
    except SystemExit as exc:
        return int(exc.code or 0)
    if not (work / _option(result.argv, "--data")).is_file():
        result.output = f"--data {_option(result.argv, '--data')} does not exist\n"
        return 1
    shutil.copytree(work / _option(earlier.argv, "--out"), work / _option(result.argv, "--out"))
    return 0


COMMANDS = guide_commands(GUIDE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def guide_run(tmp_path_factory, tiny_world) -> dict[int, Result]:
    """Every command of the guide, in order, in one working folder; stops at the first failure."""
    root = tmp_path_factory.mktemp("guide")
    models, files = _models(root / "models", tiny_world.texts)
    variables = {**_datasets(root / "downloads", tiny_world.root), **files, "GLIT_CAPTIONS": str(tiny_world.captions)}
    work = root / "work"
    work.mkdir()
    results: dict[int, Result] = {}
    paths: dict[tuple, Result] = {}
    failed = False
    cwd = os.getcwd()
    os.chdir(work)
    try:
        for command in COMMANDS:
            result = results[command.line] = Result(resolve(command, variables, models))
            if failed:
                continue
            buffer = io.StringIO()
            start = time.process_time()
            path = train_path(command)
            with contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
                try:
                    if path is not None and path in paths:
                        result.shares = next(line for line, r in results.items() if r is paths[path])
                        result.code = share_run(result, paths[path], work)
                    else:
                        if path is not None:
                            paths[path] = result
                        result.code = run_argv(result.argv)
                except Exception as exc:  # noqa: BLE001  (reported by the command's own test)
                    result.code, result.output = -1, f"{type(exc).__name__}: {exc}\n"
            result.seconds = time.process_time() - start
            result.output += buffer.getvalue()
            flags = result.argv
            result.missing = [flags[i + 1] for i, flag in enumerate(flags[:-1])
                              if flag in OUTPUT_FLAGS and not _written(work / flags[i + 1])]
            failed = result.code != 0 or bool(result.missing)
    finally:
        os.chdir(cwd)
    timing = sorted(((r.seconds, line) for line, r in results.items()), reverse=True)
    print("guide commands by CPU seconds:", ", ".join(f"line {line} {s:.1f}" for s, line in timing))
    print("train commands sharing a run:", ", ".join(f"line {line} -> {r.shares}" for line, r in results.items()
                                                     if r.shares is not None))
    return results


@pytest.mark.slow
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: f"line{c.line}-{'-'.join(c.argv[1:3])}")
def test_guide_command_runs_and_writes_its_outputs(guide_run, command):
    result = guide_run[command.line]
    assert result.code is not None, f"{command}: not run, an earlier guide command failed"
    assert result.code == 0, f"{command}\nexit {result.code}:\n{result.output[-2000:]}"
    assert not result.missing, f"{command}: did not write {result.missing}"


def test_the_guide_covers_each_paper_experiment_with_a_command():
    argvs = [" ".join(c.argv) for c in COMMANDS]
    for needle in ("--regions lism", "--regions flism", "--regions detector", "--method global", "--method local",
                   "--method wo-tsl", "--method goal", "--recipe reference", "--context 248", "--joint",
                   "--no-joint-keep-whole", "--format goal-json", "--task classify", "open_clip:", "--local-pairs 3",
                   "--pair-weighting similarity", "--tsl-heads separate", "--model runs/glit/fastgoal", "viz errors",
                   "viz retrieval", "--kind patch", "--kind pca", "benchmarks/lism_vs_flism.py",
                   "benchmarks/bf16_weights.py",
                   "data split", "data score", "--split test+qual_test", "--batch-size 256", "--batch-size 64",
                   "--grad-cache-chunk", "facebook/sam-vit-huge", "openai/clip-vit-large-patch14 ",
                   "--model runs/longclip-b16 --data", "--data dci/all.jsonl", "--data docci/test5100.jsonl",
                   "Salesforce/blip2-itm-vit-g"):
        assert any(needle in a for a in argvs), f"no guide command uses {needle!r}"


# ----------------------------------------------------------------------------- the reader and runner themselves


def test_reader_joins_continuations_drops_comments_and_keeps_line_numbers():
    text = "intro\n```bash\n# a comment\ngoalclip eval --model a \\\n    --data 'b c.jsonl'  # trailing\n```\n" \
           "```python\nnot = 'a command'\n```\n```bash\n\npython benchmarks/x.py --n 2\n```\n"
    commands = guide_commands(text)
    assert [(c.line, c.argv) for c in commands] == [
        (4, ("goalclip", "eval", "--model", "a", "--data", "b c.jsonl")),
        (12, ("python", "benchmarks/x.py", "--n", "2")),
    ]


def test_resolve_expands_variables_maps_hub_ids_scales_sizes_and_refuses_unknown_variables():
    command = Command(7, ("goalclip", "data", "split", "--data", "$DCI/all.jsonl", "--model",
                          "openai/clip-vit-large-patch14-336", "--test-size", "1999", "--seed", "0"))
    got = resolve(command, {"DCI": "/tiny/dci"}, {"clip": "/tiny/clip"})
    assert got == ["goalclip", "data", "split", "--data", "/tiny/dci/all.jsonl", "--model", "/tiny/clip",
                   "--test-size", "2", "--seed", "0"]
    with pytest.raises(KeyError, match=r"reproduce\.md:7: .*\$DCI has no tiny stand-in"):
        resolve(command, {}, {"clip": "/tiny/clip"})


def test_train_commands_share_a_run_only_when_nothing_but_data_and_output_differs():
    def path(*argv: str) -> tuple | None:
        return train_path(Command(1, ("goalclip", "train", *argv)))

    hub = ("--model", "openai/clip-vit-base-patch16")
    goal = path(*hub, "--data", "docci/a.jsonl", "--method", "goal", "--out", "runs/a")
    assert goal == path(*hub, "--data", "dci/b.jsonl", "--method", "goal", "--out", "runs/b")
    assert goal != path("--model", "runs/stage1", "--data", "x.jsonl", "--method", "goal", "--out", "runs/c")
    assert goal != path(*hub, "--data", "x.jsonl", "--method", "goal", "--local-pairs", "3", "--out", "runs/d")
    assert goal != path(*hub, "--data", "x.jsonl", "--method", "global", "--out", "runs/e")
    assert path("--model", "m") != path("--model", "m", "--gradient-checkpointing")
    assert train_path(Command(1, ("goalclip", "eval", "--model", "m"))) is None


def test_a_guide_command_with_a_flag_that_does_not_exist_fails(tiny_world, capsys):
    # what would happen to the guide if it named a flag the CLI does not have: the command's test fails
    assert run_argv(["goalclip", "eval", "--model", str(tiny_world.model), "--data", str(tiny_world.captions),
                     "--no-such-flag"]) == 2
    assert "unrecognized arguments: --no-such-flag" in capsys.readouterr().err
    with pytest.raises(ValueError, match="not a goalclip or benchmarks/ command"):
        run_argv(["cd", "runs"])
