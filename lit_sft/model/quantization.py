"""QLoRA: the base model loaded in 4 bits through transformers' ``BitsAndBytesConfig``, LoRA adapters on top.

bitsandbytes is an extra (``pip install -e '.[qlora]'``). It runs 4-bit layers on CUDA GPUs and, from 0.46 on,
on CPUs through its CPU backend; `quantization_problems` (part of the start-up check) says in one line when
neither is there. Exporting merges the adapters into the *de-quantized* base (the weights training saw), in
the export's dtype (`dequantized_merge`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from lit_sft.errors import ConfigError
from lit_sft.hub import DTypeName, torch_dtype
from lit_sft.model.hf import base_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

__all__ = [
    "QuantizationOptions",
    "bitsandbytes_config",
    "dequantized_merge",
    "drop_quantized_base",
    "is_quantized",
    "prepare_quantized",
    "quantization_problems",
    "weight_count",
]

_INSTALL = "pip install -e '.[qlora]'"


@dataclass
class QuantizationOptions:
    """4-bit loading of the base model (QLoRA; needs ``model.lora`` and ``model.model_name_or_path``).

    Args:
        load_in_4bit: Load the base weights in 4 bits (the only mode; the adapters train in ``dtype``).
        bnb_4bit_quant_type: ``nf4`` (NormalFloat, QLoRA's) or ``fp4``.
        bnb_4bit_compute_dtype: The dtype the 4-bit layers compute in (``bfloat16``, ``float16``, ``float32``).
        double_quant: Quantize the quantization constants too (``bnb_4bit_use_double_quant``; saves ~0.4 bit
            per weight).
    """

    load_in_4bit: bool = True
    bnb_4bit_quant_type: Literal["nf4", "fp4"] = "nf4"
    bnb_4bit_compute_dtype: DTypeName = "bfloat16"
    double_quant: bool = True


def check_options(options: QuantizationOptions, has_lora: bool, pretrained: bool) -> None:
    """Refuse what cannot run, before anything is loaded.

    Raises:
        ConfigError: Naming the option to change.
    """
    if not options.load_in_4bit:
        raise ConfigError("model.quantization.load_in_4bit must be true (4-bit QLoRA is the supported mode)")
    if options.bnb_4bit_quant_type not in ("nf4", "fp4"):
        raise ConfigError(
            f"model.quantization.bnb_4bit_quant_type must be nf4 or fp4; got {options.bnb_4bit_quant_type!r}"
        )
    if torch_dtype(options.bnb_4bit_compute_dtype, "model.quantization.bnb_4bit_compute_dtype") is None:
        raise ConfigError("model.quantization.bnb_4bit_compute_dtype must be a dtype, not auto")
    if not has_lora:
        raise ConfigError(
            "model.quantization trains LoRA adapters on a frozen 4-bit base: set model.lora too"
        )
    if not pretrained:
        raise ConfigError(
            "model.quantization quantizes pretrained weights: set model.model_name_or_path (not model_config)"
        )


def bitsandbytes_config(options: QuantizationOptions) -> Any:
    """transformers' ``BitsAndBytesConfig`` for ``options``."""
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=options.bnb_4bit_quant_type,
        bnb_4bit_compute_dtype=torch_dtype(options.bnb_4bit_compute_dtype),
        bnb_4bit_use_double_quant=options.double_quant,
    )


def quantization_problems(on_gpu: bool) -> list[str]:
    """Why 4-bit layers cannot run here, one line each (empty when they can): bitsandbytes missing, or a
    CPU run with a bitsandbytes that has no CPU backend (tried on a tiny tensor)."""
    try:
        import bitsandbytes
        import bitsandbytes.functional as bnb_functional
    except ImportError:
        return [f"model.quantization needs bitsandbytes: {_INSTALL}"]
    if on_gpu:
        return []
    try:
        bnb_functional.quantize_4bit(torch.zeros(64, 64), quant_type="nf4")
    except Exception as error:
        return [
            f"model.quantization needs a CUDA GPU here: bitsandbytes {bitsandbytes.__version__} has no CPU backend "
            f"on this machine ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
            "bitsandbytes>=0.46 runs 4-bit on CPUs"
        ]
    return []


#: Checkpoint keys bitsandbytes adds next to a 4-bit weight.
_QUANT_STATE_MARKERS = (".absmax", ".quant_map", ".nested_absmax", ".nested_quant_map", ".quant_state.")


def drop_quantized_base(state_dict: dict[str, Any]) -> dict[str, Any]:
    """``state_dict`` without the 4-bit base layers (packed weights and quantization states): what is left
    (adapters, modules trained in full, the base's unquantized weights) loads into a model quantized again."""
    quantized = {
        name.split(marker)[0] for name in state_dict for marker in _QUANT_STATE_MARKERS if marker in name
    }
    return {
        name: value
        for name, value in state_dict.items()
        if name not in quantized and not any(marker in name for marker in _QUANT_STATE_MARKERS)
    }


def weight_count(parameter: torch.Tensor) -> int:
    """How many weights ``parameter`` holds: for a bitsandbytes 4-bit parameter (``Params4bit``) the original
    matrix's size (its ``numel()`` counts the packed bytes, two weights each), else ``numel()``."""
    shape = getattr(getattr(parameter, "quant_state", None), "shape", None)
    return math.prod(shape) if shape is not None else parameter.numel()


def is_quantized(model: PreTrainedModel) -> bool:
    """Whether the (possibly peft-wrapped) model was loaded with bitsandbytes quantization."""
    base = base_model(model)
    return bool(getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False))


def prepare_quantized(model: Any) -> Any:
    """peft's k-bit preparation (freeze the base, non-quantized weights in fp32 for stable training); gradient
    checkpointing stays with `lit_sft.model.build.prepare_for_training`, which enables it non-reentrant."""
    from peft import prepare_model_for_kbit_training

    for module in model.modules():
        # bitsandbytes' CPU backend repacks a 4-bit weight in place for its inference kernel at the first
        # eval-mode forward (the loss probe, validation), after which training through it fails: keep the
        # training layout.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    return prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)


def dequantized_merge(model: Any, dtype: DTypeName = "auto") -> Any:
    """A plain transformers model: the de-quantized 4-bit base weights (what training computed with) with the
    peft adapters merged in, in ``dtype`` (``auto``: the dtype of its unquantized weights, as for other
    exports). ``model`` is left untouched.

    The adapters move onto a fresh LoRA model around the de-quantized base, since merging into a 4-bit layer
    would quantize the sum again.
    """
    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    adapters = {name: tensor.detach().cpu() for name, tensor in get_peft_model_state_dict(model).items()}
    [(adapter_name, config)] = list(model.peft_config.items())
    work = copy.deepcopy(model)
    base = (
        work.unload()
    )  # the base layers back in place of the LoRA layers (modules_to_save: the trained copy)
    target = torch_dtype(dtype) if dtype != "auto" else None
    plain = base.dequantize(dtype=target).cpu()
    if target is not None:
        plain = plain.to(target)
    config = copy.deepcopy(config)
    config.init_lora_weights = True  # the trained weights are loaded next; no PiSSA/OLoRA re-initialisation
    fresh = get_peft_model(plain, config, adapter_name=adapter_name)
    set_peft_model_state_dict(fresh, adapters, adapter_name=adapter_name)
    merged = fresh.merge_and_unload()
    if target is not None:
        merged = merged.to(target)
    for attribute in ("quantization_config",):
        if hasattr(merged.config, attribute):
            delattr(merged.config, attribute)
    merged.is_loaded_in_4bit = False
    return merged
