"""A verl SFT configuration (`lit_sft.verl.overrides.VerlConfig`) as a native LightningCLI config (a dict).

Each verl key maps to the lit_sft option with the same meaning (the README's "Coming from verl" table);
`Launch` carries what the launcher decides (torchrun's process counts, whether CUDA is there), so the
translation itself is pure and testable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lit_sft.errors import ConfigError
from lit_sft.verl import foreign
from lit_sft.verl.outputs import loggers, resume_from
from lit_sft.verl.overrides import VerlConfig

_DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16",
           "fp16": "float16", "float16": "float16"}  # fmt: skip


@dataclass(frozen=True)
class Launch:
    """How the processes were started.

    Attributes:
        world_size: Processes in the run (torchrun's ``WORLD_SIZE``), or None without torchrun.
        local_world_size: Processes on this node (``LOCAL_WORLD_SIZE``).
        cuda: Whether a CUDA device is available.
        cuda_devices: CUDA devices this machine shows (the processes a run without torchrun starts).
    """

    world_size: int | None = None
    local_world_size: int | None = None
    cuda: bool = False
    cuda_devices: int = 1

    @classmethod
    def detect(cls) -> Launch:
        """From torchrun's environment variables and torch."""
        import torch

        world = os.environ.get("WORLD_SIZE")
        local = os.environ.get("LOCAL_WORLD_SIZE", world)
        cuda = torch.cuda.is_available()
        return cls(
            int(world) if world else None,
            int(local) if local else None,
            cuda,
            torch.cuda.device_count() if cuda else 0,
        )


@dataclass
class Translation:
    """The native config and what the user should know about it.

    Attributes:
        config: The LightningCLI ``fit`` config (``lit-sft fit --config`` runs it).
        warnings: Settings with no effect, or adjusted to this machine.
        notes: How verl's semantics were carried over (printed once, informational).
    """

    config: dict[str, Any]
    warnings: list[str]
    notes: list[str]


def _path(value: Any) -> Any:
    if isinstance(value, str):
        return os.path.expanduser(value)
    if isinstance(value, list):
        return [_path(item) for item in value]
    return value


def _column(config: VerlConfig, key: str, dict_keys: str, fallback: str) -> str:
    column = config.get(key, fallback)
    if isinstance(column, list):
        if len(column) != 1:
            raise ConfigError(f"verl key {key}={column!r}: lit_sft reads one prompt/response column")
        column = column[0]
    return ".".join([str(column), *[str(k) for k in config.get(dict_keys) or []]])


def translate(config: VerlConfig, launch: Launch, log_dir: str | None = None) -> Translation:
    """The native ``fit`` config of a verl SFT configuration.

    Args:
        config: The verl configuration (defaults, file and overrides applied).
        launch: The process layout and devices.
        log_dir: Where CSV/TensorBoard logs (and wandb, without ``$WANDB_DIR``) go; default
            ``<trainer.default_local_dir>/logs``.
    """
    legacy = config.schema == "legacy"
    warnings, notes = list(config.warnings), []
    get = config.get

    # Devices: torchrun decides the process count (verl's SFT trainers never read n_gpus_per_node: they take
    # torch.distributed's world); without torchrun, the machine does: all its GPUs, or one CPU process.
    device = get("trainer.device", "cuda")
    if device not in ("cuda", "cpu"):
        raise ConfigError(f"verl key trainer.device={device!r} is not supported: use cuda or cpu")
    accelerator = "gpu" if device == "cuda" and launch.cuda else "cpu"
    if device == "cuda" and not launch.cuda:
        warnings.append("trainer.device=cuda but no CUDA device here: running on CPU in float32")
    gpus, nodes = int(get("trainer.n_gpus_per_node", 1)), int(get("trainer.nnodes", 1))
    if launch.world_size is not None:
        devices = launch.local_world_size or launch.world_size
        num_nodes = launch.world_size // devices
        for key, value, actual in (
            ("trainer.n_gpus_per_node", gpus, devices),
            ("trainer.nnodes", nodes, num_nodes),
        ):
            if key in config.given and value != actual:
                warnings.append(f"{key}={value} but torchrun started {actual}: following torchrun")
    else:
        if nodes > 1:
            raise ConfigError(
                "trainer.nnodes > 1: launch with torchrun on every node (torchrun ... -m lit_sft verl ...)"
            )
        devices, num_nodes = (max(launch.cuda_devices, 1) if accelerator == "gpu" else 1), 1
        if "trainer.n_gpus_per_node" in config.given and gpus != devices:
            where = f"the {devices} GPU(s) of this machine" if accelerator == "gpu" else "one CPU process"
            warnings.append(
                f"trainer.n_gpus_per_node={gpus} without torchrun: running on {where}; "
                f"use torchrun --nproc_per_node {gpus} -m lit_sft verl ..."
            )
    world = devices * num_nodes

    # Batches: verl's global batch over data-parallel ranks (sequence-parallel groups share rows).
    if foreign.is_foreign(
        config, "engine"
    ):  # Megatron/Automodel: FSDP over all ranks, context parallel as sp
        sequence = foreign.sequence_parallel_size(config)
        layout = foreign.layout_warning(config)
        warnings += [layout] if layout else []
    else:
        sequence = int(
            get("ulysses_sequence_parallel_size" if legacy else "engine.ulysses_sequence_parallel_size", 1)
        )
    if not legacy:
        foreign.mtp(config, warnings)
    if world % sequence:
        raise ConfigError(f"ulysses_sequence_parallel_size={sequence} does not divide the {world} processes")
    data_parallel = world // sequence
    packing = (
        bool(get("use_remove_padding"))
        if legacy
        else bool(get("model.use_remove_padding") or get("data.pad_mode") == "no_padding")
    )
    if sequence > 1 and not packing:
        raise ConfigError(
            "ulysses_sequence_parallel_size > 1 needs use_remove_padding=true (verl asserts the same)"
        )
    batches = _batches(config, legacy, data_parallel, sequence, warnings)

    data = _data(config, legacy, batches, packing, warnings)
    model = _model(config, legacy, accelerator, sequence, warnings)
    trainer = _trainer(
        config, legacy, accelerator, devices, num_nodes, batches.accumulation, log_dir, warnings
    )
    native: dict[str, Any] = {
        "seed_everything": int(get("trainer.seed", 1)),
        "trainer": trainer,
        "model": {"class_path": "lit_sft.SFTModule", "init_args": model},
        "data": {"class_path": "lit_sft.SFTDataModule", "init_args": data},
    }
    resume = resume_from(config, trainer["callbacks"][0]["init_args"]["dirpath"])
    if resume:
        native["ckpt_path"] = resume
        notes.append(f"resuming from {resume}")
    if batches.max_tokens is None:
        notes.append(
            f"{world} process(es), data-parallel {data_parallel}: {batches.global_rows} rows per step = "
            f"{batches.micro} x {data_parallel} x accumulation {batches.accumulation}"
        )
    else:
        notes.append(
            f"{world} process(es), data-parallel {data_parallel}: {batches.global_rows} rows per step, "
            f"{batches.global_rows // data_parallel} per data-parallel rank in micro-batches of at most "
            f"{batches.max_tokens} tokens (data.use_dynamic_bsz: max_token_len_per_gpu x "
            f"ulysses_sequence_parallel_size {sequence}); data.micro_batch_size_per_gpu is not used, as in verl"
        )
    return Translation(native, warnings, notes)


@dataclass(frozen=True)
class _Batches:
    """Rows per optimizer step over all data-parallel ranks and how each rank splits its share.

    Attributes:
        global_rows: Rows per optimizer step (``data.global_batch_size``).
        micro: Rows per micro-batch (fixed-size micro-batches; also the validation batch).
        accumulation: Micro-batches per step on each rank (None: measured from the data, token budgets).
        max_tokens: The token budget of each micro-batch (verl's ``use_dynamic_bsz``), or None.
    """

    global_rows: int
    micro: int
    accumulation: int | None
    max_tokens: int | None


def _batches(
    config: VerlConfig, legacy: bool, data_parallel: int, sequence: int, warnings: list[str]
) -> _Batches:
    """verl's batch arithmetic, with its own checks worded with its keys.

    The legacy trainer asserts that ``train_batch_size`` divides by the data-parallel size and its per-rank
    share by ``micro_batch_size_per_gpu`` (``_normalize_config_bsz``). The engine trainer takes
    ``train_batch_size // dp`` rows per rank (``sft_trainer.py``, no check); with ``use_dynamic_bsz`` it splits
    them into micro-batches of at most ``max_token_len_per_gpu x sp`` tokens (``prepare_micro_batches``),
    else into ``share // micro_batch_size_per_gpu`` equal chunks (``chunk_tensordict`` asserts they are equal).
    """
    get = config.get
    global_rows, micro = int(get("data.train_batch_size")), int(get("data.micro_batch_size_per_gpu"))
    layout = f"data-parallel size {data_parallel} (processes / ulysses_sequence_parallel_size {sequence})"
    if global_rows < 1 or micro < 1:
        raise ConfigError(
            f"data.train_batch_size={global_rows} and data.micro_batch_size_per_gpu={micro} must be positive"
        )
    share = global_rows // data_parallel
    if legacy:
        if global_rows % data_parallel:
            raise ConfigError(f"data.train_batch_size={global_rows} is not divisible by the {layout}")
        if share % micro:
            raise ConfigError(
                f"data.train_batch_size={global_rows} / {layout} = {share} rows per rank is not divisible by "
                f"data.micro_batch_size_per_gpu={micro} (verl asserts the same)"
            )
        return _Batches(global_rows, micro, share // micro, None)
    if share < 1:
        raise ConfigError(f"data.train_batch_size={global_rows} gives no rows to each rank of the {layout}")
    if global_rows % data_parallel:
        warnings.append(
            f"data.train_batch_size={global_rows} is not divisible by the {layout}: each step takes "
            f"{share * data_parallel} rows ({share} per rank), as verl's sft_trainer does"
        )
    if get("data.use_dynamic_bsz"):
        budget = int(get("data.max_token_len_per_gpu")) * sequence
        return _Batches(share * data_parallel, micro, None, budget)
    chunks = share // micro
    if chunks < 1 or share % chunks:
        raise ConfigError(
            f"data.train_batch_size={global_rows} / {layout} = {share} rows per rank does not split into "
            f"equal micro-batches of about data.micro_batch_size_per_gpu={micro} rows (verl's chunking asserts "
            "the same with data.use_dynamic_bsz=false)"
        )
    if share // chunks != micro:
        warnings.append(
            f"data.micro_batch_size_per_gpu={micro}: verl splits the {share} rows per rank into {chunks} "
            f"micro-batches of {share // chunks} rows; doing the same"
        )
    return _Batches(share * data_parallel, share // chunks, chunks, None)


def _data(
    config: VerlConfig, legacy: bool, batches: _Batches, packing: bool, warnings: list[str]
) -> dict[str, Any]:
    get = config.get
    data: dict[str, Any] = {
        "train_files": _path(get("data.train_files")),
        "val_files": _path(get("data.val_files")),
        "max_length": get("data.max_length", 1024),
        "truncation": get("data.truncation", "error"),
        "batch_size": batches.micro,
        "global_batch_size": batches.global_rows,
        "drop_last": True,  # verl's DistributedSampler and DataLoader both drop_last=True
        # verl's validation forward passes take micro_batch_size_per_gpu rows (legacy; engine without
        # use_dynamic_bsz), or micro-batches under the same token budget as training (use_dynamic_bsz).
        "val_batch_size": batches.micro,
        "packing": packing,
        "shuffle": True,
        "seed": int(get("trainer.seed", 1)),
        "template_kwargs": dict(get("data.apply_chat_template_kwargs") or {}),
    }
    thinking = _thinking_default(get("data.enable_thinking_default"))
    if thinking is not None:  # MultiTurnSFTDataset: the default overrides apply_chat_template_kwargs' value
        data["template_kwargs"]["enable_thinking"] = thinking
    if "data.num_workers" in config.given:  # verl's DataLoader workers (lit_sft's default: none)
        data["num_workers"] = int(get("data.num_workers"))
    if batches.max_tokens is not None:
        data["max_tokens_per_batch"] = batches.max_tokens
    for key, native in (
        ("data.train_max_samples", "max_train_samples"),
        ("data.val_max_samples", "max_val_samples"),
    ):
        value = get(key, -1)
        data[native] = None if value is None or value < 0 else int(value)
    if get("data.shuffle") and (data["max_train_samples"] or data["max_val_samples"]):
        raise ConfigError(
            "data.shuffle=true (a random train_max_samples subset) is not supported: lit_sft takes the first rows"
        )
    if legacy and not get("data.multiturn.enable"):
        # verl's SFTDataset: the prompt becomes a user message rendered with the chat template and the
        # generation prompt; the response and EOS follow (lit_sft renders the pair with the template).
        data["format"] = "prompt_response"
        data["prompt_key"] = _column(config, "data.prompt_key", "data.prompt_dict_keys", "prompt")
        data["response_key"] = _column(config, "data.response_key", "data.response_dict_keys", "response")
    else:
        prefix = "data.multiturn." if legacy else "data."
        data["format"] = "messages"
        data["messages_key"] = get(prefix + "messages_key", "messages")
        data["tools_key"] = get(prefix + "tools_key", "tools")
        _refuse_thinking_column(data, get(prefix + "enable_thinking_key", "enable_thinking"))
    if not legacy and get("data.pad_mode") == "no_padding" and data["truncation"] != "right":
        # MultiTurnSFTDataset in no_padding mode cuts at max_length whatever truncation says.
        if "data.truncation" in config.given:
            warnings.append(f"data.truncation={data['truncation']} has no effect with data.pad_mode=no_padding "
                            "in verl (rows are cut at max_length): doing the same")  # fmt: skip
        data["truncation"] = "right"
    return data


def _thinking_default(value: Any) -> bool | None:
    """``data.enable_thinking_default`` as the ``enable_thinking`` template argument, or None for none.

    verl's yaml default is the string ``none``, which its dataset turns into ``bool("none") = True``: the
    templates that read ``enable_thinking`` (Qwen3's) treat True as unset, so lit_sft leaves it unset.
    """
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
        return None
    if isinstance(value, str):
        if value.lower() not in ("true", "false"):
            raise ConfigError(
                f"verl key data.enable_thinking_default={value!r}: expected true, false or none"
            )
        return value.lower() == "true"
    return bool(value)


def _refuse_thinking_column(data: dict[str, Any], column: str) -> None:
    """verl's MultiTurnSFTDataset passes a per-row ``enable_thinking`` column to the chat template; lit_sft
    does not, so local parquet files that have one are refused rather than silently read without it."""
    import glob

    import pyarrow.parquet as pq

    specs = [data["train_files"], data["val_files"]]
    for spec in [item for value in specs if value for item in ([value] if isinstance(value, str) else value)]:
        for path in glob.glob(spec) if spec.endswith(".parquet") else []:
            if column in pq.read_schema(path).names:
                raise ConfigError(
                    f"{path} has a per-row {column!r} column, which verl passes to the chat template and lit_sft "
                    "does not: drop the column and set data.apply_chat_template_kwargs={enable_thinking: ...}"
                )


def _model(
    config: VerlConfig, legacy: bool, accelerator: str, sequence: int, warnings: list[str]
) -> dict[str, Any]:
    get = config.get
    prefix = "model.fsdp_config." if legacy else "engine."
    dtype = get(prefix + "model_dtype", "fp32")
    if dtype not in _DTYPES:
        raise ConfigError(f"verl key {prefix}model_dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
    model: dict[str, Any] = {
        "model_name_or_path": _path(get("model.partial_pretrain" if legacy else "model.path")),
        "dtype": _DTYPES[dtype],
        "trust_remote_code": bool(get("model.trust_remote_code")),
        "gradient_checkpointing": foreign.gradient_checkpointing(config)
        if foreign.is_foreign(config, "engine")
        else bool(get("model.enable_gradient_checkpointing")),
        "liger_kernels": bool(get("model.use_liger")),
        "sequence_parallel_size": sequence,
    }
    if not legacy and get("model.tokenizer_path"):
        model["tokenizer_name_or_path"] = _path(get("model.tokenizer_path"))
    template = get("data.chat_template") if legacy else get("model.custom_chat_template")
    if template:
        model["chat_template"] = template
    if not legacy and get("model.override_config"):
        model["model_kwargs"] = dict(get("model.override_config"))
    lora = _lora(config, legacy, warnings)
    if lora is not None:
        model["lora"] = lora
    if foreign.is_foreign(config, "optim"):
        adamw, schedule = foreign.optimizer(config, warnings), foreign.schedule(config)
    else:
        adamw = {"lr": float(get("optim.lr")), "betas": list(get("optim.betas")),
                 "weight_decay": float(get("optim.weight_decay"))}  # fmt: skip
        schedule = _schedule(config, legacy, warnings)
    model["optimizer"] = {"class_path": "torch.optim.AdamW", "init_args": adamw}
    model["lr_scheduler"] = {"class_path": "lit_sft.WarmupDecayLR", "init_args": schedule}
    return model


#: Megatron's linear layer names (``model.lora.target_modules``) -> the Hugging Face modules they hold.
_MEGATRON_LINEARS = {
    "linear_qkv": ["q_proj", "k_proj", "v_proj"],
    "linear_proj": ["o_proj"],
    "linear_fc1": ["gate_proj", "up_proj"],
    "linear_fc2": ["down_proj"],
}
_LORA_TYPES = {"lora": False, "canonical_lora": False, "dora": True}


def _lora(config: VerlConfig, legacy: bool, warnings: list[str]) -> dict[str, Any] | None:
    """LoRA from ``model.lora_rank``/``lora_alpha``/``target_modules`` (what verl's FSDP engine reads) or from
    ``model.lora.*`` (the Megatron-Bridge LoRA of newer verl: rank, alpha, dropout, target_modules, type)."""
    get = config.get
    rank = int(get("model.lora_rank", 0) or 0)
    nested = 0 if legacy else int(get("model.lora.rank", 0) or 0)
    if rank > 0 and nested > 0:
        raise ConfigError(
            f"model.lora_rank={rank} and model.lora.rank={nested} are both set: set one "
            "(verl's FSDP engine reads model.lora_rank)"
        )
    if rank > 0:
        return {"r": rank, "alpha": get("model.lora_alpha", 16),
                "target_modules": get("model.target_modules", "all-linear")}  # fmt: skip
    if nested <= 0:
        return None
    kind = get("model.lora.type", "lora")
    if kind not in _LORA_TYPES:
        raise ConfigError(f"verl key model.lora.type={kind!r}: lit_sft implements {', '.join(_LORA_TYPES)}")
    targets = get("model.lora.target_modules") or "all-linear"
    if isinstance(targets, list):
        targets = [hf for name in targets for hf in _MEGATRON_LINEARS.get(name, [name])]
    warnings.append(
        f"model.lora.rank={nested}: verl's FSDP engine reads model.lora_rank (model.lora is Megatron's LoRA); "
        "lit_sft trains LoRA with model.lora's rank, alpha, dropout and target modules (Megatron names mapped)"
    )
    return {"r": nested, "alpha": get("model.lora.alpha", 32), "dropout": float(get("model.lora.dropout", 0.0)),
            "target_modules": targets, "use_dora": _LORA_TYPES[kind]}  # fmt: skip


def _schedule(config: VerlConfig, legacy: bool, warnings: list[str]) -> dict[str, Any]:
    get = config.get
    if (
        legacy
    ):  # fsdp_sft_trainer.py: cosine (or wsd) with warmup int(total * lr_warmup_steps_ratio), down to 0
        name, warmup_steps, minimum = get("optim.lr_scheduler", "cosine"), 0, 0.0
    else:  # engine: optim/fsdp.yaml's lr_scheduler_type (warmup_style is its deprecated name)
        name = get("optim.warmup_style") or get("optim.lr_scheduler_type", "constant")
        warmup_steps, minimum = (
            max(int(get("optim.lr_warmup_steps", -1)), 0),
            float(get("optim.min_lr_ratio", 0.0)),
        )
    if name not in ("cosine", "constant"):
        raise ConfigError(f"verl lr scheduler {name!r} is not supported: use cosine or constant")
    if not legacy and get("optim.zero_indexed_step") is False:
        if name == "cosine":
            raise ConfigError(
                "verl key optim.zero_indexed_step=false (the cosine schedule counted from step 1) is not "
                "supported: lit_sft's schedule counts from step 0"
            )
        warnings.append(
            "verl key optim.zero_indexed_step=false has no effect on the constant schedule (as in verl)"
        )
    schedule = {
        "schedule": name,
        "warmup_ratio": float(get("optim.lr_warmup_steps_ratio", 0.0)),
        "min_lr_ratio": minimum,
    }
    if warmup_steps:
        schedule["warmup_steps"] = warmup_steps
    return schedule


def _strategy(config: VerlConfig, legacy: bool, accelerator: str, warnings: list[str]) -> dict[str, Any]:
    get = config.get
    name = get("model.strategy", "fsdp2") if legacy else get("engine.strategy", "fsdp")
    if foreign.is_foreign(config, "engine"):  # Megatron/Automodel layouts become FSDP2 over all ranks
        name = "fsdp2"
    if legacy:
        offload = bool(get("model.fsdp_config.cpu_offload"))
        # FSDP1's CPUOffload moves parameters only with offload_params (fsdp_sft_trainer.py); FSDP2's policy always.
        offload = offload and (name == "fsdp2" or bool(get("model.fsdp_config.offload_params")))
        reshard = True
    else:
        offload = bool(get("engine.param_offload") or get("engine.offload_policy"))
        reshard = bool(get("engine.reshard_after_forward", True))
    mixed = {"param_dtype": "bfloat16" if get("engine.dtype", "bfloat16") == "bfloat16" else "float16",
             "reduce_dtype": "float32"} if accelerator == "gpu" else {}  # fmt: skip
    if name == "fsdp" and accelerator == "cpu":  # torch's FSDP (1) refuses CPU tensors; FSDP2 runs with gloo
        warnings.append("strategy fsdp (FSDP1) needs a GPU: using fsdp2 on CPU")
        name = "fsdp2"
    if name == "fsdp2":
        return {"class_path": "lit_sft.training.strategies.FSDP2Strategy",
                "init_args": {"reshard_after_forward": reshard, "cpu_offload": offload, **mixed}}  # fmt: skip
    if name == "fsdp":
        sharding = "FULL_SHARD" if reshard else "SHARD_GRAD_OP"
        return {"class_path": "lit_sft.training.strategies.FSDPStrategyPreset",
                "init_args": {"sharding_strategy": sharding, "cpu_offload": offload, **mixed}}  # fmt: skip
    raise ConfigError(f"verl strategy {name!r} is not supported: use fsdp or fsdp2")


def _trainer(
    config: VerlConfig, legacy: bool, accelerator: str, devices: int, num_nodes: int, accumulation: int | None,
    log_dir: str | None, warnings: list[str],
) -> dict[str, Any]:  # fmt: skip
    get = config.get
    root = _path(get("trainer.default_local_dir"))
    logs = _path(log_dir) if log_dir else os.path.join(root, "logs")
    precision = "32-true"
    if accelerator == "gpu":
        dtype = _DTYPES[get(("model.fsdp_config." if legacy else "engine.") + "model_dtype", "fp32")]
        half = "16" if not legacy and get("engine.dtype") == "float16" else "bf16"
        precision = f"{half}-mixed" if dtype == "float32" else f"{half}-true"
    steps = get("trainer.total_training_steps")
    trainer: dict[str, Any] = {
        "accelerator": accelerator,
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": _strategy(config, legacy, accelerator, warnings),
        "precision": precision,
        "max_epochs": int(get("trainer.total_epochs")),
        "max_steps": int(steps) if steps is not None else -1,
        "gradient_clip_val": get("optim.clip_grad"),
        "default_root_dir": root,
        "num_sanity_val_steps": 0,
        "log_every_n_steps": 1,
        "logger": loggers(config, logs, warnings),
    }
    # verl validates every test_freq optimizer steps and at its last step (VerlValidation); Lightning counts
    # micro-batches, whose number per step token budgets know only from the data (the callback sets it then).
    test_freq, every_n_steps = get("trainer.test_freq", -1), None
    if test_freq == "after_each_epoch":
        trainer["check_val_every_n_epoch"] = 1
    elif int(test_freq) > 0 or steps is not None:
        every_n_steps = int(test_freq) if int(test_freq) > 0 else int(steps)
        trainer.update(val_check_interval=every_n_steps * (accumulation or 1), check_val_every_n_epoch=None)
    else:  # no test_freq: only the last step, the end of the last epoch
        trainer["check_val_every_n_epoch"] = int(get("trainer.total_epochs"))
    save_freq = get("trainer.save_freq", -1)
    checkpoint: dict[str, Any] = {"dirpath": root, "max_to_keep": get("trainer.max_ckpt_to_keep")}
    if save_freq == "after_each_epoch":
        checkpoint["every_n_epochs"] = 1
    elif int(save_freq) > 0:
        checkpoint["every_n_train_steps"] = int(save_freq)
    trainer["callbacks"] = [
        {"class_path": "lit_sft.callbacks.GlobalStepCheckpoint", "init_args": checkpoint},
        {
            "class_path": "lit_sft.verl.validation.VerlValidation",
            "init_args": {"every_n_train_steps": every_n_steps},
        },
    ]
    return trainer
