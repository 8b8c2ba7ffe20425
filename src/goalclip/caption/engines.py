"""Caption backends: transformers (default) and vLLM (optional), behind one small interface.

An engine turns a batch of PIL images and one prompt into generated texts, each flagged when it
stopped at the token limit rather than at the end-of-sequence token. Both backends format the
prompt with the checkpoint's own chat template, so any image-text-to-text checkpoint works
unchanged (LLaVA-NeXT, Qwen2-VL, ...).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from PIL import Image

from goalclip.caption.prompt import DEFAULT_MODEL

logger = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class CaptionModelError(ValueError):
    """The checkpoint cannot caption images (not image-text-to-text, no chat template, backend missing)."""


@dataclass(frozen=True)
class Generation:
    """One generated text; ``hit_limit`` when it stopped at ``max_new_tokens``, not at end-of-sequence."""

    text: str
    hit_limit: bool


class CaptionEngine(Protocol):
    """What the captioning loop needs from a backend. One that also has ``preparer(prompt)`` and
    ``generate_prepared(inputs)`` (:class:`TransformersEngine`) gets its inputs made in the loader workers."""

    def generate(self, images: Sequence[Image.Image], prompt: str) -> list[Generation]: ...


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``auto`` is bf16 on CUDA (LLaVA-NeXT's own dtype, half the memory) and fp32 elsewhere."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return PRECISIONS[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; choose auto, {', '.join(PRECISIONS)}") from None


def chat_prompt(processor: Any, source: str, prompt: str) -> str:
    """The prompt as one user turn (an image, then the text), through the checkpoint's chat template."""
    template = getattr(processor, "chat_template", None) or getattr(
        getattr(processor, "tokenizer", None), "chat_template", None)
    if not template:
        raise CaptionModelError(
            f"{source}: the processor has no chat template, so the prompt cannot be formatted for this model "
            "(add a chat_template.jinja to the model folder)")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


def prepare_inputs(processor: Any, source: str, prompt: str, images: Sequence[Image.Image]) -> Any:
    """The processor's inputs for a batch: each image with the prompt as one chat turn, left-padded."""
    text = chat_prompt(processor, source, prompt)
    return processor(images=list(images), text=[text] * len(images), return_tensors="pt", padding=True)


def load_processor(source: str) -> Any:
    """The checkpoint's multimodal processor; a text-only checkpoint is refused with a clear message."""
    from transformers import AutoConfig, AutoProcessor
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING

    config = AutoConfig.from_pretrained(source)
    if type(config) not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING:
        raise CaptionModelError(
            f"{source}: a {config.model_type!r} model is not an image-text-to-text model; goalclip caption needs "
            f"a checkpoint AutoModelForImageTextToText loads (e.g. {DEFAULT_MODEL})")
    processor = AutoProcessor.from_pretrained(source)
    if getattr(processor, "image_processor", None) is None:
        raise CaptionModelError(f"{source}: its processor has no image processor, so it cannot read images")
    return processor


class TransformersEngine:
    """Batched greedy generation with ``AutoModelForImageTextToText``; prompts are left-padded."""

    def __init__(self, source: str, *, device: torch.device, dtype: torch.dtype, max_new_tokens: int):
        from transformers import AutoModelForImageTextToText

        self.processor = load_processor(source)
        self.source = source
        chat_prompt(self.processor, source, "")  # fail before loading the weights
        self.processor.tokenizer.padding_side = "left"
        self.model = AutoModelForImageTextToText.from_pretrained(source, dtype=dtype).to(device).eval()
        self.device, self.dtype, self.max_new_tokens = device, dtype, max_new_tokens
        eos = self.model.generation_config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        if self.processor.tokenizer.eos_token_id is not None:
            self.eos_ids.add(self.processor.tokenizer.eos_token_id)
        self.pad_id = self.processor.tokenizer.pad_token_id
        if self.pad_id is None:
            self.pad_id = next(iter(self.eos_ids), 0)

    def preparer(self, prompt: str) -> Callable[[Sequence[Image.Image]], Any]:
        """``images -> model inputs``, the CPU part of :meth:`generate`: captioning calls it in its loader
        workers (it holds the processor, not the model) and passes the result to :meth:`generate_prepared`."""
        return functools.partial(prepare_inputs, self.processor, self.source, prompt)

    def generate(self, images: Sequence[Image.Image], prompt: str) -> list[Generation]:
        return self.generate_prepared(self.preparer(prompt)(images))

    @torch.no_grad()
    def generate_prepared(self, inputs: Any) -> list[Generation]:
        """Greedy generation from :meth:`preparer`'s inputs for a batch."""
        inputs = {k: (v.to(self.device, self.dtype) if v.is_floating_point() else v.to(self.device))
                  for k, v in inputs.items()}
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False, num_beams=1,
                                  pad_token_id=self.pad_id)
        new = out[:, inputs["input_ids"].shape[1]:]
        texts = self.processor.batch_decode(new, skip_special_tokens=True)
        return [Generation(t, not any(int(tok) in self.eos_ids for tok in row)) for t, row in zip(texts, new)]


class VllmEngine:
    """vLLM's offline engine for 100k-image runs: continuous batching, greedy, same chat template."""

    def __init__(self, source: str, *, device: torch.device, dtype: torch.dtype, max_new_tokens: int):
        try:
            import vllm
        except ImportError:
            raise CaptionModelError("--backend vllm needs the vllm package, which is not installed "
                                    "(pip install vllm), or use --backend transformers") from None
        self.processor = load_processor(source)
        self.source = source
        chat_prompt(self.processor, source, "")
        self.llm = vllm.LLM(model=source, dtype=str(dtype).removeprefix("torch."), limit_mm_per_prompt={"image": 1})
        self.sampling = vllm.SamplingParams(temperature=0.0, max_tokens=max_new_tokens)

    def generate(self, images: Sequence[Image.Image], prompt: str) -> list[Generation]:
        text = chat_prompt(self.processor, self.source, prompt)
        requests = [{"prompt": text, "multi_modal_data": {"image": image}} for image in images]
        outputs = self.llm.generate(requests, self.sampling, use_tqdm=False)
        return [Generation(o.outputs[0].text, o.outputs[0].finish_reason == "length") for o in outputs]


ENGINES: dict[str, Callable[..., CaptionEngine]] = {"transformers": TransformersEngine, "vllm": VllmEngine}


def load_engine(backend: str, source: str, **kwargs: Any) -> CaptionEngine:
    try:
        factory = ENGINES[backend]
    except KeyError:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(ENGINES)}") from None
    return factory(source, **kwargs)
