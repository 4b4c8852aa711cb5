"""verl's Hydra command line: values, keys, config files, and the two trainers' key sets."""

from __future__ import annotations

import pytest
import yaml

from lit_sft.errors import ConfigError
from lit_sft.verl import schema
from lit_sft.verl.overrides import load, parse_value, read_config_file, split_command_line


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("5e-6", 5e-6), ("1e-4", 1e-4), ("128", 128), ("-1", -1), ("0.1", 0.1), ("true", True),
        ("False", False), ("null", None), ("['question']", ["question"]), ("[console,wandb]", ["console", "wandb"]),
        ("all-linear", "all-linear"), ("~/data/x.parquet", "~/data/x.parquet"), ("fsdp", "fsdp"),
        ("{enable_thinking: false}", {"enable_thinking": False}), ("'1e-4'", "1e-4"),
    ],
)  # fmt: skip
def test_override_values_parse_as_hydra_reads_them(text: str, value: object) -> None:
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_overrides_apply_on_top_of_verls_legacy_defaults() -> None:
    config = load(["data.train_batch_size=128", "optim.lr=5e-6", "+data.response_dict_keys=['answer']"])
    assert config.schema == "legacy"
    assert config.get("data.train_batch_size") == 128 and config.get("optim.lr") == 5e-6
    assert config.get("data.response_dict_keys") == ["answer"]
    # untouched keys keep verl's defaults (verl/trainer/config/sft_trainer.yaml), interpolations resolved
    assert config.get("data.micro_batch_size_per_gpu") == 4 and config.get("optim.betas") == [0.9, 0.95]
    assert config.get("trainer.default_local_dir") == "checkpoints/gsm8k-sft/test"


def test_engine_keys_select_the_engine_trainers_defaults() -> None:
    config = load(["model.path=/m", "engine=fsdp", "engine.ulysses_sequence_parallel_size=2"])
    assert config.schema == "engine"
    assert config.get("engine.ulysses_sequence_parallel_size") == 2
    assert config.get("optim.lr") == 1e-3 and config.get("optim.lr_scheduler_type") == "constant"
    assert config.get("model.use_remove_padding") is True and config.get("data.use_dynamic_bsz") is True


def test_legacy_and_engine_keys_do_not_mix() -> None:
    with pytest.raises(ConfigError, match="mixed"):
        load(["model.partial_pretrain=/m", "model.path=/m"])


def test_a_misspelt_key_is_rejected_with_the_closest_valid_one() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown verl SFT trainer key 'data.train_batch_sise'.*'data.train_batch_size'"
    ):
        load(["data.train_batch_sise=8"])
    with pytest.raises(ConfigError, match=r"'trainer.total_epochs'"):
        load(["trainer.total_epoch=1"])
    with pytest.raises(ConfigError, match="unknown verl SFT trainer key 'nonsense'"):
        load(["nonsense=1"])
    with pytest.raises(ConfigError, match="appended with"):
        load(["+data.not_a_key=1"])


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ("data.custom_cls.path=my.py", "custom verl dataset classes"),
        ("model.external_lib=my_lib", "extra model libraries"),
        ("model.fsdp_config.wrap_policy.min_num_params=1000", "decoder layer"),
        ("+model.lora_adapter_path=/a", "merge it"),
        ("data.multiturn.enable_thinking_key=think", "per-row enable_thinking"),
    ],
)
def test_keys_lit_sft_cannot_honour_are_errors_naming_them(override: str, reason: str) -> None:
    key = override.lstrip("+").split("=")[0]
    with pytest.raises(ConfigError, match=rf"verl key {key}=.*not supported.*{reason}"):
        load([override])


def test_keys_without_meaning_here_are_warnings() -> None:
    config = load(["trainer.default_hdfs_dir=hdfs://x", "data.use_shm=true", "model.use_shm=true"])
    assert len(config.warnings) == 3 and any("HDFS" in warning for warning in config.warnings)
    assert not load([]).warnings  # verl's defaults alone warn about nothing


def test_deleting_a_key_with_tilde() -> None:
    assert load(["~data.val_files"]).get("data.val_files") is None
    with pytest.raises(ConfigError, match="key to delete"):
        load(["~data.val_file"])


def test_old_verl_spellings_are_understood() -> None:
    config = load(["optim.warmup_steps_ratio=0.05", "trainer.resume_path=null"])
    assert config.get("optim.lr_warmup_steps_ratio") == 0.05


def test_a_verl_sft_trainer_yaml_is_read_with_config_path_and_name(tmp_path) -> None:
    # The shape of a recipe's sft_trainer.yaml (graph-r1's run_sft.sh): a copy of verl's legacy yaml.
    recipe = {
        "defaults": ["optim: fsdp", "_self_"],
        "data": {"train_batch_size": 64, "micro_batch_size_per_gpu": 2, "max_length": 2048, "truncation": "left",
                 "multiturn": {"enable": True, "messages_key": "messages", "tools_key": "tools"}},
        "model": {"partial_pretrain": "/m", "strategy": "fsdp2", "enable_gradient_checkpointing": True,
                  "lora_rank": 0, "lora_alpha": 16, "target_modules": "all-linear",
                  "fsdp_config": {"cpu_offload": False, "offload_params": False}},
        "optim": {"lr": 1e-5, "weight_decay": 0.01, "warmup_steps_ratio": 0.1, "lr_scheduler": "cosine"},
        "ulysses_sequence_parallel_size": 1, "use_remove_padding": True,
        "trainer": {"total_epochs": 3, "default_local_dir": "${oc.env:CHECKPOINT_DIR,/tmp}/sft/checkpoints"},
    }  # fmt: skip
    (tmp_path / "sft_trainer.yaml").write_text(yaml.safe_dump(recipe))
    line = split_command_line(
        ["--config-path", str(tmp_path), "--config-name=sft_trainer", "trainer.total_epochs=1"]
    )
    config = load(line.overrides, read_config_file(line.config_path, line.config_name))
    assert config.get("data.multiturn.enable") is True and config.get("optim.lr_warmup_steps_ratio") == 0.1
    assert config.get("trainer.total_epochs") == 1  # the command line wins over the file
    assert config.get("trainer.default_local_dir").endswith("/sft/checkpoints")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"data": {"train_batch_sizes": 1}}))
    with pytest.raises(ConfigError, match=r"did you mean 'data.train_batch_size'"):
        load([], read_config_file(str(tmp_path), "bad"))
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({"defaults": ["engine: megatron"]}))
    with pytest.raises(ConfigError, match="defaults entry 'engine: megatron'"):
        read_config_file(str(tmp_path), "other")


def test_command_line_flags_are_separated_from_overrides() -> None:
    line = split_command_line(["a.b=1", "--print-lightning-config", "--log-dir", "/l", "~c"])
    assert line.overrides == ["a.b=1", "~c"] and line.print_lightning_config and line.log_dir == "/l"
    with pytest.raises(ConfigError, match="unknown option '--lr'"):
        split_command_line(["--lr", "1"])
    with pytest.raises(ConfigError, match="not an override"):
        split_command_line(["data.train_files"])


def _other_value(default: object) -> object:
    """A value that differs from ``default`` (as an override's text)."""
    if isinstance(default, bool):
        return not default
    if isinstance(default, (int, float)):
        return default + 7
    if isinstance(default, list):
        return "[x]"
    return "other" if isinstance(default, str) else "x"


def _schema_words(key: str) -> list[str]:
    """An engine key comes with model.path (it selects the engine trainer's defaults)."""
    legacy = schema.dotted_keys(schema.defaults("legacy")) + list(schema.EXTRA_KEYS)
    return [] if key in legacy else ["model.path=/m"]


@pytest.mark.parametrize("key", sorted(schema.UNSUPPORTED))
def test_every_unsupported_key_is_an_error_naming_it(key: str) -> None:
    words = _schema_words(key)
    value = _other_value(load(words).get(key, schema.EXTRA_KEYS.get(key)))
    prefix = "+" if key in schema.EXTRA_KEYS else ""
    with pytest.raises(ConfigError, match=rf"verl key {key}=.* is not supported by lit-sft verl"):
        load([*words, f"{prefix}{key}={value}"])


@pytest.mark.parametrize("key", sorted(key for key in schema.IGNORED if key != "profiler"))
def test_every_key_without_meaning_warns_naming_it(key: str) -> None:
    words = _schema_words(key)
    config = load([*words, f"{key}={_other_value(load(words).get(key))}"])
    assert any(warning.startswith(f"verl key {key}=") for warning in config.warnings), config.warnings


def test_the_deprecated_data_micro_batch_size_is_a_one_line_warning() -> None:
    # verl's legacy yaml lists it as deprecated and never reads it; 3 of verl's example scripts pass it
    config = load(["data.micro_batch_size=64", "data.micro_batch_size_per_gpu=8"])
    assert config.get("data.micro_batch_size_per_gpu") == 8
    (warning,) = [w for w in config.warnings if "data.micro_batch_size=" in w]
    assert "never read by verl" in warning and "\n" not in warning
