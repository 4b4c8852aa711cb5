"""The loss is one object chosen when the model is built; the probe that picks it falls back only on the
expected mismatch."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from lightning.pytorch import seed_everything

from lit_sft import SFTModule
from lit_sft.errors import ConfigError
from lit_sft.model import LossOptions
from lit_sft.model.hf import hidden_state_path
from lit_sft.model.loss import ChunkedLoss, PlainLoss, SequenceParallelLoss, TokenLoss, select_loss
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def module(**kwargs) -> SFTModule:
    seed_everything(0)
    sft = SFTModule(model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml", **kwargs)
    sft.configure_model()
    return sft


class Wrapper(torch.nn.Module):
    """A causal LM around a real one, with the accessors the chunked loss needs."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config = inner, inner.config

    def get_decoder(self) -> torch.nn.Module:
        return self.inner.get_decoder()

    def get_output_embeddings(self) -> torch.nn.Module:
        return self.inner.get_output_embeddings()


class NoLogitsToKeep(Wrapper):
    """A forward without ``logits_to_keep`` (custom model code): the expected mismatch."""

    def forward(self, input_ids, use_cache=None, attention_mask=None, position_ids=None):
        return self.inner(input_ids=input_ids, use_cache=use_cache)


class DecoderElsewhere(Wrapper):
    """``get_decoder`` names a module the forward never runs: the expected mismatch too."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__(inner)
        self.spare = copy.deepcopy(inner.get_decoder())

    def get_decoder(self) -> torch.nn.Module:
        return self.spare

    def forward(self, input_ids, **kwargs):
        return self.inner(input_ids=input_ids, **kwargs)


class BreaksOnTheProbe(Wrapper):
    """A model that fails for another reason in the hidden-state pass (a bug, out of memory): not a mismatch."""

    def forward(self, input_ids, logits_to_keep=0, **kwargs):
        if logits_to_keep:
            raise RuntimeError("out of memory (simulated)")
        return self.inner(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        (LossOptions(implementation="plain"), PlainLoss),
        (LossOptions(implementation="chunked", chunk_size=7), ChunkedLoss),
    ],
)
def test_the_loss_is_chosen_once_when_the_model_is_built(options: LossOptions, expected: type) -> None:
    sft = module(loss=options)
    assert type(sft.token_loss) is expected
    if expected is ChunkedLoss:
        assert sft.token_loss.chunk_size == 7


def test_a_sequence_split_wraps_the_chosen_loss() -> None:
    sft = module()
    loss = select_loss(LossOptions(chunk_size=5), sft.model, sft, sft.model_inputs, sequence_parallel_size=2)
    assert isinstance(loss, SequenceParallelLoss) and loss.size == 2 and loss.attn_implementation == "sdpa"
    assert isinstance(loss.inner, ChunkedLoss) and loss.inner.chunk_size == 5


@pytest.mark.parametrize("wrapper", [NoLogitsToKeep, DecoderElsewhere])
def test_the_expected_mismatch_falls_back_to_the_plain_loss_with_the_reason_logged(wrapper, caplog) -> None:
    model = wrapper(module().model)
    with caplog.at_level(logging.WARNING, logger="lit_sft"):
        assert hidden_state_path(model) is None
    reason = "logits_to_keep" if wrapper is NoLogitsToKeep else "does not run in the model's forward"
    assert "the chunked loss is off" in caplog.text and reason in caplog.text
    assert isinstance(select_loss(LossOptions(), model, model, lambda batch: {}), PlainLoss)
    with pytest.raises(ConfigError, match="liger needs a model whose logits are lm_head"):
        select_loss(LossOptions(implementation="liger"), model, model, lambda batch: {})


def test_any_other_error_of_the_probe_is_raised_not_hidden_by_a_fallback(caplog) -> None:
    model = BreaksOnTheProbe(module().model)
    with pytest.raises(RuntimeError, match="out of memory"):
        hidden_state_path(model)
    assert "the chunked loss is off" not in caplog.text


class CountingLoss(TokenLoss):
    def __init__(self, inner: TokenLoss) -> None:
        self.inner, self.calls = inner, 0

    def __call__(self, batch, shifted=False):
        self.calls += 1
        return self.inner(batch, shifted)


def test_each_training_and_validation_step_calls_the_loss_once(tmp_path) -> None:
    files = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8))
    dm = arithmetic_data(files, batch_size=4, val_ratio=0.5, shuffle=False)
    sft = module()
    counting = sft.token_loss = CountingLoss(sft.token_loss)
    trainer = quiet_trainer(max_steps=1, limit_val_batches=1, val_check_interval=1)
    trainer.fit(sft, datamodule=dm)
    assert sft.token_loss is counting  # configure_model does not choose again
    assert counting.calls == 2  # one training micro-batch, one validation batch
