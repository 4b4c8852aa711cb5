"""Loading what comes from the Hub (or a local directory): tokenizers, the built-in byte-level ChatML
tokenizer, a stable tokenizer fingerprint, and the processors of vision-language models.

``load_tokenizer("Qwen/Qwen2.5-0.5B-Instruct")`` is ``AutoTokenizer.from_pretrained`` plus the checks
SFT needs (a fast tokenizer, a chat template, a pad token). ``load_tokenizer("builtin:byte-chatml")``
builds a 259-token byte-level tokenizer with a ChatML template in memory, so that the quickstart and the
tests need no download.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from lit_sft.errors import ConfigError
from lit_sft.gguf import check_local_path, is_gguf, load_gguf_tokenizer

BUILTIN_PREFIX = "builtin:"

#: The dtype names options accept (``auto``: whatever the checkpoint or the training run holds).
DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
#: The one map from dtype names to torch dtypes.
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def torch_dtype(name: str, option: str = "dtype") -> torch.dtype | None:
    """The torch dtype named ``name``; None for ``auto``.

    Raises:
        ConfigError: For any other name, naming ``option``.
    """
    if name == "auto":
        return None
    if name not in DTYPES:
        raise ConfigError(f"{option} must be one of auto, {', '.join(DTYPES)}; got {name!r}")
    return DTYPES[name]


#: ChatML as Qwen2.5 writes it, without an implicit system prompt (short sequences for the quickstart).
BYTE_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map, so that byte ``b`` gets token id ``b``."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            chars[byte] = chr(byte)
        else:
            chars[byte] = chr(256 + extra)
            extra += 1
    return chars


def build_byte_chatml_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer (ids 0-255 are bytes) with ChatML special tokens and template.

    Every UTF-8 text round-trips; ``<|endoftext|>`` (256) pads, ``<|im_start|>`` (257) opens a turn and
    ``<|im_end|>`` (258) closes one and is the end-of-sequence token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
        model_max_length=32768,
    )
    tokenizer.chat_template = BYTE_CHATML_TEMPLATE
    return tokenizer


BUILTIN_TOKENIZERS = {"byte-chatml": build_byte_chatml_tokenizer}


def read_chat_template(template: str) -> str:
    """A chat template given inline (Jinja text) or as a path to a ``.jinja`` file."""
    if "{" not in template and os.path.isfile(template):
        with open(template, encoding="utf-8") as handle:
            return handle.read()
    if "{" not in template:
        raise ConfigError(f"chat_template {template!r} is neither a Jinja template nor an existing file")
    return template


def load_tokenizer(
    name_or_path: str, chat_template: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """Load a tokenizer for SFT.

    Args:
        name_or_path: A Hub id, a local directory, a ``.gguf`` file, or ``builtin:byte-chatml``.
        chat_template: A Jinja chat template (text or file path) that replaces the tokenizer's own.
        trust_remote_code: Passed to ``AutoTokenizer.from_pretrained``.

    Raises:
        ConfigError: When the tokenizer cannot be loaded, is not a fast tokenizer, or has no chat
            template.
    """
    tokenizer: PreTrainedTokenizerBase
    if name_or_path.startswith(BUILTIN_PREFIX):
        name = name_or_path[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_TOKENIZERS:
            raise ConfigError(
                f"unknown built-in tokenizer {name_or_path!r}; known: {sorted(BUILTIN_TOKENIZERS)}"
            )
        tokenizer = BUILTIN_TOKENIZERS[name]()
    elif is_gguf(name_or_path):
        tokenizer = load_gguf_tokenizer(name_or_path, trust_remote_code)
    else:
        check_local_path(name_or_path, "tokenizer")
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        except (OSError, ValueError) as error:
            raise ConfigError(f"cannot load a tokenizer from {name_or_path!r}: {error}") from None
    if chat_template is not None:
        tokenizer.chat_template = read_chat_template(chat_template)
    if not tokenizer.is_fast:
        raise ConfigError(f"the tokenizer of {name_or_path!r} is not a fast tokenizer; lit_sft needs offsets")
    if not tokenizer.chat_template:
        raise ConfigError(
            f"the tokenizer of {name_or_path!r} has no chat template; give one with model.chat_template "
            "(Jinja text or a .jinja file; the CLI passes it to the data module)"
        )
    if tokenizer.pad_token is None:
        # Padding is masked by position, never by id, so pad may equal EOS.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A hash of everything that decides how text becomes ids: vocabulary, rules, template, specials.

    ``datasets`` hashes tokenizers by pickling them, which changes after a tokenizer has been used
    (truncation/padding state), so cache keys are built from this instead.
    """
    digest = hashlib.sha256()
    digest.update(type(tokenizer).__name__.encode())
    digest.update(tokenizer.backend_tokenizer.to_str().encode())
    digest.update(str(tokenizer.chat_template).encode())
    digest.update(repr(sorted(tokenizer.special_tokens_map.items())).encode())
    return digest.hexdigest()[:16]


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


class TokenizerOwner:
    """A lazy ``tokenizer`` for `SFTModule` and `SFTDataModule`: loaded on first use from
    ``tokenizer_name_or_path`` with the owner's chat template and ``trust_remote_code``."""

    tokenizer_name_or_path: str | None
    chat_template: str | None
    trust_remote_code: bool
    _tokenizer: Any = None
    #: The error when no path is known (which option to set).
    _no_tokenizer_path = "tokenizer_name_or_path is not set"

    @property
    def tokenizer(self) -> Any:
        """The tokenizer, loaded on first use."""
        if self._tokenizer is None:
            if not self.tokenizer_name_or_path:
                raise ConfigError(self._no_tokenizer_path)
            self._tokenizer = load_tokenizer(
                self.tokenizer_name_or_path, self.chat_template, self.trust_remote_code
            )
        return self._tokenizer


class ProcessorOwner(TokenizerOwner):
    """The ``processor`` and ``tokenizer`` of `VisionSFTModule` and `VisionSFTDataModule`: the processor is
    loaded on first use from ``processor_name_or_path`` (else the tokenizer's path) with the owner's chat
    template, ``trust_remote_code`` and ``processor_kwargs``; the tokenizer is the processor's."""

    processor_name_or_path: str | None
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
