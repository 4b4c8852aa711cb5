"""``model.loss.type`` (nll, dft) and the per-token metrics (token accuracy, entropy), against direct
computations from the model's full logits."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from lit_sft import SFTModule
from lit_sft.errors import ConfigError
from lit_sft.model import LossOptions
from lit_sft.model.loss import ChunkedLoss, PlainLoss, chunked_token_terms, select_loss, token_terms
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def direct(logits: torch.Tensor, targets: torch.Tensor, loss_type: str) -> tuple[torch.Tensor, float, float]:
    """Loss sum, argmax hits and entropy sum written out from the definitions (no shared code)."""
    probabilities = torch.softmax(logits.double(), dim=-1)
    picked = probabilities[torch.arange(len(targets)), targets]
    weight = picked.detach() if loss_type == "dft" else torch.ones_like(picked)
    loss_sum = -(weight * picked.log()).sum()
    hits = sum(int(row.argmax()) == int(target) for row, target in zip(logits, targets, strict=True))
    entropy = float(torch.distributions.Categorical(logits=logits.detach().double()).entropy().sum())
    return loss_sum, float(hits), entropy


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_token_terms_match_the_definitions(loss_type: str) -> None:
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(9, 13, generator=generator) * 3).requires_grad_()
    targets = torch.randint(0, 13, (9,), generator=generator)
    targets[:3] = logits[:3].argmax(-1)  # some hits for certain
    loss_sum, sums = token_terms(logits, targets, loss_type)
    expected, hits, entropy = direct(logits, targets, loss_type)
    torch.testing.assert_close(loss_sum.double(), expected.detach(), rtol=1e-5, atol=1e-5)
    assert sums is not None and float(sums[0]) == hits and float(sums[1]) == pytest.approx(entropy, rel=1e-5)
    (grad,) = torch.autograd.grad(loss_sum, logits)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    torch.testing.assert_close(grad.double(), expected_grad.double(), rtol=1e-5, atol=1e-6)


def test_dft_differs_from_nll_by_the_detached_probability() -> None:
    """A negative control for the test above: DFT's gradient is NLL's scaled per token by p (not p's gradient)."""
    logits = torch.randn(5, 7, generator=torch.Generator().manual_seed(1)).requires_grad_()
    targets = torch.tensor([0, 1, 2, 3, 4])
    grads = {
        kind: torch.autograd.grad(token_terms(logits, targets, kind)[0], logits)[0] for kind in ("nll", "dft")
    }
    p = torch.softmax(logits.detach(), -1)[torch.arange(5), targets]
    torch.testing.assert_close(grads["dft"], grads["nll"] * p[:, None])
    assert not torch.allclose(grads["dft"], grads["nll"], atol=1e-3)


@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_chunked_terms_equal_the_unchunked_ones_with_gradients(loss_type: str) -> None:
    generator = torch.Generator().manual_seed(2)
    head = torch.nn.Linear(8, 11, bias=False)
    hidden = torch.randn(10, 8, generator=generator, requires_grad=True)
    targets = torch.randint(0, 11, (10,), generator=generator)
    whole, whole_sums = token_terms(head(hidden), targets, loss_type)
    whole_grads = torch.autograd.grad(whole, [hidden, head.weight])
    chunked, chunked_sums = chunked_token_terms(hidden, targets, head, 3, loss_type)
    chunked_grads = torch.autograd.grad(chunked, [hidden, head.weight])
    torch.testing.assert_close(chunked, whole)
    torch.testing.assert_close(chunked_sums, whole_sums)
    for got, expected in zip(chunked_grads, whole_grads, strict=True):
        torch.testing.assert_close(got, expected)


def tiny_module(**loss) -> SFTModule:
    seed_everything(0)
    module = SFTModule(
        model_config=tiny_model_config(initializer_range=0.3),
        tokenizer_name_or_path="builtin:byte-chatml",
        loss=LossOptions(**loss),
        optimizer=partial(torch.optim.SGD, lr=0.0),
    )
    module.configure_model()
    return module


def rows_batch(tmp_path) -> dict:
    dm = arithmetic_data(write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(6)), batch_size=6)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


@pytest.mark.parametrize("implementation", ["chunked", "plain"])
@pytest.mark.parametrize("loss_type", ["nll", "dft"])
def test_each_loss_path_gives_the_direct_loss_and_metrics(
    tmp_path, implementation: str, loss_type: str
) -> None:
    module = tiny_module(implementation=implementation, type=loss_type, chunk_size=7)
    assert isinstance(module.token_loss, ChunkedLoss if implementation == "chunked" else PlainLoss)
    batch = rows_batch(tmp_path)
    loss_sum, count = module.compute_loss_sum(batch)
    sums = module.token_loss.take_metrics()
    assert module.token_loss.take_metrics() is None  # taken once
    with torch.no_grad():
        logits = module.model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")).logits
    labels = batch["labels"][:, 1:]
    mask = labels != -100
    expected, hits, entropy = direct(logits[:, :-1][mask], labels[mask], loss_type)
    assert int(count) == int(mask.sum())
    assert float(loss_sum.detach()) == pytest.approx(float(expected), rel=1e-5)
    assert float(sums[0]) == hits and float(sums[1]) == pytest.approx(entropy, rel=1e-5)


def test_token_metrics_can_be_turned_off_and_liger_refuses_dft() -> None:
    module = tiny_module(token_metrics=False)
    assert module.token_loss.metrics is False
    with pytest.raises(ConfigError, match=r"model.loss.type=dft .* not liger"):
        select_loss(
            LossOptions(implementation="liger", type="dft"), module.model, module, module.model_inputs
        )
    with pytest.raises(ConfigError, match=r"model\.loss\.type must be nll or dft"):
        SFTModule(
            model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml", loss={"type": "x"}
        )


class Batches(Callback):
    def __init__(self) -> None:
        self.batches: list[dict] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append({name: value for name, value in batch.items()})


def test_train_metrics_are_per_token_means_over_the_optimizer_step(tmp_path) -> None:
    """Micro-batches of 3, 3 and 2 rows of different lengths: the logged value is hits / targets of the whole
    step (a mean of micro-batch means would differ), with an lr of 0 so the model stays as it was."""
    module = tiny_module()
    dm = arithmetic_data(
        write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(8)), batch_size=3, shuffle=False
    )
    seen = Batches()
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=3, callbacks=[seen])
    trainer.fit(module, datamodule=dm)
    assert len(seen.batches) == 3
    hits = entropy = targets = 0.0
    per_batch = []
    module.eval()
    for batch in seen.batches:
        with torch.no_grad():
            logits = module.model(
                input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")
            ).logits
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        _, batch_hits, batch_entropy = direct(logits[:, :-1][mask], labels[mask], "nll")
        hits, entropy, targets = hits + batch_hits, entropy + batch_entropy, targets + int(mask.sum())
        per_batch.append(batch_entropy / int(mask.sum()))
    metrics = trainer.callback_metrics
    assert float(metrics["train/token_accuracy"]) == pytest.approx(hits / targets, rel=1e-5)
    assert float(metrics["train/entropy"]) == pytest.approx(entropy / targets, rel=1e-5)
    assert abs(sum(per_batch) / 3 - entropy / targets) > 1e-4  # the mean of means is told apart


def test_validation_metrics_are_per_token_means_over_the_whole_set(tmp_path) -> None:
    rows = write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(10))
    dm = arithmetic_data(rows, batch_size=3, val_ratio=0.7, shuffle=False)  # 7 rows: batches of 3, 3, 1
    module = tiny_module()
    [metrics] = quiet_trainer(limit_val_batches=None).validate(module, datamodule=dm, verbose=False)
    hits = entropy = targets = 0.0
    for batch in dm.val_dataloader():
        with torch.no_grad():
            logits = module.model(
                input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask")
            ).logits
        labels = batch["labels"][:, 1:]
        mask = labels != -100
        _, batch_hits, batch_entropy = direct(logits[:, :-1][mask], labels[mask], "nll")
        hits, entropy, targets = hits + batch_hits, entropy + batch_entropy, targets + int(mask.sum())
    assert metrics["val/token_accuracy"] == pytest.approx(hits / targets, rel=1e-5)
    assert metrics["val/entropy"] == pytest.approx(entropy / targets, rel=1e-5)


def test_the_metrics_come_from_the_loss_chunks_without_another_pass() -> None:
    """The head runs once per chunk of at most chunk_size rows in the forward: no full-vocabulary logits for the
    batch and no second pass for the metrics."""
    head = torch.nn.Linear(8, 11, bias=False)
    rows_seen: list[int] = []

    def logits_fn(hidden: torch.Tensor) -> torch.Tensor:
        rows_seen.append(hidden.shape[0])
        return head(hidden)

    hidden = torch.randn(10, 8, requires_grad=True)
    _, sums = chunked_token_terms(hidden, torch.randint(0, 11, (10,)), logits_fn, chunk_size=3)
    assert sums is not None and rows_seen == [3, 3, 3, 1]


def test_token_metrics_off_logs_none(tmp_path) -> None:
    module = tiny_module(token_metrics=False)
    dm = arithmetic_data(
        write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(8)), batch_size=4, val_ratio=0.5
    )
    trainer = quiet_trainer(max_steps=1, limit_val_batches=None)
    trainer.fit(module, datamodule=dm)
    assert "train/loss" in trainer.callback_metrics and "val/loss" in trainer.callback_metrics
    assert not any("token_accuracy" in name or "entropy" in name for name in trainer.callback_metrics)
