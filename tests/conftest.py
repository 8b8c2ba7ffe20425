"""Shared test setup: one torch thread (the CI machine has 2 busy cores) and offline hub access."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

torch.set_num_threads(1)


# ----------------------------------------------------------------------------- tiny shared world
# A session-wide tiny CLIP saved as a folder, and a tiny world of PIL-drawn images whose captions,
# true boxes and mined pairs are written as manifests. Built once; tests copy what they mutate.

import json  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

# (colour, shape, (x1, y1, x2, y2), image (width, height)): landscape, portrait and square images.
TINY_OBJECTS = [
    ("red", "square", (8, 8, 24, 24), (64, 48)),
    ("blue", "circle", (36, 20, 60, 44), (64, 48)),
    ("green", "square", (4, 30, 20, 60), (48, 64)),
    ("yellow", "circle", (24, 4, 44, 28), (48, 64)),
    ("red", "circle", (10, 10, 40, 40), (48, 48)),
    ("blue", "square", (26, 6, 44, 22), (48, 48)),
    ("green", "circle", (30, 12, 58, 40), (64, 48)),
    ("yellow", "square", (8, 36, 40, 60), (48, 64)),
]
TINY_RGB = {"red": (220, 40, 40), "blue": (40, 90, 225), "green": (40, 165, 60), "yellow": (240, 205, 40)}
# Trainer settings of the tiny training runs the tests compare (small batches, short texts, no workers).
TINY_TRAIN = {"batch_size": 2, "max_text_len": 52, "keep_positions": 4, "num_workers": 0, "progress": False,
              "log_every": 1}
TINY_MODEL_KWARGS = dict(
    image_size=32, patch_size=8, width=32, layers=2, heads=2, projection_dim=32, context_length=16
)


def tiny_caption(colour: str, shape: str) -> tuple[str, str]:
    """(caption, its object sentence): the object sentence is the second of three."""
    sentence = f"A {colour} {shape} is drawn here."
    return f"The picture has a plain white background. {sentence} Nothing else is in it.", sentence


@dataclass(frozen=True)
class TinyWorld:
    root: Path
    model: Path  # a saved tiny CLIP folder (context 16)
    captions: Path  # {"id", "image", "caption"}
    boxes: Path  # external boxes {"id", "boxes"}
    mined: Path  # captions + "local" (object sentence, true box)
    ids: tuple[str, ...]
    texts: tuple[str, ...]  # the tokenizer's training corpus


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory: pytest.TempPathFactory) -> TinyWorld:
    from goalclip.demo.tiny import build_tiny_clip
    from goalclip.models.clip import save_clip

    root = tmp_path_factory.mktemp("tiny_world")
    (root / "images").mkdir()
    captions, boxes, mined, texts = [], [], [], []
    for i, (colour, shape, box, size) in enumerate(TINY_OBJECTS):
        image = Image.new("RGB", size, (240, 240, 240))
        draw = ImageDraw.Draw(image)
        # PIL's rectangle/ellipse include the far edge; the box's right/bottom edges are exclusive.
        (draw.rectangle if shape == "square" else draw.ellipse)(
            (box[0], box[1], box[2] - 1, box[3] - 1), fill=TINY_RGB[colour]
        )
        image.save(root / "images" / f"img{i}.png")
        caption, sentence = tiny_caption(colour, shape)
        record = {"id": f"img{i}", "image": f"images/img{i}.png", "caption": caption}
        captions.append(record)
        boxes.append({"id": f"img{i}", "boxes": [list(box)]})
        mined.append(
            {**record, "local": {"sentence": sentence, "box": list(box), "score": 1.0, "source": "external"}}
        )
        texts += [caption, sentence]
    texts += ["Dr. Smith measured a 3.5 m tall door.", "He said \"stop\" twice. The red.The blue."]

    def write(name: str, records: list[dict]) -> Path:
        path = root / name
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return path

    bundle = build_tiny_clip(texts, **TINY_MODEL_KWARGS)
    model = save_clip(bundle, root / "model")
    return TinyWorld(
        root=root,
        model=model,
        captions=write("captions.jsonl", captions),
        boxes=write("boxes.jsonl", boxes),
        mined=write("mined.jsonl", mined),
        ids=tuple(r["id"] for r in captions),
        texts=tuple(texts),
    )


@pytest.fixture(scope="session")
def tiny_bundle(tiny_world: TinyWorld):
    """The saved tiny CLIP loaded once (read-only: tests that change it load their own copy)."""
    from goalclip.models.clip import load_clip

    bundle = load_clip(str(tiny_world.model))
    bundle.model.eval()
    return bundle


@pytest.fixture
def crash_at_step(monkeypatch: pytest.MonkeyPatch):
    """``crash_at_step(n)``: the training step raises KeyboardInterrupt (a simulated kill) at its n-th call.

    Pass ``patch`` (e.g. a ``monkeypatch.context()``) to scope the crash; ``monkeypatch.undo()`` ends it too.
    """
    from goalclip.training.step import StepModule

    def arm(n: int, patch: pytest.MonkeyPatch = monkeypatch) -> None:
        real_forward, calls = StepModule.forward, {"n": 0}

        def crashing(self, batch):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt("simulated crash")
            return real_forward(self, batch)

        patch.setattr(StepModule, "forward", crashing)

    return arm


# ----------------------------------------------------------------------------- several processes

RANKS_TIMEOUT_S = 240  # generous: starting torch in several processes is slow on a busy 2-core CI box


@pytest.fixture(scope="session")
def launch_ranks():
    """``launch_ranks(argv, n=2, **env) -> CompletedProcess``: ``torchrun --standalone --nproc-per-node n argv``.

    The one launcher of the multi-process tests: this checkout's code (PYTHONPATH), one thread per rank,
    gloo on the loopback, no inherited ACCELERATE_USE_CPU (pass it in ``env``); a hang fails the test.
    ``argv`` is what follows torchrun's options: ``["-m", "goalclip.cli", "train", ...]`` or a script.
    """
    import socket
    import subprocess
    import sys

    def launch(argv: list[str], n: int = 2, timeout: float = RANKS_TIMEOUT_S,
               **env: str) -> subprocess.CompletedProcess:
        environ = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
        environ.update(PYTHONPATH=os.pathsep.join(sys.path), OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
        if "lo" in {name for _, name in socket.if_nameindex()}:
            environ["GLOO_SOCKET_IFNAME"] = "lo"
        environ.update(env)
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(n),
                   *map(str, argv)]
        try:
            return subprocess.run(command, env=environ, capture_output=True, text=True, timeout=timeout,
                                  check=False)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{n} processes of {' '.join(map(str, argv[:4]))} ... did not finish within {timeout:.0f} s")

    return launch


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A multi-process test is slow too (``pytest -m "not slow"`` is the fast loop); tests under
    tests/reliability/ carry the ``reliability`` marker (the promises README lists by name)."""
    for item in items:
        if item.get_closest_marker("multiprocess"):
            item.add_marker(pytest.mark.slow)
        if "reliability" in item.path.parts:
            item.add_marker(pytest.mark.reliability)


@pytest.fixture(scope="session")
def clip_tokenizer():
    """OpenAI's real CLIP BPE (its vocabulary ships in open_clip's wheel), for exact-span tests."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from _common import real_clip_tokenizer

    tokenizer = real_clip_tokenizer(max_length=248)
    assert tokenizer is not None, "open_clip (a test dependency) ships the BPE vocabulary these tests need"
    return tokenizer


@pytest.fixture(scope="session")
def tiny_siglip(tiny_world: TinyWorld) -> Path:
    """A saved tiny SigLIP folder (context 16, the tiny CLIP's sizes) with a tokenizer of the world's texts."""
    from goalclip.demo.tiny import build_tiny_siglip
    from goalclip.models.clip import save_clip

    kwargs = {k: TINY_MODEL_KWARGS[k] for k in ("image_size", "patch_size", "width", "layers", "heads",
                                                "context_length")}
    return save_clip(build_tiny_siglip(tiny_world.texts, **kwargs), tiny_world.root / "siglip")


@pytest.fixture
def tiny_siglip_bundle(tiny_siglip: Path):
    """The tiny SigLIP loaded afresh (tests may change it)."""
    from goalclip.models.clip import load_clip

    bundle = load_clip(str(tiny_siglip))
    bundle.model.eval()
    return bundle


def build_tiny_blip2(texts: tuple[str, ...] | list[str], folder: Path, *, context: int = 16) -> Path:
    """Save a tiny random BLIP-2 retrieval model (``Blip2ForImageTextRetrieval``: 32-pixel images, 4 query tokens,
    a ``context``-position Q-Former) with a WordPiece tokenizer of ``texts``' words and BLIP's image processor."""
    from tokenizers.pre_tokenizers import BertPreTokenizer
    from transformers import Blip2Config, Blip2ForImageTextRetrieval, BertTokenizerFast, BlipImageProcessor

    words = sorted({w for text in texts for w, _ in BertPreTokenizer().pre_tokenize_str(text.lower())})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    config = Blip2Config(
        vision_config=dict(small, image_size=32, patch_size=8),
        qformer_config=dict(small, vocab_size=len(vocab), max_position_embeddings=context, encoder_hidden_size=32,
                            use_qformer_text_input=True),
        num_query_tokens=4, image_text_hidden_size=16)
    torch.manual_seed(0)
    Blip2ForImageTextRetrieval(config).save_pretrained(folder)
    BertTokenizerFast(vocab=vocab, model_max_length=context).save_pretrained(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_blip2(tiny_world: TinyWorld) -> Path:
    """A saved tiny BLIP-2 retrieval model with a 16-token context (``build_tiny_blip2``)."""
    return build_tiny_blip2(tiny_world.texts, tiny_world.root / "blip2")


# SigLIP v1 as the hub ships it (google/siglip-base-patch16-224): a SentencePiece model and the slow
# SiglipTokenizer's settings, no tokenizer.json.
HUB_SIGLIP_TOKENIZER_CONFIG = {
    "tokenizer_class": "SiglipTokenizer", "processor_class": "SiglipProcessor", "do_lower_case": True,
    "eos_token": "</s>", "pad_token": "</s>", "unk_token": "<unk>", "additional_special_tokens": [],
    "model_input_names": ["input_ids"], "model_max_length": 64, "sp_model_kwargs": {},
    "clean_up_tokenization_spaces": True,
}
HUB_SIGLIP_SPECIAL_TOKENS = {
    name: {"content": token, "lstrip": True, "normalized": False, "rstrip": True, "single_word": False}
    for name, token in (("eos_token", "</s>"), ("pad_token", "</s>"), ("unk_token", "<unk>"))
}


def siglip_corpus(texts: tuple[str, ...]) -> list[str]:
    """A few hundred generated sentences (and ``texts``) to train a small SentencePiece vocabulary on."""
    colours = ["red", "blue", "green", "yellow", "white", "black"]
    things = ["square", "circle", "triangle", "dog", "cat", "car"]
    places = ["on the left", "in the corner", "near the top", "beside a tree", "under the table"]
    generated = [template.format(c, t, p) for c in colours for t in things for p in places
                 for template in ("A {0} {1} is {2}.", "The {1}, painted {0}, sits {2}!")]
    return [*texts, *generated]


def save_tiny_siglip_weights(folder: Path, texts: tuple[str, ...], *, vocab_size: int, pad_id: int,
                             eos_id: int) -> None:
    """A tiny SigLIP's weights, config and image processor (64 text positions, as SigLIP's) for a tokenizer of
    ``vocab_size`` tokens saved beside them by the caller."""
    from transformers import SiglipModel

    from goalclip.demo.tiny import build_tiny_siglip

    kwargs = {k: TINY_MODEL_KWARGS[k] for k in ("image_size", "patch_size", "width", "layers", "heads")}
    tiny = build_tiny_siglip(texts, context_length=64, **kwargs)
    config = tiny.model.config
    config.text_config.vocab_size, config.text_config.pad_token_id = vocab_size, pad_id
    config.text_config.eos_token_id = eos_id
    torch.manual_seed(0)
    model = SiglipModel(config)
    model.load_state_dict({k: v for k, v in tiny.model.state_dict().items() if "token_embedding" not in k},
                          strict=False)
    model.save_pretrained(folder)
    tiny.image_processor.save_pretrained(folder)


@pytest.fixture(scope="session")
def hub_siglip(tiny_world: TinyWorld) -> Path:
    """A tiny SigLIP v1 folder laid out as google/siglip-base-patch16-224 is: config.json, model.safetensors,
    preprocessor_config.json, and only a SentencePiece tokenizer (spiece.model trained here, T5-style ids
    pad 0, eos 1, unk 2; tokenizer_config.json naming SiglipTokenizer; special_tokens_map.json); SigLIP's
    64 text positions."""
    import io

    import sentencepiece

    folder = tiny_world.root / "hub_siglip"
    folder.mkdir()
    spiece = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(siglip_corpus(tiny_world.texts)), model_writer=spiece, model_type="unigram",
        vocab_size=300, hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1, pad_piece="<pad>",
        eos_piece="</s>", unk_piece="<unk>", character_coverage=1.0, num_threads=1, minloglevel=2)
    (folder / "spiece.model").write_bytes(spiece.getvalue())
    vocab = sentencepiece.SentencePieceProcessor(model_proto=spiece.getvalue()).get_piece_size()
    save_tiny_siglip_weights(folder, tiny_world.texts, vocab_size=vocab, pad_id=1, eos_id=1)
    (folder / "tokenizer_config.json").write_text(json.dumps(HUB_SIGLIP_TOKENIZER_CONFIG, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(HUB_SIGLIP_SPECIAL_TOKENS, indent=2))
    return folder
