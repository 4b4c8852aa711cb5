"""verl's SFT trainer configurations, written down as data: their defaults and what lit_sft does with each key.

Two trainers, two key sets (read from verl-project/verl, not guessed):

* the legacy ``verl.trainer.fsdp_sft_trainer``: ``verl/trainer/config/sft_trainer.yaml`` (its ``optim``
  comes from the yaml itself; older verl releases spelled ``optim.lr_warmup_steps_ratio`` as
  ``optim.warmup_steps_ratio`` and ``trainer.resume_from_path`` as ``trainer.resume_path``);
* the engine-based ``verl.trainer.sft_trainer``: ``verl/trainer/config/sft_trainer_engine.yaml`` with the
  groups ``model/hf_model.yaml``, ``engine/fsdp.yaml``, ``optim/fsdp.yaml`` and ``profiler/profiler.yaml``;
  the choices ``engine=megatron``/``optim=megatron`` and ``engine=automodel``/``optim=automodel`` replace the
  engine and optim sections with `MEGATRON_ENGINE_DEFAULTS`, `MEGATRON_OPTIM_DEFAULTS`,
  `AUTOMODEL_ENGINE_DEFAULTS` and `AUTOMODEL_OPTIM_DEFAULTS` (read at `ENGINE_COMMIT`), whose keys
  `FOREIGN_TRANSLATED`, `FOREIGN_LAYOUT`, `FOREIGN_IGNORED` and `FOREIGN_UNSUPPORTED` sort.

Where each table was read: `LEGACY_DEFAULTS` at `LEGACY_COMMIT` (verl's main branch has since deleted the
legacy trainer); `ENGINE_DEFAULTS` at `ENGINE_COMMIT`, the newest verl-project/verl snapshot read. Every key of
the engine config at `LEGACY_COMMIT` is still there with the same default, except those listed in
`ENGINE_DEFAULTS_AT_LEGACY_COMMIT` (keys no translation reads), so a command line written for either commit
is read with one table.

`IGNORED` lists keys that have no meaning in lit_sft (a warning when set to anything but the default),
`UNSUPPORTED` keys whose non-default values lit_sft cannot honour (an error saying why).
"""

from __future__ import annotations

import copy
from typing import Any

#: The verl commit `LEGACY_DEFAULTS` was read from (volcengine/verl, 2026-01-29).
LEGACY_COMMIT = "b178a3cd56f58b2d502255daba591e92833930a7"
#: The verl commit `ENGINE_DEFAULTS` was read from (verl-project/verl main, 2026-08-22).
ENGINE_COMMIT = "1dda039b9c6311889a9c9a26040677e1254814f9"

#: verl/trainer/config/sft_trainer.yaml (legacy fsdp_sft_trainer), verl commit `LEGACY_COMMIT`.
LEGACY_DEFAULTS: dict[str, Any] = {
    "data": {
        "train_batch_size": 256,
        "micro_batch_size": None,
        "micro_batch_size_per_gpu": 4,
        "train_files": "~/data/gsm8k/train.parquet",
        "val_files": "~/data/gsm8k/test.parquet",
        "train_max_samples": -1,
        "val_max_samples": -1,
        "prompt_key": "question",
        "response_key": "answer",
        "prompt_dict_keys": None,
        "response_dict_keys": None,
        "multiturn": {
            "enable": False,
            "messages_key": "messages",
            "tools_key": "tools",
            "enable_thinking_key": "enable_thinking",
        },
        "max_length": 1024,
        "truncation": "error",
        "balance_dp_token": False,
        "chat_template": None,
        "custom_cls": {"path": None, "name": None},
        "use_shm": False,
        "apply_chat_template_kwargs": {},
    },
    "model": {
        "partial_pretrain": "~/models/gemma-1.1-7b-it",
        "use_shm": False,
        "fsdp_config": {
            "model_dtype": "fp32",
            "wrap_policy": {"min_num_params": 0},
            "cpu_offload": False,
            "offload_params": False,
        },
        "external_lib": None,
        "enable_gradient_checkpointing": True,
        "trust_remote_code": False,
        "lora_rank": 0,
        "lora_alpha": 16,
        "target_modules": "all-linear",
        "use_liger": False,
        "strategy": "fsdp2",
    },
    "optim": {
        "lr": 1e-5,
        "betas": [0.9, 0.95],
        "weight_decay": 0.01,
        "lr_warmup_steps_ratio": 0.1,
        "clip_grad": 1.0,
        "lr_scheduler": "cosine",
    },
    "ulysses_sequence_parallel_size": 1,
    "use_remove_padding": False,
    "trainer": {
        "default_local_dir": "checkpoints/${trainer.project_name}/${trainer.experiment_name}",
        "default_hdfs_dir": None,
        "project_name": "gsm8k-sft",
        "experiment_name": "test",
        "total_epochs": 4,
        "total_training_steps": None,
        "logger": ["console", "wandb"],
        "seed": 1,
        "save_freq": -1,
        "test_freq": -1,
        "nnodes": 1,
        "n_gpus_per_node": 8,
        "max_ckpt_to_keep": None,
        "resume_mode": "auto",
        "resume_from_path": None,
        "checkpoint": {
            "save_contents": ["model", "optimizer", "extra"],
            "load_contents": "${trainer.checkpoint.save_contents}",
        },
        "device": "cuda",
    },
}

#: Old spellings of legacy keys (verl releases before the rename) -> today's key.
LEGACY_ALIASES = {
    "optim.warmup_steps_ratio": "optim.lr_warmup_steps_ratio",
    "trainer.resume_path": "trainer.resume_from_path",
}

#: verl/trainer/config/sft_trainer_engine.yaml + model/hf_model.yaml + engine/fsdp.yaml + optim/fsdp.yaml
#: + profiler/profiler.yaml (engine-based sft_trainer), verl commit `ENGINE_COMMIT`. ``_target_`` keys left out.
#: The keys every optim group of the engine trainer shares (verl's base ``OptimizerConfig``), commit
#: `ENGINE_COMMIT`; each group sets its own ``lr``.
OPTIM_BASE: dict[str, Any] = {
    "lr_warmup_steps_ratio": 0.0,
    "total_training_steps": -1,
    "weight_decay": 0.01,
    "lr_warmup_steps": -1,
    "betas": [0.9, 0.999],
    "clip_grad": 1.0,
}
ENGINE_DEFAULTS: dict[str, Any] = {
    "model": {
        "path": "~/models/deepseek-llm-7b-chat",
        "hf_config_path": None,
        "tokenizer_path": None,
        "use_shm": False,
        "trust_remote_code": False,
        "custom_chat_template": None,
        "external_lib": None,
        "override_config": {},
        "enable_gradient_checkpointing": True,
        "enable_activation_offload": False,
        "use_remove_padding": True,
        "lora_rank": 0,
        "lora_alpha": 16,
        "target_modules": "all-linear",
        "exclude_modules": None,
        "lora_adapter_path": None,
        "use_liger": False,
        "use_fused_kernels": False,
        "fused_kernel_options": {"impl_backend": "torch"},
        "tiled_mlp": {"enabled": False, "num_shards": 4},
        "mtp": {
            "enable": False,
            "enable_train": False,
            "enable_rollout": False,
            "detach_encoder": False,
            "mtp_loss_scaling_factor": 0.1,
            "speculative_algorithm": "EAGLE",
            "speculative_num_steps": 3,
            "speculative_eagle_topk": 1,
            "speculative_num_draft_tokens": 4,
            "method": "mtp",
            "num_speculative_tokens": 1,
        },
        # Megatron-Bridge's LoRA (verl's FSDP engine reads model.lora_rank; lit_sft maps these too).
        "lora": {
            "type": "lora",
            "merge": False,
            "rank": 0,
            "alpha": 32,
            "dropout": 0.0,
            "target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
            "exclude_modules": [],
            "dropout_position": "pre",
            "lora_A_init_method": "xavier",
            "lora_B_init_method": "zero",
            "a2a_experimental": False,
            "dtype": None,
            "adapter_path": None,
            "freeze_vision_model": True,
            "freeze_vision_projection": True,
            "freeze_language_model": True,
        },
    },
    "engine": {
        "wrap_policy": {"min_num_params": 0},
        "param_offload": False,
        "optimizer_offload": False,
        "offload_policy": False,
        "reshard_after_forward": True,
        "fsdp_size": -1,
        "forward_prefetch": False,
        "model_dtype": "fp32",
        "use_orig_params": False,
        "seed": 42,
        "full_determinism": False,
        "ulysses_sequence_parallel_size": 1,
        "entropy_from_logits_with_chunking": False,
        "entropy_from_logits_chunk_size": 2048,
        "use_torch_compile": True,
        "entropy_checkpointing": False,
        "pad_to_length": False,
        "pad_to_length_bucket": 1024,
        "forward_only": False,
        "strategy": "fsdp",
        "dtype": "bfloat16",
        "qat": {
            "enable": False,
            "mode": "w4a16",
            "group_size": 16,
            "ignore_patterns": ["lm_head", "embed_tokens", "re:.*mlp.gate$"],
            "activation_observer": "static_minmax",
            "quantization_config_path": None,
        },
        "turbo_config": {
            "distributed": {
                "fully_shard_parallel_size": 16,
                "tensor_parallel_size": 1,
                "expert_parallel_size": 1,
                "expert_fully_shard_parallel_size": 1,
                "ulysses_parallel_size": 1,
                "fsdp_plan": {
                    "param_dtype": "bf16",
                    "reduce_dtype": "fp32",
                    "output_dtype": "bf16",
                    "fsdp_implementation": "native",
                    "num_to_forward_prefetch": 1,
                    "num_to_backward_prefetch": 1,
                },
            },
        },
    },
    "optim": {
        "optimizer": "AdamW",
        "optimizer_impl": "torch.optim",
        "lr": 1e-3,
        **OPTIM_BASE,
        "min_lr_ratio": 0.0,
        "num_cycles": 0.5,
        "lr_scheduler_type": "constant",
        "zero_indexed_step": True,
        "warmup_style": None,
        "override_optimizer_config": None,
    },
    "profiler": {
        "tool": "torch",
        "enable": False,
        "all_ranks": False,
        "ranks": [],
        "save_path": "outputs/profile",
        "relocate_results": False,
        "finish_hook_cmd": None,
        "finish_hook_all_ranks": False,
        "finish_hook_ranks": [],
        "tool_config": {
            "npu": {
                "contents": [],
                "level": "level0",
                "analysis": True,
                "discrete": False,
                "profile_token_start": None,
                "profile_token_end": None,
                "name": "npu",
            },
            "nsys": {
                "discrete": "${oc.select:global_profiler.global_tool_config.nsys.discrete}",
                "name": "nsight",
            },
            "torch": {
                "contents": [],
                "discrete": False,
                "profile_token_start": None,
                "profile_token_end": None,
                "schedule": {"skip_first": 0, "wait": 0, "warmup": 0, "active": 0, "repeat": 0},
                "name": "torch",
            },
            "torch_memory": {
                "trace_alloc_max_entries": (
                    "${oc.select:global_profiler.global_tool_config.torch_memory.trace_alloc_max_entries,100000}"
                ),
                "stack_depth": "${oc.select:global_profiler.global_tool_config.torch_memory.stack_depth,32}",
                "name": "torch_memory",
            },
            "precision_debugger": {
                "config_path": "${oc.select:global_profiler.global_tool_config.precision_debugger.config_path,null}",
                "steps": None,
                "stages": "${oc.select:global_profiler.global_tool_config.precision_debugger.stages,null}",
                "name": "precision_debugger",
            },
        },
    },
    "data": {
        "train_batch_size": 256,
        "micro_batch_size_per_gpu": 4,
        "max_token_len_per_gpu": 8192,
        "use_dynamic_bsz": True,
        "train_files": "~/data/gsm8k/train.parquet",
        "val_files": None,
        "train_max_samples": -1,
        "val_max_samples": -1,
        "messages_key": "messages",
        "tools_key": "tools",
        "enable_thinking_key": "enable_thinking",
        # The yaml's bare ``none`` is the string "none" (YAML's null is ``null``); MultiTurnSFTDataset then passes
        # bool("none") = True as enable_thinking when the rows have no enable_thinking column.
        "enable_thinking_default": "none",
        "pad_mode": "no_padding",
        "max_length": 1024,
        "truncation": "error",
        "balance_dp_token": False,
        "custom_cls": {"path": None, "name": None},
        "use_shm": False,
        "apply_chat_template_kwargs": {},
        "num_workers": 8,
        "ignore_input_ids_mismatch": False,
    },
    "checkpoint": {
        "save_contents": ["model", "optimizer", "extra"],
        "load_contents": "${checkpoint.save_contents}",
    },
    "trainer": {
        "default_local_dir": "checkpoints/${trainer.project_name}/${trainer.experiment_name}",
        "default_hdfs_dir": None,
        "project_name": "gsm8k-sft",
        "experiment_name": "test",
        "total_epochs": 4,
        "total_training_steps": None,
        "logger": ["console", "wandb"],
        "seed": 1,
        "save_freq": -1,
        "test_freq": -1,
        "max_ckpt_to_keep": None,
        "balance_batch": True,
        "resume_mode": "auto",
        "resume_from_path": None,
        "device": "cuda",
        "nnodes": 1,
        "n_gpus_per_node": 1,
        "profile_interval": [-1, -1],
    },
}

#: The engine defaults `LEGACY_COMMIT` had where `ENGINE_COMMIT` differs (keys then absent are not listed:
#: the newer ones above; ``profiler.tool_config``'s profile_token_*, torch.schedule and precision_debugger).
ENGINE_DEFAULTS_AT_LEGACY_COMMIT: dict[str, Any] = {
    "model.mtp.speculative_num_steps": 2,
    "model.mtp.speculative_eagle_topk": 2,
}

#: verl/trainer/config/engine/megatron.yaml (``engine=megatron``: Megatron-LM through Megatron-Bridge), verl
#: commit `ENGINE_COMMIT`. lit_sft runs it on FSDP: see `FOREIGN_LAYOUT` and `lit_sft.verl.translate`.
MEGATRON_ENGINE_DEFAULTS: dict[str, Any] = {
    "param_offload": False,
    "grad_offload": False,
    "optimizer_offload": False,
    "tensor_model_parallel_size": 1,
    "expert_model_parallel_size": 1,
    "expert_tensor_parallel_size": None,
    "pipeline_model_parallel_size": 1,
    "virtual_pipeline_model_parallel_size": None,
    "context_parallel_size": 1,
    "sequence_parallel": True,
    "use_distributed_optimizer": True,
    "use_dist_checkpointing": False,
    "dist_checkpointing_path": None,
    "dynamic_context_parallel": False,
    "max_seqlen_per_dp_cp_rank": None,
    "dist_checkpointing_prefix": "",
    "dist_ckpt_optim_fully_reshardable": False,
    "distrib_optim_fully_reshardable_mem_efficient": False,
    "entropy_from_logits_with_chunking": False,
    "entropy_from_logits_chunk_size": 2048,
    "seed": 42,
    "override_ddp_config": {},
    "override_transformer_config": {
        "recompute_granularity": None,
        "recompute_modules": ["core_attn"],
        "recompute_method": None,
        "recompute_num_layers": None,
        "attention_backend": "flash",
    },
    "override_mcore_model_config": {},
    "use_mbridge": True,
    "vanilla_mbridge": False,
    "use_remove_padding": True,
    "pad_bshd_to_minibatch_max": True,
    "pad_to_length": False,
    "pad_to_length_bucket": 512,
    "use_megatron_fsdp": False,
    "forward_only": False,
    "dtype": "bfloat16",
    "router_replay": {"mode": "disabled", "record_file": None, "replay_file": None},
    "qat": {
        "enable": False,
        "mode": "w4a16",
        "group_size": 16,
        "ignore_patterns": ["lm_head", "*mlp.gate"],
        "activation_observer": None,
        "quantization_config_path": None,
    },
}

#: verl/trainer/config/optim/megatron.yaml (``optim=megatron``), verl commit `ENGINE_COMMIT`. verl builds
#: Megatron's optimizer from lr, min_lr, clip_grad and weight_decay only (``init_megatron_optim_config`` in
#: verl/utils/megatron/optimizer.py: ``betas`` is not passed, so Megatron's Adam keeps 0.9/0.999) and Megatron's
#: OptimizerParamScheduler from the lr_* keys (``get_megatron_optimizer_param_scheduler``).
MEGATRON_OPTIM_DEFAULTS: dict[str, Any] = {
    "lr": 1e-3,
    **OPTIM_BASE,
    "optimizer": "adam",
    "lr_warmup_init": 0.0,
    "lr_decay_steps": None,
    "lr_decay_style": "constant",
    "min_lr": 0.0,
    "weight_decay_incr_style": "constant",
    "lr_wsd_decay_style": "exponential",
    "lr_wsd_decay_steps": None,
    "use_checkpoint_opt_param_scheduler": False,
    "use_precision_aware_optimizer": False,
    "main_grads_dtype": "fp32",
    "exp_avg_dtype": "fp32",
    "exp_avg_sq_dtype": "fp32",
    "use_layer_wise_distributed_optimizer": False,
    "muon_momentum": 0.95,
    "muon_nesterov": False,
    "muon_split_qkv": True,
    "muon_scale_mode": "spectral",
    "muon_coefficient_type": "quintic",
    "muon_num_ns_steps": 5,
    "muon_tp_mode": "blockwise",
    "muon_fp32_matmul_prec": "medium",
    "muon_extra_scale_factor": 1.0,
    "muon_scalar_optimizer": "adam",
    "muon_match_adamw_update_rms": False,
    "override_optimizer_config": {},
}

#: verl/trainer/config/engine/automodel.yaml (``engine=automodel``: NVIDIA NeMo Automodel), verl commit
#: `ENGINE_COMMIT`.
AUTOMODEL_ENGINE_DEFAULTS: dict[str, Any] = {
    "strategy": "automodel",
    "distributed_strategy": "fsdp2",
    "tp_size": 1,
    "pp_size": 1,
    "cp_size": 1,
    "ep_size": 1,
    "dp_replicate_size": 1,
    "sequence_parallel": False,
    "defer_fsdp_grad_sync": True,
    "param_offload": False,
    "optimizer_offload": False,
    "activation_checkpointing": False,
    "enable_fp8": False,
    "enable_compile": False,
    "model_dtype": "fp32",
    "attn_implementation": "flash_attention_2",
    "backend_config": {
        "attn": "sdpa",
        "linear": "te",
        "rms_norm": "torch_fp32",
        "rope_fusion": True,
        "dispatcher": "torch",
        "experts": "gmm",
        "gate_precision": None,
        "enable_hf_state_dict_adapter": True,
        "enable_fsdp_optimizations": False,
        "fake_balanced_gate": False,
        "fake_gate_noise": 0.0,
    },
    "moe_config": {
        "ignore_router_for_ac": False,
        "reshard_after_forward": False,
        "lm_head_precision": None,
        "wrap_outer_model": True,
    },
    "mp_param_dtype": "bf16",
    "mp_reduce_dtype": "fp32",
    "mp_output_dtype": "bf16",
    "seed": 42,
    "full_determinism": False,
    "forward_only": False,
    "use_torch_compile": False,
    "entropy_from_logits_with_chunking": False,
    "entropy_from_logits_chunk_size": 2048,
    "entropy_checkpointing": False,
}

#: verl/trainer/config/optim/automodel.yaml (``optim=automodel``), verl commit `ENGINE_COMMIT`. verl builds the
#: optimizer from optimizer_impl.optimizer with lr, weight_decay, eps, betas (+ the precision keys) and
#: Automodel's OptimizerParamScheduler (Megatron's formula) with init_lr = lr x init_lr_ratio, min_lr = lr x
#: min_lr_ratio, decay over all steps (``_build_lr_scheduler`` in verl/workers/engine/automodel/transformer_impl.py).
AUTOMODEL_OPTIM_DEFAULTS: dict[str, Any] = {
    "optimizer": "AdamW",
    "optimizer_impl": "torch.optim",
    "lr": 1e-5,
    **OPTIM_BASE,
    "init_lr_ratio": 0.1,
    "min_lr_ratio": 0.01,
    "lr_scheduler_type": "cosine",
    "wd_incr_style": "constant",
    "num_cycles": 0.5,
    "zero_indexed_step": True,
    "eps": 1e-8,
    "master_weights": False,
    "store_param_remainders": False,
    "exp_avg_dtype": None,
    "exp_avg_sq_dtype": None,
    "master_weight_dtype": None,
    "override_optimizer_config": {},
}

#: Config groups of the engine trainer (``engine=fsdp`` on the command line selects a group's file) and the
#: defaults of each choice. ``engine``/``optim`` ``megatron`` and ``automodel`` run on lit_sft's FSDP path.
ENGINE_GROUPS = {"model": ("hf_model",), "engine": ("fsdp", "megatron", "automodel"),
                 "optim": ("fsdp", "megatron", "automodel"), "profiler": ("profiler",)}  # fmt: skip
GROUP_DEFAULTS: dict[tuple[str, str], dict[str, Any]] = {
    ("engine", "megatron"): MEGATRON_ENGINE_DEFAULTS,
    ("optim", "megatron"): MEGATRON_OPTIM_DEFAULTS,
    ("engine", "automodel"): AUTOMODEL_ENGINE_DEFAULTS,
    ("optim", "automodel"): AUTOMODEL_OPTIM_DEFAULTS,
}
#: Group choices that only a verl plugin package provides (its ``hydra.searchpath``): verl alone refuses them.
PLUGIN_GROUPS = {("engine", "mlite"): "verl_mlite", ("optim", "mlite"): "verl_mlite"}

#: Keys of the Megatron/Automodel groups whose non-default values describe the parallel layout lit_sft replaces
#: with FSDP over all ranks: one warning lists them (`lit_sft.verl.translate`). Context parallelism becomes
#: lit_sft's sequence parallelism (each rank holds a slice of every sequence, the loss unchanged).
FOREIGN_LAYOUT = (
    "engine.tensor_model_parallel_size", "engine.expert_model_parallel_size",
    "engine.expert_tensor_parallel_size", "engine.pipeline_model_parallel_size",
    "engine.virtual_pipeline_model_parallel_size", "engine.context_parallel_size", "engine.sequence_parallel",
    "engine.use_distributed_optimizer", "engine.dynamic_context_parallel", "engine.max_seqlen_per_dp_cp_rank",
    "engine.override_ddp_config", "engine.override_transformer_config", "engine.override_mcore_model_config",
    "engine.use_mbridge", "engine.vanilla_mbridge", "engine.use_megatron_fsdp", "engine.grad_offload",
    "engine.distributed_strategy", "engine.tp_size", "engine.pp_size", "engine.cp_size", "engine.ep_size",
    "engine.dp_replicate_size", "engine.defer_fsdp_grad_sync", "engine.moe_config",
    "engine.mp_param_dtype", "engine.mp_reduce_dtype", "engine.mp_output_dtype",
)  # fmt: skip

#: Keys of the Megatron/Automodel groups `lit_sft.verl.translate` reads (optimizer, schedule, offload, dtype).
FOREIGN_TRANSLATED = (
    "optim.lr", "optim.weight_decay", "optim.clip_grad", "optim.betas", "optim.lr_warmup_steps",
    "optim.lr_warmup_steps_ratio", "optim.lr_warmup_init", "optim.lr_decay_steps", "optim.lr_decay_style",
    "optim.min_lr", "optim.init_lr_ratio", "optim.min_lr_ratio", "optim.lr_scheduler_type", "optim.eps",
    "optim.optimizer", "optim.optimizer_impl", "optim.override_optimizer_config", "engine.param_offload",
    "engine.dtype", "engine.model_dtype", "engine.strategy", "engine.activation_checkpointing",
    "engine.override_transformer_config.recompute_granularity", "engine.override_transformer_config.recompute_method",
    "engine.override_transformer_config.recompute_num_layers", "engine.override_transformer_config.recompute_modules",
)  # fmt: skip

#: Keys of the Megatron/Automodel groups with no meaning on lit_sft's FSDP path: a warning with the reason.
FOREIGN_IGNORED: dict[str, str] = {
    "engine.use_dist_checkpointing": "lit_sft saves its own checkpoints and an HF model",
    "engine.dist_checkpointing_prefix": "lit_sft saves its own checkpoints and an HF model",
    "engine.dist_ckpt_optim_fully_reshardable": "lit_sft saves its own checkpoints and an HF model",
    "engine.distrib_optim_fully_reshardable_mem_efficient": "lit_sft saves its own checkpoints and an HF model",
    "engine.use_remove_padding": "packing follows data.pad_mode / model.use_remove_padding; the loss is the same",
    "engine.pad_bshd_to_minibatch_max": "a padding-shape knob; the loss is the same",
    "engine.forward_only": "RL only (reference and inference workers)",
    "engine.router_replay": "RL only (MoE routing replay)",
    "engine.enable_compile": "lit_sft does not torch.compile the model",
    "engine.attn_implementation": "lit_sft attends with SDPA (model.attn_implementation in a native config)",
    "engine.backend_config": "NVIDIA Automodel's kernel choices; lit_sft runs the transformers model's own modules",
    "engine.override_transformer_config.attention_backend": "lit_sft attends with SDPA (model.attn_implementation "
    "in a native config)",
    "optim.weight_decay_incr_style": "verl passes start_wd = end_wd = weight_decay, so weight decay is constant",
    "optim.wd_incr_style": "verl passes start_wd = end_wd = weight_decay, so weight decay is constant",
    "optim.lr_wsd_decay_style": "read only with lr_decay_style=WSD",
    "optim.lr_wsd_decay_steps": "read only with lr_decay_style=WSD",
    "optim.use_checkpoint_opt_param_scheduler": "lit_sft's resume restores the scheduler state",
    "optim.use_precision_aware_optimizer": "lit_sft keeps AdamW's states in the parameters' dtype",
    "optim.main_grads_dtype": "lit_sft keeps gradients in the parameters' dtype",
    "optim.exp_avg_dtype": "lit_sft keeps AdamW's states in the parameters' dtype",
    "optim.exp_avg_sq_dtype": "lit_sft keeps AdamW's states in the parameters' dtype",
    "optim.master_weight_dtype": "lit_sft keeps AdamW's states in the parameters' dtype",
    "optim.master_weights": "lit_sft's precision setting decides the weights' dtype",
    "optim.store_param_remainders": "lit_sft's precision setting decides the weights' dtype",
    "optim.use_layer_wise_distributed_optimizer": "Muon only (optim.optimizer=muon)",
    "optim.muon_momentum": "Muon only",
    "optim.muon_nesterov": "Muon only",
    "optim.muon_split_qkv": "Muon only",
    "optim.muon_scale_mode": "Muon only",
    "optim.muon_coefficient_type": "Muon only",
    "optim.muon_num_ns_steps": "Muon only",
    "optim.muon_tp_mode": "Muon only",
    "optim.muon_fp32_matmul_prec": "Muon only",
    "optim.muon_extra_scale_factor": "Muon only",
    "optim.muon_scalar_optimizer": "Muon only",
    "optim.muon_match_adamw_update_rms": "Muon only",
    "optim.num_cycles": "unused by Megatron's and Automodel's scheduler",
    "optim.zero_indexed_step": "unused by Megatron's and Automodel's scheduler",
}

#: Keys of the Megatron/Automodel groups lit_sft cannot honour when they differ from the default.
FOREIGN_UNSUPPORTED: dict[str, str] = {
    "engine.dist_checkpointing_path": "loading the model from a Megatron dist checkpoint is not available: "
    "convert it to an HF model and set model.path",
    "engine.enable_fp8": "FP8 training is not available",
    "engine.backend_config.fake_balanced_gate": "a fake MoE gate changes the routing; lit_sft runs the model's own",
    "engine.backend_config.fake_gate_noise": "a fake MoE gate changes the routing; lit_sft runs the model's own",
}

#: Keys only the legacy trainer has, and keys only the engine trainer has: they tell the two apart.
LEGACY_MARKERS = (
    "model.partial_pretrain", "model.strategy", "model.fsdp_config", "ulysses_sequence_parallel_size",
    "use_remove_padding", "data.prompt_key", "data.response_key", "data.prompt_dict_keys",
    "data.response_dict_keys", "data.multiturn", "data.micro_batch_size", "data.chat_template",
    "optim.lr_scheduler", "optim.warmup_steps_ratio", "trainer.checkpoint", "trainer.resume_path",
)  # fmt: skip
ENGINE_MARKERS = (
    "model.path", "model.use_remove_padding", "model.tokenizer_path", "model.custom_chat_template",
    "model.override_config", "engine", "checkpoint", "profiler", "data.messages_key", "data.tools_key",
    "data.pad_mode", "data.use_dynamic_bsz", "data.max_token_len_per_gpu", "data.ignore_input_ids_mismatch",
    "trainer.profile_interval", "data.enable_thinking_default", "data.num_workers", "trainer.balance_batch",
)  # fmt: skip

#: Keys with no meaning in lit_sft: a warning (with the reason) when set to a non-default value.
IGNORED: dict[str, str] = {
    "data.use_shm": "lit_sft reads files in place (no shared-memory copy)",
    "model.use_shm": "lit_sft loads the model in place (no shared-memory copy)",
    "trainer.default_hdfs_dir": "lit_sft does not copy checkpoints to HDFS; copy trainer.default_local_dir yourself",
    "data.balance_dp_token": "lit_sft's loss is always the per-token mean over all ranks of the step",
    "data.micro_batch_size": "deprecated in verl's legacy config and never read by verl; "
    "data.micro_batch_size_per_gpu sets the micro-batch",
    "data.ignore_input_ids_mismatch": "lit_sft renders each conversation once, so there is no per-turn mismatch; "
    "where verl trains an assistant reply without the template's think block (Qwen3), lit_sft trains "
    "'<think>\\n\\n</think>\\n\\n' + content as the template renders it, and splits a conversation whose "
    "earlier replies the template rewrites into one row per such reply, so rows per step and steps per "
    "epoch are not verl's (see README, Coming from verl)",
    "engine.use_orig_params": "lit_sft's FSDP preset always uses original parameters",
    "engine.forward_prefetch": "an FSDP1 performance knob lit_sft's preset leaves at its default",
    "engine.use_torch_compile": "used by verl for the entropy computation of RL only",
    "engine.entropy_from_logits_with_chunking": "RL only",
    "engine.entropy_checkpointing": "RL only",
    "engine.seed": "lit_sft seeds everything with trainer.seed",
    "engine.optimizer_offload": "lit_sft offloads optimizer states together with parameters (engine.param_offload)",
    "model.fused_kernel_options.impl_backend": "fused kernels are not used (model.use_fused_kernels)",
    "model.tiled_mlp.num_shards": "TiledMLP is not used (model.tiled_mlp.enabled)",
    "optim.total_training_steps": "filled in from trainer.total_training_steps / total_epochs",
    "trainer.checkpoint.load_contents": "lit_sft checkpoints always hold model, optimizer and data position",
    "trainer.checkpoint.save_contents": "lit_sft checkpoints always hold model, optimizer and data position,"
    " plus an HF model in huggingface/",
    "checkpoint.load_contents": "lit_sft checkpoints always hold model, optimizer and data position",
    "checkpoint.save_contents": "lit_sft checkpoints always hold model, optimizer and data position,"
    " plus an HF model in huggingface/",
    "profiler": "use Lightning's profiler (trainer.profiler) in a native config",
    "trainer.balance_batch": "read only by verl's Ray SFT trainer (sft_trainer_ray); the loss is the same either way",
    "engine.entropy_from_logits_chunk_size": "RL only",
    "engine.pad_to_length": "lit_sft does not pad packed micro-batches to a fixed token count (a shape knob for "
    "compilers; the loss is the same)",
    "engine.pad_to_length_bucket": "lit_sft does not pad packed micro-batches (engine.pad_to_length)",
    "engine.qat": "quantization-aware training is not available (engine.qat.enable)",
    "engine.turbo_config": "read only by verl's fsdp_turbo engine, which lit_sft does not implement",
    "model.lora.merge": "merging adapters for RL weight sync; lit_sft's export writes the adapter and can merge it",
    "model.lora.dropout_position": "peft applies the adapter dropout to its input",
    "model.lora.lora_A_init_method": "peft initialises A Kaiming-uniform (lit_sft's lora.init_lora_weights)",
    "model.lora.lora_B_init_method": "peft initialises B to zero",
    "model.lora.a2a_experimental": "a Megatron expert-parallel option",
    "model.lora.dtype": "the adapters take the trained model's dtype",
    "model.lora.freeze_vision_model": "lit_sft's LoRA trains only the adapters of the target modules",
    "model.lora.freeze_vision_projection": "lit_sft's LoRA trains only the adapters of the target modules",
    "model.lora.freeze_language_model": "lit_sft's LoRA trains only the adapters of the target modules",
    "trainer.profile_interval": "use Lightning's profiler (trainer.profiler) in a native config",
}

#: Keys lit_sft cannot honour when they differ from the default: an error with the reason.
UNSUPPORTED: dict[str, str] = {
    "data.custom_cls.path": "custom verl dataset classes are verl code; use lit_sft's data formats or a "
    "SFTDataModule subclass in a native config",
    "data.custom_cls.name": "custom verl dataset classes are verl code (see data.custom_cls.path)",
    "data.multiturn.enable_thinking_key": "a per-row enable_thinking column is not supported; "
    "set data.apply_chat_template_kwargs={enable_thinking: ...} for all rows",
    "data.enable_thinking_key": "a per-row enable_thinking column is not supported; "
    "set data.apply_chat_template_kwargs={enable_thinking: ...} for all rows",
    "model.external_lib": "lit_sft does not import extra model libraries; register the model with "
    "transformers' Auto classes before calling lit_sft.commands.fit.main",
    "model.fsdp_config.wrap_policy.min_num_params": "lit_sft's FSDP presets wrap each decoder layer "
    "(strategy layer_classes), not by parameter count",
    "engine.wrap_policy.min_num_params": "lit_sft's FSDP presets wrap each decoder layer, not by parameter count",
    "engine.fsdp_size": "lit_sft shards over all data-parallel ranks (hybrid sharding: native FSDP preset)",
    "engine.full_determinism": "not available; lit_sft runs are seeded (trainer.seed) and resume exactly",
    "model.hf_config_path": "lit_sft reads the config from model.path",
    "model.enable_activation_offload": "activation offloading is not available; use gradient checkpointing",
    "model.exclude_modules": "LoRA exclude_modules is not available; list model.target_modules instead",
    "model.lora_adapter_path": "continuing from a LoRA adapter is not available; merge it into model.path first",
    "model.use_fused_kernels": "verl's fused kernels are not available; model.use_liger gives Liger's kernels",
    "model.tiled_mlp.enabled": "TiledMLP is not available; use gradient checkpointing",
    "optim.optimizer": "only AdamW from verl's options (a native config takes any optimizer)",
    "optim.optimizer_impl": "only torch.optim (a native config takes any optimizer class)",
    "optim.num_cycles": "lit_sft's cosine schedule is the half cycle (num_cycles 0.5)",
    "optim.override_optimizer_config": "extra optimizer arguments need a native config (model.optimizer)",
    "engine.qat.enable": "quantization-aware training is not available",
    "model.lora.exclude_modules": "LoRA exclude_modules is not available; list model.lora.target_modules instead",
    "model.lora.adapter_path": "continuing from a LoRA adapter is not available; merge it into model.path first",
}


def reason(table: dict[str, str], key: str) -> str | None:
    """The entry of `IGNORED` or `UNSUPPORTED` for a dotted key: its own, else its nearest listed parent's."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        found = table.get(".".join(parts[:end]))
        if found is not None:
            return found
    return None


#: Keys verl reads with ``config.get`` although no yaml lists them (added with ``+key=value``): their default.
EXTRA_KEYS: dict[str, Any] = {
    "data.shuffle": False,  # SFTDataset / MultiTurnSFTDataset: shuffle before train_max_samples
    "data.seed": None,  # the seed of that shuffle
    "model.lora_adapter_path": None,  # fsdp_sft_trainer.py reads it with .get
}


#: Mappings whose keys are the user's own (passed on to the chat template, the model config, Megatron's configs).
FREE_FORM = ("data.apply_chat_template_kwargs", "model.override_config", "optim.override_optimizer_config",
             "engine.override_transformer_config", "engine.override_ddp_config",
             "engine.override_mcore_model_config")  # fmt: skip


def foreign_policy(key: str) -> tuple[str, str] | None:
    """How lit_sft reads a key of the ``megatron``/``automodel`` engine or optim group: ``translated``,
    ``layout``, ``ignored`` or ``unsupported`` with the reason (the most specific listed key or parent wins), or
    None for a key these groups share with the FSDP ones (`IGNORED` and `UNSUPPORTED` decide)."""
    parts = key.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in FOREIGN_TRANSLATED:
            return "translated", ""
        if name in FOREIGN_LAYOUT:
            return "layout", ""
        if name in FOREIGN_IGNORED:
            return "ignored", FOREIGN_IGNORED[name]
        if name in FOREIGN_UNSUPPORTED:
            return "unsupported", FOREIGN_UNSUPPORTED[name]
    return None


def defaults(schema: str, groups: dict[str, str] | None = None) -> dict[str, Any]:
    """A fresh copy of the ``legacy`` or ``engine`` defaults, with the engine trainer's group choices.

    The legacy yaml starts with ``defaults: [optim: fsdp, _self_]``: its ``optim`` is ``optim/fsdp.yaml``
    overridden by its own ``optim`` section (the legacy trainer reads only the keys the yaml sets). A group
    choice (``engine=megatron``) replaces the whole section, as Hydra does.
    """
    if schema == "engine":
        tree = copy.deepcopy(ENGINE_DEFAULTS)
        for group, choice in (groups or {}).items():
            if (group, choice) in GROUP_DEFAULTS:
                tree[group] = copy.deepcopy(GROUP_DEFAULTS[group, choice])
        return tree
    tree = copy.deepcopy(LEGACY_DEFAULTS)
    tree["optim"] = {**copy.deepcopy(ENGINE_DEFAULTS["optim"]), **tree["optim"]}
    return tree


def dotted_keys(tree: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of a nested dict, dotted, leaves and inner nodes alike."""
    keys = []
    for key, value in tree.items():
        path = f"{prefix}{key}"
        keys.append(path)
        if isinstance(value, dict):
            keys += dotted_keys(value, path + ".")
    return keys
