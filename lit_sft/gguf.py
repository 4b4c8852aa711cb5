"""GGUF checkpoints (llama.cpp's one-file format) as models, and local paths that do not exist.

A ``.gguf`` file holds the weights (often quantized: Q4_1, Q8_0...), the tokenizer and the chat template.
transformers reads it (with the ``gguf`` package: ``pip install lit_sft[gguf]``) and dequantizes the
weights to the dtype asked for; lit_sft then trains it like any model, LoRA or full, and exports an
ordinary Hugging Face directory. transformers leaves a GGUF-loaded model marked as quantized, which makes
``save_pretrained`` refuse it although its weights are plain tensors: `load_gguf_model` clears the mark.

Paths that look local (``./x``, ``../x``, ``/x``, ``~/x``, ``x.gguf``) and do not exist get "no such file
or directory" instead of a Hub repository-id error.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeGuard

from lit_sft.errors import ConfigError


def is_gguf(name_or_path: str | None) -> TypeGuard[str]:
    """Whether ``name_or_path`` names a GGUF file."""
    return bool(name_or_path) and str(name_or_path).lower().endswith(".gguf")


def check_local_path(name_or_path: str, what: str = "model") -> None:
    """Raise "no such file or directory" for a path that looks local and does not exist.

    Hub ids (``org/name``) pass untouched; they are resolved by transformers.

    Raises:
        ConfigError: Naming the path.
    """
    path = os.path.expanduser(name_or_path)
    looks_local = (
        name_or_path.startswith(("./", "../", "/", "~", ".\\"))
        or name_or_path in (".", "..")
        or is_gguf(name_or_path)
        or name_or_path.count("/") > 1
    )
    if looks_local and not os.path.exists(path):
        raise ConfigError(f"cannot load a {what} from {name_or_path!r}: no such file or directory")


def _split(path: str) -> tuple[str, str]:
    check_local_path(path)
    if not os.path.isfile(path):
        raise ConfigError(f"{path!r} is not a file (a GGUF checkpoint is a single .gguf file)")
    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError:
        raise ConfigError("reading .gguf files needs the gguf package: pip install 'lit_sft[gguf]'") from None
    path = os.path.abspath(os.path.expanduser(path))
    return os.path.dirname(path), os.path.basename(path)


def load_gguf_tokenizer(path: str, trust_remote_code: bool = False) -> Any:
    """The tokenizer (and chat template) stored in a GGUF file, as a fast tokenizer."""
    from transformers import AutoTokenizer

    directory, filename = _split(path)
    try:
        return AutoTokenizer.from_pretrained(
            directory, gguf_file=filename, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot load a tokenizer from {path!r}: {error}") from None


def load_gguf_model(path: str, configure: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
    """A causal LM from a GGUF file, dequantized (to ``kwargs["dtype"]``, float32 by default).

    Args:
        path: The ``.gguf`` file.
        configure: Called with the model config before the weights load (dropout settings, say).
        **kwargs: Passed to ``AutoModelForCausalLM.from_pretrained`` (``dtype``, ``attn_implementation``...).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    directory, filename = _split(path)
    try:
        config = AutoConfig.from_pretrained(directory, gguf_file=filename)
        if configure is not None:
            configure(config)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, config=config, **kwargs)
    except (OSError, ValueError, KeyError) as error:
        raise ConfigError(f"cannot load a model from {path!r}: {error}") from None
    return mark_dequantized(model)


def mark_dequantized(model: Any) -> Any:
    """Clear the quantization mark transformers leaves on a GGUF-loaded model (its weights are plain
    tensors), so that ``save_pretrained`` writes it and peft treats it as an ordinary model."""
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model, "quantization_method"):
        model.quantization_method = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model
