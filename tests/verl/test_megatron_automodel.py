"""verl's ``engine=megatron``/``optim=megatron`` and ``engine=automodel``/``optim=automodel`` on lit_sft's FSDP
path: the learning rate of every step against Megatron's OptimizerParamScheduler formula (written out here from
megatron.core / nemo_automodel ``get_lr``), the optimizer, the replaced layout's one warning, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from lit_sft.commands.verl import build
from lit_sft.errors import ConfigError
from lit_sft.model.scheduler import WarmupDecayLR
from lit_sft.verl import schema
from lit_sft.verl.translate import Launch

BASE = ["model.path=/m", "data.train_batch_size=8", "trainer.logger=[console]"]
MEGATRON = [*BASE, "engine=megatron", "optim=megatron"]
AUTOMODEL = [*BASE, "engine=automodel", "optim=automodel"]


def megatron_lr(
    step: int, *, init: float, peak: float, low: float, warmup: int, decay: int, style: str
) -> float:
    """OptimizerParamScheduler.get_lr at ``num_steps = step`` (the learning rate of 0-based optimizer step
    ``step``: the scheduler is built with step(0) and stepped by 1 after each optimizer step)."""
    if warmup > 0 and step <= warmup:
        return init + (peak - init) * step / warmup
    if style == "constant":
        return peak
    if step > decay:
        return low
    ratio = (step - warmup) / (decay - warmup)
    coeff = 1.0 - ratio if style == "linear" else 0.5 * (math.cos(math.pi * ratio) + 1.0)
    return low + coeff * (peak - low)


def lit_sft_lrs(words: list[str], steps: int) -> list[float]:
    """The learning rate of each optimizer step of the translated run (its AdamW and WarmupDecayLR)."""
    model = build([*words, f"trainer.total_training_steps={steps}"], Launch()).config["model"]["init_args"]
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], **model["optimizer"]["init_args"])
    scheduler = WarmupDecayLR(optimizer, **model["lr_scheduler"]["init_args"], total_steps=steps)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


@pytest.mark.parametrize("style", ["cosine", "linear", "constant"])
def test_megatron_schedule_is_megatrons_with_a_warmup_from_init_lr(style: str) -> None:
    words = [*MEGATRON, "optim.lr=2e-5", "optim.min_lr=2e-6", "optim.lr_warmup_init=5e-6",
             "optim.lr_warmup_steps=4", f"optim.lr_decay_style={style}"]  # fmt: skip
    expected = [
        megatron_lr(s, init=5e-6, peak=2e-5, low=2e-6, warmup=4, decay=20, style=style) for s in range(20)
    ]
    assert lit_sft_lrs(words, 20) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_megatron_warmup_ratio_counts_on_the_runs_steps() -> None:
    # run_qwen_megatron_fsdp.sh: lr_warmup_steps_ratio=0.2, cosine to min_lr (warmup from 0: lit_sft's own start)
    words = [*MEGATRON, "optim.lr=1e-5", "optim.min_lr=1e-6", "optim.lr_warmup_steps_ratio=0.2",
             "optim.lr_decay_style=cosine"]  # fmt: skip
    rates = lit_sft_lrs(words, 25)
    expected = [
        megatron_lr(s, init=0.0, peak=1e-5, low=1e-6, warmup=5, decay=25, style="cosine") for s in range(25)
    ]
    assert rates[5:] == pytest.approx(expected[5:], rel=1e-9)  # from the end of warmup: Megatron's exactly
    # the warmup from 0 rises from lr / (warmup + 1) as lit_sft's (and its FSDP translation's): the first step learns
    assert expected[0] == 0.0 and rates[:5] == pytest.approx([1e-5 * (s + 1) / 6 for s in range(5)])


def test_automodel_schedule_is_automodels_init_and_min_ratios() -> None:
    # run_qwen3_30b_automodel.sh: init_lr_ratio 0.1, min_lr_ratio 0.01, warmup ratio 0.1, cosine over the run
    words = [*AUTOMODEL, "optim.lr=1e-5", "optim.lr_warmup_steps_ratio=0.1", "optim.init_lr_ratio=0.1",
             "optim.min_lr_ratio=0.01", "optim.lr_scheduler_type=cosine"]  # fmt: skip
    expected = [
        megatron_lr(s, init=1e-6, peak=1e-5, low=1e-7, warmup=3, decay=30, style="cosine") for s in range(30)
    ]
    assert lit_sft_lrs(words, 30) == pytest.approx(expected, rel=1e-9)


def test_automodel_defaults_are_its_yamls() -> None:  # init 0.1, min 0.01, cosine, no warmup
    expected = [
        megatron_lr(s, init=1e-6, peak=1e-5, low=1e-7, warmup=0, decay=10, style="cosine") for s in range(10)
    ]
    assert lit_sft_lrs(AUTOMODEL, 10) == pytest.approx(expected, rel=1e-9)


def test_megatron_adam_keeps_its_own_betas_as_verl_passes_none() -> None:
    translation = build(
        [*MEGATRON, "optim.betas=[0.9,0.95]", "optim.weight_decay=0.1", "optim.lr=3e-5"], Launch()
    )
    adamw = translation.config["model"]["init_args"]["optimizer"]
    assert adamw == {"class_path": "torch.optim.AdamW",
                     "init_args": {"lr": 3e-5, "weight_decay": 0.1, "betas": [0.9, 0.999], "eps": 1e-8}}  # fmt: skip
    assert (
        sum("optim.betas=[0.9, 0.95] has no effect with optim=megatron" in w for w in translation.warnings)
        == 1
    )
    assert sum("does not decay biases and norm weights" in w for w in translation.warnings) == 1
    given = build([*MEGATRON, "+optim.override_optimizer_config.adam_beta2=0.95"], Launch())
    assert given.config["model"]["init_args"]["optimizer"]["init_args"]["betas"] == [0.9, 0.95]


def test_automodel_passes_betas_and_eps_and_takes_te_fused_adam_as_adamw() -> None:
    words = [*AUTOMODEL, "optim.betas=[0.9,0.95]", "optim.eps=1e-6", "optim.optimizer=FusedAdam",
             "optim.optimizer_impl=transformer_engine.pytorch.optimizers.fused_adam", "optim.weight_decay=0"]  # fmt: skip
    translation = build(words, Launch())
    assert translation.config["model"]["init_args"]["optimizer"]["init_args"] == {
        "lr": 1e-5, "weight_decay": 0.0, "betas": [0.9, 0.95], "eps": 1e-6}  # fmt: skip
    assert any("FusedAdam (AdamW mode)" in w for w in translation.warnings)


def test_the_replaced_layout_is_one_warning_and_fsdp2_over_all_ranks() -> None:
    words = [*MEGATRON, "engine.tensor_model_parallel_size=4", "engine.pipeline_model_parallel_size=2",
             "engine.expert_model_parallel_size=8", "engine.use_megatron_fsdp=True",
             "+engine.override_transformer_config.gradient_accumulation_fusion=False"]  # fmt: skip
    translation = build(words, Launch(world_size=2, local_world_size=2))
    layout = [w for w in translation.warnings if w.startswith("engine=megatron: lit_sft trains on FSDP")]
    assert len(layout) == 1
    for named in ("tensor_model_parallel_size=4", "pipeline_model_parallel_size=2", "expert_model_parallel_size=8",
                  "use_megatron_fsdp=True", "gradient_accumulation_fusion=False"):  # fmt: skip
        assert named in layout[0]
    assert not any(
        w.startswith("verl key engine.") for w in translation.warnings
    )  # no second warning per key
    trainer = translation.config["trainer"]
    assert trainer["strategy"]["class_path"].endswith("FSDP2Strategy") and trainer["devices"] == 2
    assert translation.config["data"]["init_args"]["global_batch_size"] == 8


def test_context_parallel_becomes_sequence_parallel_and_recompute_gradient_checkpointing() -> None:
    words = [
        *MEGATRON,
        "engine.context_parallel_size=2",
        "+engine.override_transformer_config.recompute_granularity=full",
    ]
    model = build(words, Launch(world_size=2, local_world_size=2)).config["model"]["init_args"]
    assert model["sequence_parallel_size"] == 2 and model["gradient_checkpointing"] is True
    # Megatron reads no model.enable_gradient_checkpointing (default true): without recompute, none
    assert build(MEGATRON, Launch()).config["model"]["init_args"]["gradient_checkpointing"] is False
    automodel = build([*AUTOMODEL, "engine.activation_checkpointing=True", "engine.cp_size=2"],
                      Launch(world_size=2, local_world_size=2)).config["model"]["init_args"]  # fmt: skip
    assert automodel["sequence_parallel_size"] == 2 and automodel["gradient_checkpointing"] is True


def test_param_offload_and_precision_carry_over() -> None:
    translation = build([*MEGATRON, "engine.param_offload=True"], Launch(cuda=True, cuda_devices=1))
    assert translation.config["trainer"]["strategy"]["init_args"]["cpu_offload"] is True
    assert translation.config["trainer"]["precision"] == "bf16-mixed"  # Megatron: bf16 with fp32 main weights
    automodel = build([*AUTOMODEL, "engine.model_dtype=bf16"], Launch(cuda=True, cuda_devices=1))
    assert automodel.config["trainer"]["precision"] == "bf16-true"


def test_ignored_keys_warn_once_each_with_the_reason() -> None:
    words = [*MEGATRON, "optim.use_checkpoint_opt_param_scheduler=True", "engine.use_dist_checkpointing=True",
             "+optim.override_optimizer_config.optimizer_cpu_offload=True"]  # fmt: skip
    warnings = build(words, Launch()).warnings
    for key, why in (("optim.use_checkpoint_opt_param_scheduler", "resume restores the scheduler"),
                     ("engine.use_dist_checkpointing", "its own checkpoints"),
                     ("optim.override_optimizer_config.optimizer_cpu_offload", "memory or precision")):  # fmt: skip
        assert sum(key in w and why in w for w in warnings) == 1, (key, warnings)


@pytest.mark.parametrize(
    ("words", "reason"),
    [
        (["optim.lr_decay_style=inverse-square-root"], "lit_sft's schedules are constant, linear and cosine"),
        (["optim.lr_decay_style=WSD"], "lit_sft's schedules are constant, linear and cosine"),
        (["optim.lr_decay_steps=50"], "decays over the run's steps"),
        (["optim.optimizer=sgd"], "only Megatron.s adam"),
        (["+optim.override_optimizer_config.decoupled_weight_decay=False"], "Adam with L2"),
        (["+optim.override_optimizer_config.foo=1"], "lit_sft's AdamW takes lr, betas, eps and weight_decay"),
        (["engine.dist_checkpointing_path=/ckpt"], "convert it to an HF model"),
        (["optim.min_lr=1"], "Megatron asserts the same"),
        (["model.mtp.enable=True", "model.mtp.enable_train=True"], "cannot train that loss"),
    ],
)
def test_megatron_settings_lit_sft_cannot_honour_are_refused_with_the_reason(
    words: list[str], reason: str
) -> None:
    with pytest.raises(ConfigError, match=reason):
        build([*MEGATRON, *words], Launch())


def test_automodel_refusals_name_the_reason() -> None:
    with pytest.raises(ConfigError, match="only AdamW"):
        build([*AUTOMODEL, "optim.optimizer=SGD"], Launch())
    with pytest.raises(ConfigError, match="FP8 training is not available"):
        build([*AUTOMODEL, "engine.enable_fp8=True"], Launch())
    with pytest.raises(ConfigError, match="constant, linear and cosine"):
        build([*AUTOMODEL, "optim.lr_scheduler_type=inverse-square-root"], Launch())


def test_optim_fsdps_extra_optimizer_arguments_are_refused_not_dropped() -> None:
    with pytest.raises(ConfigError, match="extra optimizer arguments need a native config"):
        build([*BASE, "+optim.override_optimizer_config.foo=1"], Launch())


def test_mtp_kept_untrained_is_a_warning() -> None:
    warnings = build([*MEGATRON, "model.mtp.enable=True"], Launch()).warnings
    assert sum("model.mtp.enable=True" in w and "no MTP layers" in w for w in warnings) == 1


def test_a_plugin_engine_is_refused_as_verl_without_the_plugin_refuses_it() -> None:
    words = [
        *BASE,
        "optim=megatron",
        "hydra.searchpath=[pkg://verl_mlite.config]",
        "engine=mlite",
        "engine.tp=1",
    ]
    with pytest.raises(
        ConfigError, match=r"verl_mlite plugin package .* verl without verl_mlite installed refuses"
    ):
        build(words, Launch())
    with pytest.raises(ConfigError, match="engine=veomni is not supported: lit_sft implements"):
        build([*BASE, "engine=veomni"], Launch())


def test_every_key_of_the_megatron_and_automodel_groups_has_a_rule() -> None:
    for (group, _), table in schema.GROUP_DEFAULTS.items():
        for key in (f"{group}.{k}" for k in schema.dotted_keys(table)):
            assert (
                schema.foreign_policy(key) is not None
                or schema.reason(schema.IGNORED, key) is not None
                or key in schema.UNSUPPORTED
            ), key


def test_a_group_choice_takes_that_groups_defaults_whatever_its_position() -> None:
    # Hydra applies group choices before value overrides: optim.lr_decay_style before optim=megatron still works
    words = [*BASE, "optim.lr_decay_style=cosine", "optim.min_lr=1e-6", "optim=megatron", "optim.lr=1e-5"]
    schedule = build(words, Launch()).config["model"]["init_args"]["lr_scheduler"]["init_args"]
    assert schedule["schedule"] == "cosine" and schedule["min_lr_ratio"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"unknown verl SFT trainer key .optim\.lr_decay_style."):
        build([*BASE, "optim.lr_decay_style=cosine"], Launch())  # not a key of optim/fsdp.yaml
