"""Processors of vision-language models: loading, and saving beside an export."""

from __future__ import annotations

import json
import os
from typing import Any

from lit_sft.errors import ConfigError


def load_processor(
    name_or_path: str,
    chat_template: str | None = None,
    trust_remote_code: bool = False,
    processor_kwargs: dict[str, Any] | None = None,
) -> Any:
    """``AutoProcessor.from_pretrained`` with lit_sft's checks (a chat template, a pad token).

    Args:
        name_or_path: A Hub id or a local directory.
        chat_template: An override chat template (text or a file path).
        trust_remote_code: Allow the processor's own code.
        processor_kwargs: Passed to ``from_pretrained``: image resolution bounds such as Qwen2.5-VL's
            ``{"min_pixels": 3136, "max_pixels": 1003520}``, which bound the image tokens per image.

    Raises:
        ConfigError: When the processor cannot be loaded (e.g. Qwen2-VL's needs torchvision).
    """
    from transformers import AutoProcessor

    from lit_sft.tokenizer import read_chat_template

    try:
        processor = AutoProcessor.from_pretrained(
            name_or_path, trust_remote_code=trust_remote_code, **(processor_kwargs or {})
        )
    except (OSError, ValueError, ImportError) as error:
        raise ConfigError(f"cannot load a processor from {name_or_path!r}: {error}") from None
    if chat_template is not None:
        processor.chat_template = read_chat_template(chat_template)
    if not getattr(processor, "chat_template", None):
        raise ConfigError(
            f"the processor of {name_or_path!r} has no chat template; give one with model.chat_template "
            "(Jinja text or a .jinja file; the CLI passes it to the data module)"
        )
    if processor.tokenizer.pad_token is None:
        processor.tokenizer.pad_token = processor.tokenizer.eos_token
    return processor


def save_processor(processor: Any, directory: str) -> None:
    """``processor.save_pretrained``; when a component cannot be saved (a video processor that needs a
    missing library), its tokenizer, image processor, chat template and class name are saved instead, which
    ``AutoProcessor.from_pretrained`` rebuilds the processor from."""
    try:
        processor.save_pretrained(directory)
        return
    except (AttributeError, TypeError, ImportError):
        pass
    processor.tokenizer.save_pretrained(directory)
    processor.image_processor.save_pretrained(directory)
    with open(os.path.join(directory, "chat_template.jinja"), "w", encoding="utf-8") as handle:
        handle.write(processor.chat_template)
    with open(os.path.join(directory, "processor_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"processor_class": type(processor).__name__}, handle, indent=2)


class ProcessorOwner:
    """The ``processor`` and ``tokenizer`` of `VisionSFTModule` and `VisionSFTDataModule`: the processor is
    loaded on first use from ``processor_name_or_path`` (else the tokenizer's path) with the owner's chat
    template, ``trust_remote_code`` and ``processor_kwargs``."""

    processor_name_or_path: str | None
    tokenizer_name_or_path: str | None
    chat_template: str | None
    trust_remote_code: bool
    processor_kwargs: dict[str, Any]
    _processor: Any = None
    #: The error when no path is known (which option to set).
    _no_processor_path = "processor_name_or_path is not set"

    @property
    def processor(self) -> Any:
        """The processor, loaded on first use."""
        if self._processor is None:
            name = self.processor_name_or_path or self.tokenizer_name_or_path
            if not name:
                raise ConfigError(self._no_processor_path)
            self._processor = load_processor(
                name, self.chat_template, self.trust_remote_code, self.processor_kwargs
            )
        return self._processor

    @property
    def tokenizer(self) -> Any:
        """The processor's tokenizer."""
        return self.processor.tokenizer
