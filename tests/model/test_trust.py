"""Training you can trust: the memory-lean loss, dropout override, precision, the non-finite guard."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from lit_sft import SFTDataModule, SFTModule
from lit_sft.errors import ConfigError, TrainingError
from lit_sft.model import LoraOptions, LossOptions
from lit_sft.model.build import apply_dropout
from lit_sft.model.hf import hidden_state_path
from lit_sft.model.loss import ChunkedLoss
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def module(**kwargs) -> SFTModule:
    seed_everything(0)
    kwargs.setdefault("model_config", tiny_model_config(initializer_range=0.3))
    sft = SFTModule(tokenizer_name_or_path="builtin:byte-chatml", **kwargs)
    sft.configure_model()
    return sft


def data(tmp_path, rows: int = 8, **kwargs) -> SFTDataModule:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(rows))
    dm = arithmetic_data(path, shuffle=False, **kwargs)
    dm.setup("fit")
    return dm


def loss_and_grads(sft: SFTModule, batch: dict) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    sft.zero_grad()
    loss_sum, count = sft.compute_loss_sum(batch)
    loss_sum.backward()
    return (
        loss_sum.detach(),
        count,
        {n: p.grad.clone() for n, p in sft.named_parameters() if p.grad is not None},
    )


@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize("lora", [None, LoraOptions(r=4, alpha=8)], ids=["full", "lora"])
def test_chunked_loss_equals_the_plain_loss_and_gradients(tmp_path, chunk_size: int, lora) -> None:
    batch = next(iter(data(tmp_path, batch_size=4).train_dataloader()))
    plain = loss_and_grads(module(loss=LossOptions(implementation="plain"), lora=lora), batch)
    chunked = loss_and_grads(
        module(loss=LossOptions(implementation="chunked", chunk_size=chunk_size), lora=lora), batch
    )
    torch.testing.assert_close(chunked[0], plain[0], rtol=1e-5, atol=1e-5)
    assert int(chunked[1]) == int(plain[1])
    assert chunked[2].keys() == plain[2].keys()
    for name, grad in plain[2].items():
        torch.testing.assert_close(
            chunked[2][name], grad, rtol=1e-4, atol=1e-6 * float(grad.abs().max()), msg=name
        )


def test_the_head_sees_only_target_positions_a_chunk_at_a_time(tmp_path) -> None:
    """Full-vocabulary logits are never made for the whole batch: only for targets, chunk by chunk."""
    batch = next(iter(data(tmp_path, batch_size=4).train_dataloader()))
    sft = module(loss=LossOptions(chunk_size=16))
    assert isinstance(sft.token_loss, ChunkedLoss)  # (its one-time check runs the head on a probe)
    rows_seen: list[int] = []
    sft.model.lm_head.register_forward_hook(
        lambda mod, args, out: rows_seen.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    loss_sum, count = sft.compute_loss_sum(batch)
    loss_sum.backward()  # the backward pass recomputes each chunk
    targets = int((batch["labels"][:, 1:] != -100).sum())
    assert int(count) == targets < batch["input_ids"].numel() // 2
    assert max(rows_seen) == 16
    # One position per row in the model's own forward (logits_to_keep=1), then each chunk once forward and
    # once recomputed in backward.
    assert sum(rows_seen) == batch["input_ids"].shape[0] + 2 * targets


@pytest.mark.parametrize(
    "config",
    [
        tiny_model_config(model_type="gemma2", head_dim=8, final_logit_softcapping=5.0),
        tiny_model_config(model_type="cohere", logit_scale=0.5),
    ],
    ids=["gemma2-softcap", "cohere-logit-scale"],
)
def test_logit_postprocessing_families_keep_the_chunked_loss_exact(tmp_path, config: dict) -> None:
    batch = next(iter(data(tmp_path, batch_size=4).train_dataloader()))
    chunked = module(model_config=config, attn_implementation="eager")
    assert isinstance(chunked.token_loss, ChunkedLoss)
    plain = module(model_config=config, loss=LossOptions(implementation="plain"), attn_implementation="eager")
    torch.testing.assert_close(
        chunked.compute_loss_sum(batch)[0], plain.compute_loss_sum(batch)[0], rtol=1e-5, atol=1e-5
    )


def test_a_model_whose_logits_are_not_the_heads_falls_back_to_the_plain_loss(tmp_path, caplog) -> None:
    sft = module()
    sft.model.config.logit_scale = 3.0  # claims a scaling the model's forward does not apply
    assert hidden_state_path(sft.model) is None
    assert "chunked loss is off" in caplog.text
    batch = next(iter(data(tmp_path, batch_size=4).train_dataloader()))
    reference = module(loss=LossOptions(implementation="plain"))
    torch.testing.assert_close(sft.compute_loss_sum(batch)[0], reference.compute_loss_sum(batch)[0])


def test_gpu_only_options_say_so_on_cpu(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU-only machine, even on a GPU one
    with pytest.raises(ConfigError, match="CUDA GPU"):
        module(liger_kernels=True)


def test_dropout_override_reaches_every_dropout_of_the_config() -> None:
    sft = module(dropout=0.3)
    assert sft.model.config.attention_dropout == 0.3
    sft.model.train()
    input_ids = torch.randint(0, 200, (2, 16))
    assert not torch.equal(sft(input_ids), sft(input_ids))  # dropout is active in training
    sft.model.eval()
    assert torch.equal(sft(input_ids), sft(input_ids))
    with pytest.raises(ConfigError, match=r"model.dropout must be in \[0, 1\)"):
        apply_dropout(sft.model.config, 1.5)


def test_pretrained_models_take_the_dropout_override_too(tiny_model_dir) -> None:
    sft = SFTModule(model_name_or_path=tiny_model_dir, dropout=0.2)
    sft.configure_model()
    assert sft.model.config.attention_dropout == 0.2


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precisions_train(tmp_path, precision: str) -> None:
    sft = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    trainer = quiet_trainer(max_steps=3, precision=precision)
    trainer.fit(sft, datamodule=data(tmp_path, batch_size=4))
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert next(sft.model.parameters()).dtype == expected


class PoisonedModule(SFTModule):
    """Returns a NaN loss on the given optimizer steps (1-based)."""

    def __init__(self, poison_steps: tuple[int, ...] = (), **kwargs) -> None:
        super().__init__(**kwargs)
        self.poison_steps = poison_steps

    def compute_loss_sum(self, batch):
        loss_sum, count = super().compute_loss_sum(batch)
        if self.training and self.trainer.global_step + 1 in self.poison_steps:
            loss_sum = loss_sum * float("nan")
        return loss_sum, count


def poisoned(poison_steps, skip: int) -> PoisonedModule:
    seed_everything(0)
    return PoisonedModule(
        poison_steps=poison_steps,
        skip_nonfinite_steps=skip,
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )


def test_a_non_finite_loss_stops_the_run_naming_the_step(tmp_path) -> None:
    with pytest.raises(TrainingError, match=r"non-finite loss or gradient at step 3 \(loss nan"):
        quiet_trainer(max_steps=6).fit(poisoned((3,), skip=0), datamodule=data(tmp_path, batch_size=2))


def test_non_finite_steps_are_skipped_within_the_budget(tmp_path) -> None:
    sft = poisoned((2, 4), skip=2)
    parameters: dict[int, dict[str, torch.Tensor]] = {}

    class Record(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            parameters[trainer.global_step] = {n: p.detach().clone() for n, p in pl_module.named_parameters()}

    trainer = quiet_trainer(max_steps=5, callbacks=[Record()])
    trainer.fit(sft, datamodule=data(tmp_path, batch_size=2))
    assert trainer.global_step == 5 and sft.skipped_steps == 2
    assert all(torch.isfinite(p).all() for p in sft.parameters())
    unchanged = [
        step
        for step in (2, 3, 4, 5)
        if all(torch.equal(parameters[step][n], parameters[step - 1][n]) for n in parameters[step])
    ]
    assert unchanged == [2, 4]  # the poisoned steps left the weights as they were
    with pytest.raises(TrainingError, match="step 2"):
        quiet_trainer(max_steps=5).fit(poisoned((2, 4, 5), skip=0), datamodule=data(tmp_path, batch_size=2))


def test_early_stopping_on_val_loss_stops_the_run(tmp_path) -> None:
    """Lightning's EarlyStopping, as the recipes configure it: a run that stops improving stops."""
    from lightning.pytorch.callbacks import EarlyStopping

    sft = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.SGD, lr=0.0),  # nothing learns: val/loss never improves
    )
    stopper = EarlyStopping(monitor="val/loss", mode="min", patience=2)
    dm = data(tmp_path, rows=16, batch_size=4, val_ratio=0.25)
    trainer = quiet_trainer(max_steps=100, limit_val_batches=None, val_check_interval=1, callbacks=[stopper])
    trainer.fit(sft, datamodule=dm)
    assert trainer.should_stop and stopper.stopped_epoch >= 0
    # 3 steps per epoch, checked at each epoch end: epoch 0 sets the best, two more without improvement stop.
    assert trainer.global_step == 9 and stopper.wait_count == 2


@pytest.mark.parametrize("loss_implementation", ["chunked", "plain"])
@pytest.mark.parametrize("packing", [False, True])
def test_host_chosen_target_positions_give_the_masked_loss(
    tmp_path, loss_implementation: str, packing: bool
) -> None:
    """Batches carry target positions picked on the host (no device sync); the loss equals boolean masking."""
    options = (
        {"packing": True, "max_tokens_per_batch": 512, "max_length": 128} if packing else {"batch_size": 4}
    )
    batch = next(iter(data(tmp_path, **options).train_dataloader()))
    assert {"target_index", "target_ids"} <= set(batch)
    sft = module(loss=LossOptions(implementation=loss_implementation))
    indexed = sft.compute_loss_sum(batch)
    masked = sft.compute_loss_sum({k: v for k, v in batch.items() if k not in ("target_index", "target_ids")})
    torch.testing.assert_close(indexed[0], masked[0], rtol=1e-6, atol=1e-5)
    assert int(indexed[1]) == int(masked[1]) == batch["target_ids"].numel()
