"""Building the trained model: load or initialise from a config, then dropout, Liger kernels, gradient
checkpointing and LoRA adapters; and loading an `SFTModule` back from a ``lit-sft fit`` checkpoint.

`SFTModule.build_model` and its other build steps call these functions, so subclasses can change one step
(`lit_sft.model.vision.VisionSFTModule` builds vision-language models) and keep the rest.
"""

from __future__ import annotations

import functools
import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lit_sft.errors import ConfigError
from lit_sft.gguf import check_local_path, is_gguf, load_gguf_model
from lit_sft.hub import torch_dtype
from lit_sft.model.attention import resolve_attention
from lit_sft.model.hf import base_model

if TYPE_CHECKING:
    from lit_sft.model.loss import LossOptions
    from lit_sft.model.module import SFTModule

#: Config attributes that hold a dropout probability, across model families.
DROPOUT_ATTRIBUTES = (
    "attention_dropout",
    "hidden_dropout",
    "dropout",
    "resid_pdrop",
    "embd_pdrop",
    "attn_pdrop",
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "activation_dropout",
)


@dataclass
class LoraOptions:
    """LoRA adapters (through peft); only adapter weights train.

    Args:
        r: Adapter rank.
        alpha: Scaling numerator (``lora_alpha``); the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt (``[q_proj, k_proj, v_proj, o_proj]``) or ``all-linear``.
        modules_to_save: Modules trained in full besides the adapters (e.g. ``[lm_head]``).
        use_dora: DoRA (weight-decomposed LoRA): a trained magnitude per output feature on top of the low-rank
            direction update (peft's ``use_dora``).
        use_rslora: Rank-stabilised LoRA: scale the update by ``alpha / sqrt(r)`` instead of ``alpha / r``.
        init_lora_weights: peft's ``init_lora_weights``: ``true`` (B = 0, A Kaiming-uniform), ``gaussian``,
            ``pissa`` / ``pissa_niter_<n>`` (principal singular vectors; the base keeps the residual),
            ``olora`` (QR of the base weight; the base keeps the rest), ``orthogonal``, ... PiSSA and OLoRA
            change the base weights: a merged export is the trained model as is; an adapter export is
            converted to a plain LoRA of rank ``2 r`` on the original base (when the run has one; a randomly
            initialised run ships its residual base with the adapter).
        layers_to_transform: Adapt only these decoder layers (indices, from 0) of ``target_modules``.
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] | None = None
    use_dora: bool = False
    use_rslora: bool = False
    init_lora_weights: bool | str = True
    layers_to_transform: list[int] | int | None = None

    def mutates_base(self) -> bool:
        """Whether the initialisation moves part of the base weights into the adapter (PiSSA, OLoRA, CorDA)."""
        init = self.init_lora_weights
        return isinstance(init, str) and init.split("_")[0] in ("pissa", "olora", "corda")


def apply_dropout(config: Any, probability: float) -> list[str]:
    """Set every dropout probability the config has to ``probability``; return the names set.

    Raises:
        ConfigError: When the probability is outside [0, 1) or the config has no dropout to set.
    """
    if not 0.0 <= probability < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {probability}")
    names = [name for name in DROPOUT_ATTRIBUTES if isinstance(getattr(config, name, None), int | float)]
    if not names:
        raise ConfigError(f"model.dropout: {type(config).__name__} has none of {DROPOUT_ATTRIBUTES}")
    for name in names:
        setattr(config, name, probability)
    return names


def check_module_options(
    model_name_or_path: str | None,
    model_config: dict[str, Any] | None,
    dtype: str,
    loss_options: LossOptions,
    neftune_noise_alpha: float | None,
    skip_nonfinite_steps: int,
    sequence_parallel_size: int,
) -> LossOptions:
    """Check `SFTModule`'s options (before anything is loaded); return ``loss_options``.

    Raises:
        ConfigError: Naming the first option that is wrong.
    """
    if (model_name_or_path is None) == (model_config is None):
        raise ConfigError("set exactly one of model.model_name_or_path and model.model_config")
    if model_config is not None and "model_type" not in model_config:
        raise ConfigError("model.model_config needs a model_type (e.g. qwen2, llama)")
    torch_dtype(dtype, "model.dtype")
    if loss_options.implementation not in ("chunked", "plain", "liger"):
        raise ConfigError(
            f"model.loss.implementation must be chunked, plain or liger; got {loss_options.implementation!r}"
        )
    if loss_options.type not in ("nll", "dft"):
        raise ConfigError(f"model.loss.type must be nll or dft; got {loss_options.type!r}")
    if neftune_noise_alpha is not None and neftune_noise_alpha < 0:
        raise ConfigError(f"model.neftune_noise_alpha must not be negative; got {neftune_noise_alpha}")
    if loss_options.chunk_size < 1 or skip_nonfinite_steps < 0:
        raise ConfigError(
            "model.loss.chunk_size must be positive and model.skip_nonfinite_steps not negative"
        )
    if sequence_parallel_size < 1:
        raise ConfigError("model.sequence_parallel_size must be at least 1")
    return loss_options


def import_class(dotted_path: str) -> Any:
    """The class at ``package.module.Name``, or None when it cannot be imported."""
    module_name, _, name = dotted_path.rpartition(".")
    try:
        found = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError):
        return None
    return found if isinstance(found, type) else None


def load_kwargs(
    dtype: str, attn_implementation: str | None, trust_remote_code: bool, model_kwargs: dict[str, Any]
) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained`` / ``from_config`` (``trust_remote_code`` included)."""
    kwargs = {"trust_remote_code": trust_remote_code, **model_kwargs}
    if attn_implementation:
        # ``auto`` not yet resolved for a run (a model rebuilt for export): sdpa
        kwargs["attn_implementation"] = resolve_attention(attn_implementation)
    if dtype != "auto":
        kwargs["dtype"] = torch_dtype(dtype, "model.dtype")
    return kwargs


def build_causal_lm(
    model_name_or_path: str | None,
    model_config: dict[str, Any] | None,
    tokenizer: Callable[[], Any],
    dropout: float | None,
    kwargs: dict[str, Any],
) -> PreTrainedModel:
    """Load ``model_name_or_path`` with ``AutoModelForCausalLM``, or initialise one randomly from
    ``model_config``, whose vocabulary size and special token ids default to the tokenizer's.

    Args:
        model_name_or_path: A Hub id, a local directory or a ``.gguf`` file (or None for ``model_config``).
        model_config: ``{model_type: ..., ...}`` for random initialisation.
        tokenizer: Returns the tokenizer (called only for ``model_config``).
        dropout: Every dropout probability of the config, when set.
        kwargs: From `load_kwargs`.
    """
    kwargs = dict(kwargs)
    trust_remote_code = kwargs["trust_remote_code"]
    if is_gguf(model_name_or_path):  # dequantized to the dtype asked for; the tokenizer is in the file
        configure = None if dropout is None else functools.partial(apply_dropout, probability=dropout)
        return load_gguf_model(model_name_or_path, configure, **kwargs)
    if model_name_or_path is not None:
        check_local_path(model_name_or_path)
        try:
            config = AutoConfig.from_pretrained(model_name_or_path, trust_remote_code=trust_remote_code)
            if dropout is not None:
                apply_dropout(config, dropout)
            return AutoModelForCausalLM.from_pretrained(model_name_or_path, config=config, **kwargs)
        except OSError as error:
            raise ConfigError(f"cannot load a model from {model_name_or_path!r}: {error}") from None
    config_values = dict(model_config or {})
    model_type = config_values.pop("model_type")
    vocabulary = tokenizer()
    config_values.setdefault("vocab_size", len(vocabulary))
    if config_values["vocab_size"] < len(vocabulary):
        raise ConfigError(
            f"model_config.vocab_size={config_values['vocab_size']} is smaller than the tokenizer ({len(vocabulary)})"
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        config_values.setdefault(name, getattr(vocabulary, name))
    config = AutoConfig.for_model(model_type, **config_values)
    if dropout is not None:
        apply_dropout(config, dropout)
    kwargs.pop("trust_remote_code")
    return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code, **kwargs)


def apply_liger_kernels(model: PreTrainedModel) -> None:
    """Swap in Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) for the model's own modules.

    Raises:
        ConfigError: Without ``liger-kernel`` or a CUDA GPU, or for a model family Liger does not cover.
    """
    if not torch.cuda.is_available():
        raise ConfigError("model.liger_kernels needs a CUDA GPU (Liger's kernels are Triton)")
    try:
        from liger_kernel.transformers import _apply_liger_kernel_to_instance
    except ImportError:
        raise ConfigError("model.liger_kernels needs liger-kernel: pip install -e '.[gpu]'") from None
    try:
        _apply_liger_kernel_to_instance(
            model=base_model(model),
            rope=True,
            rms_norm=True,
            swiglu=True,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
        )
    except Exception as error:
        raise ConfigError(f"model.liger_kernels: Liger does not support this model ({error})") from None


def prepare_for_training(
    model: PreTrainedModel,
    liger_kernels: bool = False,
    gradient_checkpointing: bool = False,
    lora: LoraOptions | None = None,
    lora_config_kwargs: dict[str, Any] | None = None,
) -> PreTrainedModel:
    """Train mode without a KV cache, then Liger kernels, gradient checkpointing and LoRA adapters, in
    that order; returns the model (the peft wrapper with LoRA)."""
    # from_pretrained returns the model in eval mode and Lightning keeps the modes it finds at fit start:
    # dropout and gradient checkpointing (it checks ``self.training``) would be silently off.
    model.train()
    # A KV cache is useless in training and breaks packed attention (vision models: their text config's).
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False
    if liger_kernels:
        apply_liger_kernels(model)
    if gradient_checkpointing:
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if lora is not None:
        from peft import LoraConfig, get_peft_model

        config = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            modules_to_save=lora.modules_to_save,
            use_dora=lora.use_dora,
            use_rslora=lora.use_rslora,
            init_lora_weights=cast(Any, lora.init_lora_weights),  # peft checks the name itself
            layers_to_transform=lora.layers_to_transform,
            task_type="CAUSAL_LM",
            **(lora_config_kwargs or {}),
        )
        # The peft wrapper stands in for the model: it forwards every attribute it lacks to the model inside.
        model = cast(PreTrainedModel, get_peft_model(model, config))
        if lora.mutates_base():
            from peft import get_peft_model_state_dict

            # The adapter as initialised: an adapter export subtracts it to give a LoRA on the original base
            # (`lit_sft.inference.export`).
            model.lit_sft_initial_adapter = {  # type: ignore[assignment]  # an attribute of ours on the wrapper
                name: tensor.detach().clone() for name, tensor in get_peft_model_state_dict(model).items()
            }
    return model


def load_module(ckpt: str) -> SFTModule:
    """The `SFTModule` (or subclass, e.g. `VisionSFTModule`) a ``lit-sft fit`` checkpoint was saved from,
    with its trained weights, on the CPU. Checkpoints written before the loss options were grouped load too.

    Raises:
        ConfigError: When there is no checkpoint file, or it names a class that is not an `SFTModule`.
    """
    from lit_sft.model.module import SFTModule

    if not os.path.isfile(ckpt):
        raise ConfigError(f"no checkpoint at {ckpt}")
    # A memory-mapped peek at the class name: the weights are read once, by load_from_checkpoint.
    peek = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    name = peek.get("lit_sft", {}).get("module_class") or "lit_sft.model.module.SFTModule"
    del peek
    cls = import_class(name)
    if not (cls is not None and issubclass(cls, SFTModule)):
        raise ConfigError(f"{ckpt}: saved from {name}, which is not an importable SFTModule")
    return cls.load_from_checkpoint(ckpt, map_location="cpu")
