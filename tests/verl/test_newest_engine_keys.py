"""Today's verl engine config (verl-project/verl 1dda039b9, read from its yaml files) beside b178a3cd5's: every
key it added is known with verl's default, and what has a meaning in lit_sft is translated."""

from __future__ import annotations

import pytest

from lit_sft.errors import ConfigError
from lit_sft.verl import schema
from lit_sft.verl.overrides import load
from lit_sft.verl.translate import Launch, translate

#: Keys the newest sft_trainer_engine.yaml (and the groups it composes) has and b178a3cd5's did not, with
#: verl's defaults as its yaml files write them (profiler.tool_config's interpolations resolved).
NEW_KEYS = {
    "data.enable_thinking_default": "none", "data.num_workers": 8, "trainer.balance_batch": True,
    "optim.zero_indexed_step": True, "engine.entropy_from_logits_chunk_size": 2048, "engine.pad_to_length": False,
    "engine.pad_to_length_bucket": 1024, "engine.qat.enable": False, "engine.qat.mode": "w4a16",
    "engine.qat.group_size": 16, "engine.qat.ignore_patterns": ["lm_head", "embed_tokens", "re:.*mlp.gate$"],
    "engine.qat.activation_observer": "static_minmax", "engine.qat.quantization_config_path": None,
    "engine.turbo_config.distributed.fully_shard_parallel_size": 16,
    "engine.turbo_config.distributed.tensor_parallel_size": 1,
    "engine.turbo_config.distributed.expert_parallel_size": 1,
    "engine.turbo_config.distributed.expert_fully_shard_parallel_size": 1,
    "engine.turbo_config.distributed.ulysses_parallel_size": 1,
    "engine.turbo_config.distributed.fsdp_plan.param_dtype": "bf16",
    "engine.turbo_config.distributed.fsdp_plan.reduce_dtype": "fp32",
    "engine.turbo_config.distributed.fsdp_plan.output_dtype": "bf16",
    "engine.turbo_config.distributed.fsdp_plan.fsdp_implementation": "native",
    "engine.turbo_config.distributed.fsdp_plan.num_to_forward_prefetch": 1,
    "engine.turbo_config.distributed.fsdp_plan.num_to_backward_prefetch": 1,
    "model.lora.type": "lora", "model.lora.merge": False, "model.lora.rank": 0, "model.lora.alpha": 32,
    "model.lora.dropout": 0.0, "model.lora.target_modules": ["linear_qkv", "linear_proj", "linear_fc1", "linear_fc2"],
    "model.lora.exclude_modules": [], "model.lora.dropout_position": "pre", "model.lora.lora_A_init_method": "xavier",
    "model.lora.lora_B_init_method": "zero", "model.lora.a2a_experimental": False, "model.lora.dtype": None,
    "model.lora.adapter_path": None, "model.lora.freeze_vision_model": True,
    "model.lora.freeze_vision_projection": True, "model.lora.freeze_language_model": True,
    "profiler.relocate_results": False, "profiler.finish_hook_cmd": None, "profiler.finish_hook_all_ranks": False,
    "profiler.finish_hook_ranks": [],
    "profiler.tool_config.npu.contents": [], "profiler.tool_config.npu.level": "level0",
    "profiler.tool_config.npu.analysis": True, "profiler.tool_config.npu.discrete": False,
    "profiler.tool_config.npu.profile_token_start": None, "profiler.tool_config.npu.profile_token_end": None,
    "profiler.tool_config.npu.name": "npu", "profiler.tool_config.nsys.discrete": None,
    "profiler.tool_config.nsys.name": "nsight", "profiler.tool_config.torch.contents": [],
    "profiler.tool_config.torch.discrete": False, "profiler.tool_config.torch.profile_token_start": None,
    "profiler.tool_config.torch.profile_token_end": None, "profiler.tool_config.torch.schedule.skip_first": 0,
    "profiler.tool_config.torch.schedule.wait": 0, "profiler.tool_config.torch.schedule.warmup": 0,
    "profiler.tool_config.torch.schedule.active": 0, "profiler.tool_config.torch.schedule.repeat": 0,
    "profiler.tool_config.torch.name": "torch", "profiler.tool_config.torch_memory.trace_alloc_max_entries": 100000,
    "profiler.tool_config.torch_memory.stack_depth": 32, "profiler.tool_config.torch_memory.name": "torch_memory",
    "profiler.tool_config.precision_debugger.config_path": None,
    "profiler.tool_config.precision_debugger.steps": None,
    "profiler.tool_config.precision_debugger.stages": None,
    "profiler.tool_config.precision_debugger.name": "precision_debugger",
}  # fmt: skip

#: A non-default value for each new key that lit_sft accepts (the rest are refused: see below).
CHANGED = {
    "data.enable_thinking_default": "false", "data.num_workers": "2", "trainer.balance_batch": "false",
    "optim.zero_indexed_step": "false", "engine.entropy_from_logits_chunk_size": "1024",
    "engine.pad_to_length": "true", "engine.pad_to_length_bucket": "512", "engine.qat.mode": "w8a8",
    "engine.qat.group_size": "32", "engine.qat.ignore_patterns": "[lm_head]",
    "engine.qat.activation_observer": "minmax", "engine.qat.quantization_config_path": "/q.json",
    "engine.turbo_config.distributed.fully_shard_parallel_size": "8",
    "engine.turbo_config.distributed.fsdp_plan.fsdp_implementation": "turbo",
    "model.lora.type": "dora", "model.lora.merge": "true", "model.lora.rank": "8", "model.lora.alpha": "16",
    "model.lora.dropout": "0.05", "model.lora.target_modules": "[linear_qkv]", "model.lora.dropout_position": "post",
    "model.lora.lora_A_init_method": "kaiming", "model.lora.lora_B_init_method": "normal",
    "model.lora.a2a_experimental": "true", "model.lora.dtype": "bf16", "model.lora.freeze_vision_model": "false",
    "model.lora.freeze_vision_projection": "false", "model.lora.freeze_language_model": "false",
    "profiler.relocate_results": "true", "profiler.finish_hook_cmd": "'echo done'",
    "profiler.finish_hook_all_ranks": "true", "profiler.finish_hook_ranks": "[0]",
    "profiler.tool_config.npu.level": "level1", "profiler.tool_config.torch.schedule.active": "2",
    "profiler.tool_config.torch_memory.stack_depth": "16", "profiler.tool_config.precision_debugger.steps": "[1]",
}  # fmt: skip


def test_every_key_of_todays_engine_config_is_known_with_verls_default() -> None:
    config = load(["model.path=/m"])
    assert config.schema == "engine"
    for key, default in NEW_KEYS.items():
        assert config.get(key, "<missing>") == default, key
    assert set(NEW_KEYS) <= set(schema.dotted_keys(schema.defaults("engine")))
    assert schema.ENGINE_COMMIT.startswith("1dda039b9") and schema.LEGACY_COMMIT.startswith("b178a3cd5")


def test_the_new_keys_select_the_engine_trainer() -> None:
    for key in ("data.enable_thinking_default", "data.num_workers", "trainer.balance_batch"):
        assert load([f"{key}=1"]).schema == "engine"


@pytest.mark.parametrize("key", sorted(CHANGED))
def test_a_command_line_with_each_new_key_is_accepted_and_translated(key: str) -> None:
    words = ["model.path=/m", "data.train_files=/d/t.parquet", f"{key}={CHANGED[key]}"]
    translation = translate(load(words), Launch())
    quiet = ("data.enable_thinking_default", "data.num_workers", "model.lora.rank", "model.lora.alpha",
             "model.lora.dropout", "model.lora.target_modules", "model.lora.type")  # fmt: skip
    if key not in quiet:  # no meaning in lit_sft: one warning line naming the key
        assert [w for w in translation.warnings if key in w and "\n" not in w], translation.warnings


def test_model_lora_rank_gives_a_lora_run_with_verls_megatron_lora_settings(tmp_path, tiny_model_dir) -> None:
    from lit_sft.commands.fit import main
    from lit_sft.commands.verl import build, lightning_yaml

    words = [f"model.path={tiny_model_dir}", "data.train_files=/d/t.parquet", "trainer.logger=['console']",
             f"trainer.default_local_dir={tmp_path}", "data.train_batch_size=8", "model.lora.rank=8",
             "model.lora.dropout=0.1", "model.lora.target_modules=[linear_qkv,linear_fc2]",
             "data.enable_thinking_default=false", "data.num_workers=1"]  # fmt: skip
    path = tmp_path / "native.yaml"
    path.write_text(lightning_yaml(build(words, Launch())))
    cli = main(["--config", str(path)], run=False)
    lora = cli.model.lora
    assert (lora.r, lora.alpha, lora.dropout, lora.use_dora) == (8, 32, 0.1, False)  # model.lora's defaults
    assert lora.target_modules == ["q_proj", "k_proj", "v_proj", "down_proj"]  # Megatron names, as HF modules
    # the data module renders with enable_thinking=False and loads with verl's worker count
    assert cli.datamodule.template_kwargs == {"enable_thinking": False} and cli.datamodule.num_workers == 1
    dora = translate(load([*words[:2], "model.lora.rank=4", "model.lora.type=dora"]), Launch())
    assert dora.config["model"]["init_args"]["lora"]["use_dora"] is True


def test_lora_rank_and_model_lora_rank_are_not_both_set() -> None:
    with pytest.raises(ConfigError, match="both set"):
        translate(load(["model.path=/m", "model.lora_rank=8", "model.lora.rank=16"]), Launch())
    # verl's FSDP engine reads model.lora_rank: it wins untouched, without the model.lora warning
    translation = translate(load(["model.path=/m", "model.lora_rank=8"]), Launch())
    assert translation.config["model"]["init_args"]["lora"] == {
        "r": 8,
        "alpha": 16,
        "target_modules": "all-linear",
    }


@pytest.mark.parametrize(
    ("word", "reason"),
    [("model.lora.exclude_modules=[linear_proj]", "exclude_modules"), ("model.lora.adapter_path=/a", "adapter"),
     ("engine.qat.enable=true", "quantization-aware"), ("model.lora.type=canonical", "lora.type")],
)  # fmt: skip
def test_new_keys_lit_sft_cannot_honour_are_refused(word: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        translate(load(["model.path=/m", "model.lora.rank=4", word]), Launch())


@pytest.mark.parametrize(
    ("value", "expected"), [("false", False), ("true", True), ("none", None), ("null", None)]
)
def test_enable_thinking_default_reaches_the_template_kwargs(value: str, expected: bool | None) -> None:
    words = ["model.path=/m", "data.apply_chat_template_kwargs={enable_thinking: true, x: 1}"]
    kwargs = translate(load([*words, f"data.enable_thinking_default={value}"]), Launch()).config["data"]
    kwargs = kwargs["init_args"]["template_kwargs"]
    # verl's MultiTurnSFTDataset: a default other than none replaces apply_chat_template_kwargs' enable_thinking
    assert kwargs == {"enable_thinking": True if expected is None else expected, "x": 1}


def test_num_workers_sets_the_dataloader_workers_only_when_given() -> None:
    given = translate(load(["model.path=/m", "data.num_workers=3"]), Launch()).config["data"]["init_args"]
    assert given["num_workers"] == 3
    assert "num_workers" not in translate(load(["model.path=/m"]), Launch()).config["data"]["init_args"]


def test_a_cosine_schedule_counted_from_step_one_is_refused() -> None:
    with pytest.raises(ConfigError, match="zero_indexed_step"):
        translate(
            load(["model.path=/m", "optim.lr_scheduler_type=cosine", "optim.zero_indexed_step=false"]),
            Launch(),
        )
