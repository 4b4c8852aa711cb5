from __future__ import annotations

import itertools
import math

import pytest
import torch

from lit_sft.errors import ConfigError
from lit_sft.model.scheduler import WarmupDecayLR, warmup_decay_factor


@pytest.mark.parametrize(
    ("schedule", "step", "expected"),
    [
        ("cosine", 0, 1 / 11),
        ("cosine", 9, 10 / 11),
        ("cosine", 10, 1.0),
        ("cosine", 55, 0.1 + 0.9 * 0.5),
        ("cosine", 100, 0.1),
        ("linear", 55, 0.1 + 0.9 * 0.5),
        ("linear", 100, 0.1),
        ("constant", 80, 1.0),
    ],
)
def test_warmup_decay_factor(schedule: str, step: int, expected: float) -> None:
    factor = warmup_decay_factor(step, schedule=schedule, warmup_steps=10, total_steps=100, min_lr_ratio=0.1)
    assert factor == pytest.approx(expected)


def test_warmup_ratio_and_scheduler_stepping() -> None:
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([parameter], lr=1.0)
    scheduler = WarmupDecayLR(optimizer, warmup_ratio=0.1, total_steps=50)
    assert scheduler.warmup_steps == 5
    lrs = []
    for _ in range(50):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(1 / 6) and lrs[5] == pytest.approx(1.0)
    assert lrs[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 44 / 45)))
    assert all(a < b for a, b in itertools.pairwise(lrs[:6]))


def test_a_warmup_start_ratio_rises_linearly_from_it_to_the_peak() -> None:
    # Megatron's warmup from init_lr: init + (peak - init) * step / warmup, the peak at step == warmup
    factors = [
        warmup_decay_factor(step, schedule="constant", warmup_steps=4, total_steps=10, min_lr_ratio=0.0,
                            warmup_start_ratio=0.2)
        for step in range(6)
    ]  # fmt: skip
    assert factors == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    with pytest.raises(ConfigError, match="warmup_start_ratio"):
        WarmupDecayLR(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), warmup_start_ratio=1.5,
                      total_steps=10)  # fmt: skip


def test_schedules_that_need_total_steps_say_so() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    with pytest.raises(ConfigError, match="needs total_steps"):
        WarmupDecayLR(optimizer, schedule="cosine")
    WarmupDecayLR(optimizer, schedule="constant", warmup_steps=3)  # needs none


def test_the_default_optimizer_and_schedule_suit_a_pretrained_model() -> None:
    """SFT defaults (lr 2e-5, 5 % warmup, cosine), not torch's pretraining lr of 1e-3."""
    from lit_sft import SFTModule

    module = SFTModule(model_config={"model_type": "qwen2"}, tokenizer_name_or_path="builtin:byte-chatml")
    parameter = torch.nn.Parameter(torch.zeros(1))
    optimizer = module.optimizer_factory([parameter])
    assert isinstance(optimizer, torch.optim.AdamW)
    assert optimizer.defaults["lr"] == 2e-5 and optimizer.defaults["weight_decay"] == 0.0
    scheduler = module.lr_scheduler_factory(optimizer, total_steps=200)
    assert scheduler.warmup_steps == 10
    assert optimizer.param_groups[0]["lr"] == pytest.approx(2e-5 / 11)  # first warmup step
