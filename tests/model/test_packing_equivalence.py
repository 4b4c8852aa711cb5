"""Packed (padding-free) batches give the same loss as padded batches, and rows stay apart."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything

from lit_sft import SFTDataModule, SFTModule
from lit_sft.errors import ConfigError
from lit_sft.model.hf import check_packed_attention
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def make_data(path: str, **kwargs) -> SFTDataModule:
    dm = arithmetic_data(path, shuffle=False, max_length=128, **kwargs)
    dm.setup("fit")
    return dm


def module(attn_implementation: str = "sdpa", **kwargs) -> SFTModule:
    seed_everything(0)
    sft = SFTModule(
        model_config=tiny_model_config(initializer_range=0.3),
        tokenizer_name_or_path="builtin:byte-chatml",
        attn_implementation=attn_implementation,
        **kwargs,
    )
    sft.configure_model()
    return sft


@torch.no_grad()
def total_loss(sft: SFTModule, dm: SFTDataModule) -> tuple[torch.Tensor, int, int]:
    sums, counts, batches = [], [], 0
    for batch in dm.train_dataloader():
        loss_sum, count = sft.compute_loss_sum(batch)
        sums.append(loss_sum)
        counts.append(int(count))
        batches += 1
    return sum(sums) / sum(counts), sum(counts), batches


# flex_attention is a GPU path: on CPU its compiled kernels have no backward (and fail to build here).
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_packed_loss_equals_padded_loss(tmp_path, attn_implementation: str) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(24))
    sft = module(attn_implementation)
    padded, padded_targets, padded_batches = total_loss(sft, make_data(path, batch_size=4))
    packed_dm = make_data(path, packing=True, max_tokens_per_batch=512)
    packed, packed_targets, packed_batches = total_loss(sft, packed_dm)
    assert packed_batches < padded_batches  # rows really were packed together
    assert packed_targets == padded_targets == packed_dm.summaries["train"].trained_tokens
    torch.testing.assert_close(packed, padded, rtol=1e-5, atol=1e-5)


def test_changing_one_packed_row_leaves_the_others_logits_unchanged(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(6))
    dm = make_data(path, packing=True, max_tokens_per_batch=1024)
    batch = next(iter(dm.train_dataloader()))
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert len(starts) == 6
    sft = module()
    sft.eval()
    with torch.no_grad():
        before = sft(batch["input_ids"], position_ids=batch["position_ids"])
        changed = batch["input_ids"].clone()
        changed[0, starts[2] : starts[3]] = torch.randint(0, 256, (starts[3] - starts[2],))
        after = sft(changed, position_ids=batch["position_ids"])
    others = torch.ones(changed.shape[1], dtype=torch.bool)
    others[starts[2] : starts[3]] = False
    torch.testing.assert_close(after[0, others], before[0, others], rtol=0, atol=1e-6)
    assert not torch.allclose(after[0, starts[2] : starts[3]], before[0, starts[2] : starts[3]])


def test_the_packing_check_catches_a_model_that_ignores_row_boundaries() -> None:
    sft = module()
    check_packed_attention(sft.model, "sdpa")  # transformers' own attention keeps rows apart

    class IgnoresPositions(torch.nn.Module):
        """Forwards without position_ids: a packed batch becomes one long sequence."""

        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def get_input_embeddings(self):
            return self.inner.get_input_embeddings()

        def forward(self, input_ids, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids, **kwargs)

    with pytest.raises(ConfigError, match="lets packed rows attend to each other"):
        check_packed_attention(IgnoresPositions(sft.model), "custom")


def test_fit_with_packing_learns(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(64))
    dm = arithmetic_data(path, val_files=path, max_length=128, packing=True, max_tokens_per_batch=512)
    sft = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
    )
    trainer = quiet_trainer(max_steps=30, limit_val_batches=None)
    seed_everything(0)
    before = trainer.validate(sft, datamodule=dm, verbose=False)[0]["val/loss"]
    trainer.fit(sft, datamodule=dm)
    assert trainer.callback_metrics["val/loss"] < 0.7 * before
