"""A tiny random Qwen2-VL: a byte-level tokenizer with Qwen's vision tokens, a small image processor, and a
model config small enough to train on a CPU in seconds. Images are generated (solid colours, so the
assistant's answer, the colour's name, is learnable from the pixels alone)."""

from __future__ import annotations

import contextlib
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from lit_sft.hub import _bytes_to_unicode

VISION_SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>",
]  # fmt: skip

#: Qwen2-VL's chat template, trimmed: string or text/image parts, ChatML turns.
VL_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}{{ '<|vision_start|><|image_pad|><|vision_end|>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

#: Images are resized to between 2x2 and 4x4 merged patches (4 to 16 image tokens).
IMAGE_PROCESSOR = dict(
    min_pixels=28 * 28 * 4, max_pixels=56 * 56 * 4, patch_size=14, merge_size=2, temporal_patch_size=2
)

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def vision_model_config() -> dict[str, Any]:
    """``model_config`` of a ~150k-parameter Qwen2-VL (the token ids come from the processor)."""
    return {
        "model_type": "qwen2_vl",
        "text_config": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 10000.0},
        },
        "vision_config": {
            "depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 4, "patch_size": 14,
            "spatial_merge_size": 2, "temporal_patch_size": 2, "mlp_ratio": 2,
        },
    }  # fmt: skip


def make_vision_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(VISION_SPECIALS)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = VL_TEMPLATE
    return tokenizer


@contextlib.contextmanager
def _without_component_class_checks() -> Iterator[None]:
    """Qwen2-VL's processor checks its video processor's class, which needs torchvision (absent on the
    CPU test machine); the image path does not use it."""
    from transformers.processing_utils import ProcessorMixin

    check = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, argument: None  # type: ignore[method-assign]
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = check  # type: ignore[method-assign]


def pil_image_processor_class() -> Any:
    """Qwen2-VL's torchvision-free image processor: ``Qwen2VLImageProcessorPil`` from transformers 5.x's split of
    image processors by backend; before it, the PIL one was the plain ``Qwen2VLImageProcessor``."""
    try:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    except ModuleNotFoundError:
        from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

        return Qwen2VLImageProcessor
    return Qwen2VLImageProcessorPil


def make_processor(
    tokenizer: Any = None, image_processor: Any = None, chat_template: str = VL_TEMPLATE
) -> Any:
    from transformers import Qwen2VLProcessor

    Qwen2VLImageProcessorPil = pil_image_processor_class()

    with _without_component_class_checks():
        return Qwen2VLProcessor(
            image_processor=image_processor or Qwen2VLImageProcessorPil(**IMAGE_PROCESSOR),
            tokenizer=tokenizer or make_vision_tokenizer(),
            video_processor=None,
            chat_template=chat_template,
        )


def load_saved_processor(directory: str, trust_remote_code: bool = False, **kwargs: Any) -> Any:
    """What ``AutoProcessor.from_pretrained`` returns for a saved Qwen2-VL processor where torchvision is
    installed; rebuilt from the saved components (tokenizer, image processor, chat template)."""
    from transformers import AutoTokenizer

    Qwen2VLImageProcessorPil = pil_image_processor_class()

    if not os.path.isfile(os.path.join(directory, "preprocessor_config.json")):
        raise OSError(f"no preprocessor_config.json in {directory}")
    with open(os.path.join(directory, "chat_template.jinja"), encoding="utf-8") as handle:
        template = handle.read()
    return make_processor(
        AutoTokenizer.from_pretrained(directory),
        Qwen2VLImageProcessorPil.from_pretrained(directory, **kwargs),  # e.g. max_pixels
        template,
    )


def image_png(colour: str, size: tuple[int, int] = (56, 56), seed: int = 0) -> bytes:
    """A PNG of a solid colour with a little noise (width, height)."""
    rng = np.random.default_rng(seed)
    pixels = np.array(COLOURS[colour], dtype=np.int16) + rng.integers(-10, 10, (size[1], size[0], 3))
    buffer = io.BytesIO()
    Image.fromarray(pixels.clip(0, 255).astype("uint8")).save(buffer, format="PNG")
    return buffer.getvalue()


def colour_rows(
    count: int, image_dir: str, sizes: tuple[tuple[int, int], ...] = ((56, 56), (84, 56))
) -> list[dict[str, Any]]:
    """Rows asking for an image's colour; images written as PNG files under ``image_dir`` (relative paths)."""
    os.makedirs(image_dir, exist_ok=True)
    rows = []
    names = sorted(COLOURS)
    for i in range(count):
        colour = names[i % len(names)]
        path = f"{colour}-{i}.png"
        with open(os.path.join(image_dir, path), "wb") as handle:
            handle.write(image_png(colour, sizes[i % len(sizes)], seed=i))
        rows.append(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image", "image": path}, {"type": "text", "text": "Colour?"}],
                    },
                    {"role": "assistant", "content": colour},
                ]
            }
        )
    return rows
