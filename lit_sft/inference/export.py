"""Hugging Face export: the hand-off to RL (verl's ``actor_rollout_ref.model.path``), vLLM and ``from_pretrained``.

``export_hf`` writes ``save_pretrained`` weights, the tokenizer (with its chat template), a generation
config whose stop tokens are the template's end-of-turn tokens, and a ``README.md`` model card
(`lit_sft.inference.model_card`). LoRA is exported merged into the base weights (a plain model; a QLoRA
run's 4-bit base is de-quantized first), as a peft adapter (``adapter_config.json`` with the trained
``lora_alpha``), or
both. ``export_checkpoint`` converts a Lightning checkpoint (the ``lit-sft export`` command,
`lit_sft.commands.export`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import tempfile
from typing import Any, Literal, TypeVar

import torch

from lit_sft.errors import ConfigError
from lit_sft.gguf import is_gguf
from lit_sft.hub import DTypeName, torch_dtype
from lit_sft.inference.generation import stop_token_ids
from lit_sft.inference.model_card import ModelCardInfo, card_from_checkpoint, write_model_card
from lit_sft.model.quantization import dequantized_merge, is_quantized

log = logging.getLogger("lit_sft")

LoraExport = Literal["merged", "adapter", "both"]
ExportDType = DTypeName
Model = TypeVar("Model", bound=torch.nn.Module)


def _generation_config(model: Any, tokenizer: Any) -> Any:
    config = copy.deepcopy(model.generation_config)
    stops = stop_token_ids(tokenizer, config)
    config.eos_token_id = stops[0] if len(stops) == 1 else stops
    config.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        config.bos_token_id = tokenizer.bos_token_id
    return config


def _finish(directory: str, model: Any, tokenizer: Any) -> None:
    """Tokenizer (or a vision model's processor), generation config, and ``use_cache`` back on for inference."""
    from transformers.processing_utils import ProcessorMixin

    from lit_sft.hub import save_processor

    if isinstance(tokenizer, ProcessorMixin):
        save_processor(tokenizer, directory)
        tokenizer = tokenizer.tokenizer
    else:
        tokenizer.save_pretrained(directory)
    _generation_config(model, tokenizer).save_pretrained(directory)
    config_path = os.path.join(directory, "config.json")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as handle:
            config = json.load(handle)
        config["use_cache"] = True  # training turns the KV cache off; inference wants it
        if isinstance(config.get("text_config"), dict):  # vision-language models keep it here
            config["text_config"]["use_cache"] = True
        with open(config_path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)


def _cast(model: Model, dtype: ExportDType) -> Model:
    target = torch_dtype(dtype)
    return model if target is None else model.to(target)


def _save_converted_adapter(adapter: Any, initial: dict[str, torch.Tensor], directory: str) -> None:
    """Save an adapter whose initialisation moved part of the base into it (PiSSA, OLoRA) as the plain LoRA
    ``trained - initial`` for the unmodified base (peft's ``path_initial_model_for_weight_conversion``)."""
    from safetensors.torch import save_file

    if any(config.use_dora for config in adapter.peft_config.values()):
        raise ConfigError(
            "a DoRA adapter initialised with pissa/olora cannot be exported as an adapter for the original "
            "base; export it merged (lora: merged)"
        )
    with tempfile.TemporaryDirectory() as scratch:
        initial_dir = os.path.join(scratch, "initial")
        os.makedirs(initial_dir)
        save_file(
            {name: tensor.cpu().contiguous() for name, tensor in initial.items()},
            os.path.join(initial_dir, "adapter_model.safetensors"),
        )
        adapter.save_pretrained(
            directory, safe_serialization=True, path_initial_model_for_weight_conversion=initial_dir
        )


def export_hf(
    model: Any,
    tokenizer: Any,
    out: str,
    lora: LoraExport = "merged",
    dtype: ExportDType = "auto",
    base_model_name_or_path: str | None = None,
    card: ModelCardInfo | None = None,
) -> list[str]:
    """Write ``model`` (a transformers model or a peft model around one) for ``from_pretrained``.

    The live model is never modified: merging happens on a copy, so training can go on after an export.

    Args:
        model: The trained model.
        tokenizer: Its tokenizer, or its processor (vision-language models).
        out: The output directory (replaced if it exists).
        lora: For a peft model: ``merged`` (a full model with the adapters folded in), ``adapter`` (a peft
            adapter directory), or ``both`` (``out`` merged, ``out/adapter`` the adapter).
        dtype: Weight dtype of the export (``auto`` keeps the training dtype).
        base_model_name_or_path: Recorded in the adapter's config (where peft loads the base from). When the
            base model has no such path (random initialisation, or a ``.gguf`` file), the base weights are written to
            ``out/base`` and recorded instead.
        card: What the ``README.md`` model card states (data, hyper-parameters, metrics); without it the
            card names the base model only.

    Returns:
        The directories written.
    """
    if lora not in ("merged", "adapter", "both"):
        raise ConfigError(f"lora export must be merged, adapter or both; got {lora!r}")
    temporary = f"{out.rstrip(os.sep)}.tmp-{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    written = [out]
    is_peft = hasattr(model, "peft_config")
    if not is_peft:
        exported = _cast(copy.deepcopy(model).cpu(), dtype)
        exported.save_pretrained(temporary, safe_serialization=True)
        _finish(temporary, exported, tokenizer)
        write_model_card(temporary, card, base_model=base_model_name_or_path)
    else:
        if lora in ("merged", "both"):
            if is_quantized(model):  # QLoRA: into the de-quantized base, never into 4-bit layers
                merged = dequantized_merge(model, dtype)
            else:
                merged = _cast(copy.deepcopy(model).cpu().merge_and_unload(), dtype)
            merged.save_pretrained(temporary, safe_serialization=True)
            _finish(temporary, merged, tokenizer)
            write_model_card(temporary, card, base_model=base_model_name_or_path)
        if lora in ("adapter", "both"):
            final_dir = out if lora == "adapter" else os.path.join(out, "adapter")
            adapter_dir = temporary if lora == "adapter" else os.path.join(temporary, "adapter")
            # A 4-bit base cannot be cast; the adapter of a QLoRA run applies to its (unquantized) base path.
            adapter = (
                copy.deepcopy(model) if is_quantized(model) else _cast(copy.deepcopy(model).cpu(), dtype)
            )
            base_path = base_model_name_or_path
            if base_path is None or is_gguf(base_path):  # no HF base to point at: ship the base weights
                base = copy.deepcopy(adapter).unload()
                base.save_pretrained(os.path.join(adapter_dir, "base"), safe_serialization=True)
                _finish(os.path.join(adapter_dir, "base"), base, tokenizer)
                base_path = os.path.join(os.path.abspath(final_dir), "base")
            for config in adapter.peft_config.values():
                config.base_model_name_or_path = base_path
            initial = getattr(adapter, "lit_sft_initial_adapter", None)
            if initial is not None and base_model_name_or_path is not None:
                # PiSSA / OLoRA trained on a residual base: as a LoRA on the original base (rank 2r).
                _save_converted_adapter(adapter, initial, adapter_dir)
            else:
                adapter.save_pretrained(adapter_dir, safe_serialization=True)
            _finish(adapter_dir, adapter.get_base_model(), tokenizer)
            # Replaces peft's template card: the same facts, with library_name peft for the Hub.
            write_model_card(adapter_dir, card, library_name="peft", base_model=base_model_name_or_path)
            if lora == "both":
                written.append(final_dir)
    if os.path.isdir(out):
        shutil.rmtree(out)
    os.replace(temporary, out)  # readers never see a half-written export
    log.info(f"exported Hugging Face model to {out}" + (f" ({lora})" if is_peft else ""))
    return written


def export_checkpoint(
    ckpt: str, out: str, lora: LoraExport = "merged", dtype: ExportDType = "auto"
) -> list[str]:
    """Convert a Lightning checkpoint of ``lit-sft fit`` into a Hugging Face model directory.

    Args:
        ckpt: The ``.ckpt`` file (``last.ckpt``, or any step's).
        out: The output directory.
        lora: For LoRA runs: ``merged``, ``adapter`` or ``both``.
        dtype: ``auto`` (the training dtype), ``float32``, ``bfloat16`` or ``float16``.
    """
    from lit_sft.model.build import load_module

    module = load_module(ckpt)
    # The card's facts (hyper-parameters, data counts, step, last metrics) are plain values in the checkpoint.
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    card = card_from_checkpoint(checkpoint, base_model=module.model_name_or_path)
    del checkpoint
    written = export_hf(
        module.model,
        getattr(module, "processor", None) or module.tokenizer,
        out,
        lora=lora,
        dtype=dtype,
        base_model_name_or_path=module.model_name_or_path,
        card=card,
    )
    print(f"exported {ckpt} -> {', '.join(written)}")
    return written


def export_model(model: str, out: str, dtype: ExportDType = "auto") -> list[str]:
    """Write a model given as a ``.gguf`` file (dequantized) or a Hugging Face directory as an ordinary
    Hugging Face directory (safetensors, tokenizer, chat template, generation config).

    Args:
        model: The ``.gguf`` file or model directory.
        out: The output directory.
        dtype: ``auto`` (float32 for GGUF), ``float32``, ``bfloat16`` or ``float16``.
    """
    from lit_sft.commands.evaluate import load_for_inference

    network, tokenizer = load_for_inference(model, device="cpu", dtype=dtype)
    written = export_hf(network, tokenizer, out, dtype=dtype)
    print(f"exported {model} -> {', '.join(written)}")
    return written
