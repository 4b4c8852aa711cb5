from __future__ import annotations

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_sft.model.loss import step_normalized_loss, token_loss_sum
from tests.helpers import tiny_model_config


def test_token_loss_sum_matches_the_models_own_mean_loss() -> None:
    values = tiny_model_config()
    config = AutoConfig.for_model(values.pop("model_type"), vocab_size=50, **values)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config)
    input_ids = torch.randint(0, 50, (3, 12))
    labels = input_ids.clone()
    labels[:, :5] = -100
    labels[2, 9:] = -100
    logits = model(input_ids).logits
    loss_sum, count = token_loss_sum(logits, labels)
    assert int(count) == 7 + 7 + 4  # targets at positions 5-11, 5-11 and 5-8
    reference = model(input_ids, labels=labels).loss
    torch.testing.assert_close(loss_sum / count, reference)


def test_step_normalized_loss_undoes_accumulation_and_world_averaging() -> None:
    loss_sum = torch.tensor(12.0)
    # Lightning divides by accumulate (4), DDP averages over world (2): 12 * 8 / 24 / 4 / 2 = 12 / 24.
    assert step_normalized_loss(loss_sum, 24, 4, 2) / 4 / 2 == pytest.approx(0.5)
    assert step_normalized_loss(loss_sum, 0, 1, 1) == pytest.approx(12.0)  # never divides by zero
