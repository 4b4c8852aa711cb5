"""verl's ``engine=megatron`` / ``optim=megatron`` and ``engine=automodel`` / ``optim=automodel`` configs on
lit_sft's FSDP path: what carries over, read from verl's source (commit `lit_sft.verl.schema.ENGINE_COMMIT`).

* Optimizer: verl builds Megatron's Adam from ``lr``, ``weight_decay`` and ``clip_grad`` only
  (``init_megatron_optim_config``; ``optim.betas`` is not passed, Megatron's betas are 0.9/0.999 unless
  ``override_optimizer_config`` sets ``adam_beta1/2``) and Automodel's from ``optimizer_impl.optimizer`` with
  ``lr``, ``weight_decay``, ``eps`` and ``betas``. Both are AdamW here.
* Schedule: both use Megatron's OptimizerParamScheduler: warmup ``init_lr + (lr - init_lr) x step / warmup``,
  then ``min_lr + (lr - min_lr) x coeff`` with coeff ``1 - r`` (linear), ``(1 + cos(pi r)) / 2`` (cosine) or 1
  (constant), ``r = (step - warmup) / (decay_steps - warmup)``. That is `lit_sft.WarmupDecayLR` with
  ``min_lr_ratio = min_lr / lr`` and ``warmup_start_ratio = init_lr / lr``; a warmup from 0 keeps lit_sft's
  rule (from ``lr / (warmup + 1)``, so the first step learns), as the FSDP translation does.
* Layout: tensor, pipeline, expert and virtual-pipeline parallelism, Megatron-FSDP, the distributed optimizer
  and mbridge are replaced by FSDP over all ranks (one warning names what was replaced); context parallelism
  becomes lit_sft's (Ulysses) sequence parallelism; recompute becomes gradient checkpointing.
"""

from __future__ import annotations

from typing import Any

from lit_sft.errors import ConfigError
from lit_sft.verl.overrides import VerlConfig, flatten
from lit_sft.verl.schema import GROUP_DEFAULTS, foreign_policy

FOREIGN = ("megatron", "automodel")

#: ``optim.override_optimizer_config`` keys of Megatron's OptimizerConfig that only move or narrow memory.
_MEMORY_OVERRIDES = {
    "optimizer_cpu_offload", "optimizer_offload_fraction", "offload_fraction", "overlap_cpu_optimizer_d2h_h2d",
    "use_torch_optimizer_for_cpu_offload", "pin_cpu_grads", "pin_cpu_params", "use_precision_aware_optimizer",
    "main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype", "store_param_remainders",
    "overlap_param_gather", "overlap_grad_reduce",
}  # fmt: skip
#: Automodel optimizers that are AdamW: (optimizer_impl, optimizer). TE's FusedAdam defaults to adam_w_mode.
_ADAMW = {("torch.optim", "AdamW"), ("transformer_engine.pytorch.optimizers.fused_adam", "FusedAdam"),
          ("transformer_engine.pytorch.optimizers", "FusedAdam")}  # fmt: skip


def is_foreign(config: VerlConfig, group: str) -> bool:
    """Whether the engine trainer's ``engine`` or ``optim`` group is Megatron's or Automodel's."""
    return config.schema == "engine" and config.group(group) in FOREIGN


def sequence_parallel_size(config: VerlConfig) -> int:
    """Context parallelism (Megatron ``context_parallel_size``, Automodel ``cp_size``) as sequence parallelism."""
    key = "engine.context_parallel_size" if config.group("engine") == "megatron" else "engine.cp_size"
    return int(config.get(key, 1) or 1)


def gradient_checkpointing(config: VerlConfig) -> bool:
    """Megatron's recompute (any granularity; lit_sft checkpoints whole layers) or Automodel's activation
    checkpointing; neither engine reads ``model.enable_gradient_checkpointing``."""
    if config.group("engine") == "megatron":
        return config.get("engine.override_transformer_config.recompute_granularity") is not None
    return bool(config.get("engine.activation_checkpointing"))


def layout_warning(config: VerlConfig) -> str | None:
    """One line naming the parallel layout replaced by FSDP over all ranks (None when nothing was set)."""
    engine = config.group("engine")
    reference = flatten(GROUP_DEFAULTS["engine", engine])
    replaced = [
        f"{key}={value!r}"
        for key, value in flatten(config.get("engine") or {}).items()
        if foreign_policy(f"engine.{key}") == ("layout", "") and reference.get(key, "<unset>") != value
    ]
    if not replaced:
        return None
    return (
        f"engine={engine}: lit_sft trains on FSDP over all ranks instead of this layout ({', '.join(replaced)}): "
        "the loss is the same, the memory per device is not"
    )


def optimizer(config: VerlConfig, warnings: list[str]) -> dict[str, Any]:
    """AdamW's arguments from the Megatron or Automodel optim group."""
    get, kind = config.get, config.group("optim")
    arguments: dict[str, Any] = {
        "lr": float(get("optim.lr")),
        "weight_decay": float(get("optim.weight_decay")),
    }
    overrides = dict(get("optim.override_optimizer_config") or {})
    if kind == "megatron":
        if get("optim.optimizer") != "adam":
            raise ConfigError(f"verl key optim.optimizer={get('optim.optimizer')!r} is not supported by lit-sft "
                              "verl: only Megatron's adam (AdamW)")  # fmt: skip
        betas = [float(overrides.pop("adam_beta1", 0.9)), float(overrides.pop("adam_beta2", 0.999))]
        arguments.update(betas=betas, eps=float(overrides.pop("adam_eps", 1e-8)))
        if "optim.betas" in config.given and list(get("optim.betas")) != betas:
            warnings.append(
                f"verl key optim.betas={list(get('optim.betas'))!r} has no effect with optim=megatron: verl does not "
                f"pass it to Megatron, whose Adam keeps betas {betas} (set "
                "+optim.override_optimizer_config.adam_beta2=... for others); doing the same"
            )
        if arguments["weight_decay"] > 0:
            warnings.append(
                "optim=megatron: Megatron does not decay biases and norm weights (1-D parameters); lit_sft's "
                f"AdamW applies weight_decay={arguments['weight_decay']} to every trained parameter"
            )
        if overrides.pop("decoupled_weight_decay", True) is not True:
            raise ConfigError("verl key optim.override_optimizer_config.decoupled_weight_decay=false (Adam with L2 "
                              "regularisation) is not supported by lit-sft verl: lit_sft's optimizer is AdamW")  # fmt: skip
    else:
        name = (get("optim.optimizer_impl"), get("optim.optimizer"))
        if name not in _ADAMW:
            raise ConfigError(f"verl optimizer {name[0]}.{name[1]} is not supported by lit-sft verl: only AdamW "
                              "(torch.optim.AdamW, Transformer Engine's FusedAdam)")  # fmt: skip
        if name[1] == "FusedAdam":
            warnings.append(
                f"verl optimizer {name[0]}.{name[1]} (AdamW mode): lit_sft uses torch.optim.AdamW"
            )
        arguments.update(betas=[float(b) for b in get("optim.betas")], eps=float(get("optim.eps")))
        for key in ("eps", "betas", "weight_decay", "lr"):
            if key in overrides:
                value = overrides.pop(key)
                arguments[key] = [float(b) for b in value] if key == "betas" else float(value)
    for key, value in overrides.items():
        if key not in _MEMORY_OVERRIDES:
            raise ConfigError(
                f"verl key optim.override_optimizer_config.{key}={value!r} is not supported by lit-sft verl: "
                "lit_sft's AdamW takes lr, betas, eps and weight_decay (a native config takes any optimizer)"
            )
        warnings.append(
            f"verl key optim.override_optimizer_config.{key}={value!r} has no effect here: an optimizer memory or "
            "precision setting; lit_sft keeps AdamW's states with the parameters"
        )
    return arguments


def schedule(config: VerlConfig) -> dict[str, Any]:
    """`lit_sft.WarmupDecayLR`'s arguments from Megatron's or Automodel's scheduler keys (see the module doc)."""
    get, kind = config.get, config.group("optim")
    lr = float(get("optim.lr"))
    if kind == "megatron":
        style, key = get("optim.lr_decay_style"), "optim.lr_decay_style"
        initial, minimum = float(get("optim.lr_warmup_init") or 0.0), float(get("optim.min_lr") or 0.0)
        decay_steps = get("optim.lr_decay_steps")
        total = get("trainer.total_training_steps")
        if decay_steps is not None and (total is None or int(decay_steps) != int(total)):
            raise ConfigError(
                f"verl key optim.lr_decay_steps={decay_steps} is not supported by lit-sft verl: lit_sft's schedule "
                "decays over the run's steps (trainer.total_training_steps, else the epochs'); leave it null"
            )
    else:
        style, key = get("optim.lr_scheduler_type"), "optim.lr_scheduler_type"
        ratio, floor = get("optim.init_lr_ratio"), get("optim.min_lr_ratio")  # verl: None -> 0.1, 0.01
        initial = lr * (0.1 if ratio is None else float(ratio))
        minimum = lr * (0.01 if floor is None else float(floor))
    if style not in ("constant", "linear", "cosine"):
        raise ConfigError(
            f"verl key {key}={style!r} is not supported by lit-sft verl: lit_sft's schedules are constant, linear "
            "and cosine after a linear warmup"
        )
    if not 0.0 <= minimum <= lr or not 0.0 <= initial <= lr:
        raise ConfigError(f"verl's scheduler needs 0 <= min and initial learning rates <= optim.lr={lr} (Megatron "
                          f"asserts the same): got min {minimum}, initial {initial}")  # fmt: skip
    arguments: dict[str, Any] = {
        "schedule": style,
        "warmup_ratio": float(get("optim.lr_warmup_steps_ratio") or 0.0),
        "min_lr_ratio": minimum / lr if lr > 0 and style != "constant" else 0.0,
    }
    warmup = int(get("optim.lr_warmup_steps") or -1)
    if warmup > 0:
        arguments["warmup_steps"] = warmup
    if initial > 0:
        arguments["warmup_start_ratio"] = initial / lr
    return arguments


def mtp(config: VerlConfig, warnings: list[str]) -> None:
    """Multi-token prediction: lit_sft loads models through transformers, which drops MTP layers.

    Without ``enable_train`` verl keeps the MTP layers but adds no MTP loss: the training is the same, so a
    warning says the export has no MTP layers. With it, verl adds ``mtp_loss_scaling_factor`` x the MTP loss,
    whose gradient reaches the shared output layer (and, without ``detach_encoder``, the whole decoder): lit_sft
    cannot train that loss, so it refuses.
    """
    if not config.get("model.mtp.enable"):
        return
    if config.get("model.mtp.enable_train"):
        raise ConfigError(
            "verl key model.mtp.enable_train=True is not supported by lit-sft verl: verl adds "
            f"{config.get('model.mtp.mtp_loss_scaling_factor')} x the multi-token-prediction loss, whose gradient "
            "reaches the shared output layer (the whole decoder without model.mtp.detach_encoder); lit_sft loads the "
            "model with transformers, which drops the MTP layers, so it cannot train that loss"
        )
    warnings.append(
        "verl key model.mtp.enable=True: verl keeps the multi-token-prediction layers without training them "
        "(model.mtp.enable_train=false), so the training is the same; lit_sft loads the model with transformers, "
        "which drops them, and the exported model has no MTP layers"
    )
