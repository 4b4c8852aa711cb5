from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from transformers import AutoModelForCausalLM

from lit_sft import SFTDataModule, SFTModule
from lit_sft.data.collate import add_targets
from lit_sft.errors import ConfigError
from lit_sft.model import LoraOptions, LossOptions
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def tiny_module(**kwargs) -> SFTModule:
    kwargs.setdefault("model_config", tiny_model_config())
    kwargs.setdefault("tokenizer_name_or_path", "builtin:byte-chatml")
    return SFTModule(**kwargs)


def data(tmp_path, rows=None, **kwargs) -> SFTDataModule:
    path = write_jsonl(str(tmp_path / "train.jsonl"), rows or arithmetic_rows(8))
    kwargs.setdefault("shuffle", False)
    return arithmetic_data(path, **kwargs)


class CaptureStep(Callback):
    """Keeps the gradients and the logged loss of every optimizer step."""

    def __init__(self) -> None:
        self.grads: list[dict[str, torch.Tensor]] = []
        self.losses: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads.append({n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None})

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if len(self.losses) < trainer.global_step:
            self.losses.append(float(trainer.callback_metrics["train/loss"]))


def first_batch(tmp_path, size: int = 4) -> dict:
    dm = data(tmp_path, batch_size=size)
    dm.setup("fit")
    return next(iter(dm.train_dataloader()))


def loss_and_grads(module: SFTModule, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    module.zero_grad()
    loss_sum, count = module.compute_loss_sum(batch)
    (loss_sum / count).backward()
    return loss_sum / count, {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


def test_random_init_takes_vocab_and_special_ids_from_the_tokenizer() -> None:
    module = tiny_module()
    module.configure_model()
    config = module.model.config
    assert config.vocab_size == 259
    assert (config.eos_token_id, config.pad_token_id) == (258, 256)
    assert config.use_cache is False


def test_pretrained_directory_loads_with_from_pretrained(tiny_model_dir) -> None:
    module = SFTModule(model_name_or_path=tiny_model_dir)
    module.configure_model()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    input_ids = torch.randint(0, 200, (2, 9))
    torch.testing.assert_close(module(input_ids), reference(input_ids).logits)
    assert module.tokenizer.chat_template.startswith("{%- if tools %}")


class TrainingFlags(Callback):
    """Records which submodules are in train mode when each training batch starts."""

    def __init__(self) -> None:
        self.in_eval: list[list[str]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.in_eval.append([name for name, module in pl_module.named_modules() if not module.training])


@pytest.mark.parametrize("lora", [None, LoraOptions(r=4, alpha=8)], ids=["full", "lora"])
def test_a_pretrained_model_trains_in_train_mode(tiny_model_dir, tmp_path, lora) -> None:
    """``from_pretrained`` returns a model in eval mode, and Lightning keeps the modes it finds: dropout
    and gradient checkpointing (which checks ``self.training``) would be silently off."""
    module = SFTModule(model_name_or_path=tiny_model_dir, lora=lora, gradient_checkpointing=True, dropout=0.1)
    flags = TrainingFlags()
    quiet_trainer(max_steps=2, callbacks=[flags]).fit(module, datamodule=data(tmp_path, batch_size=4))
    assert flags.in_eval == [[], []]


@pytest.mark.parametrize("implementation", ["chunked", "plain"])
def test_a_micro_batch_without_targets_still_gives_every_parameter_a_gradient(
    tmp_path, implementation
) -> None:
    """Ranks that run out of rows get a fully masked micro-batch; DDP waits for every parameter's gradient
    (an untied LM head included) on every rank."""
    module = tiny_module(
        model_config=tiny_model_config(tie_word_embeddings=False),
        loss=LossOptions(implementation=implementation),
    )
    module.configure_model()
    batch = first_batch(tmp_path)
    batch["labels"].fill_(-100)  # as MicroBatchDataset masks a padding micro-batch
    add_targets(batch)
    loss_sum, count = module.compute_loss_sum(batch)
    loss_sum.backward()
    assert int(count) == 0 and float(loss_sum) == 0.0
    missing = [name for name, p in module.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing


def test_dtype_is_applied() -> None:
    module = tiny_module(dtype="bfloat16")
    module.configure_model()
    assert {p.dtype for p in module.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({}, "exactly one of"),
        ({"model_name_or_path": "x", "model_config": {"model_type": "qwen2"}}, "exactly one of"),
        ({"model_config": {"hidden_size": 8}}, "needs a model_type"),
        ({"model_config": {"model_type": "qwen2"}, "dtype": "float64"}, "model.dtype"),
    ],
)
def test_model_configuration_mistakes(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SFTModule(**kwargs)


def test_a_missing_model_directory_is_a_config_error(tmp_path) -> None:
    module = SFTModule(
        model_name_or_path=str(tmp_path / "nowhere"), tokenizer_name_or_path="builtin:byte-chatml"
    )
    with pytest.raises(ConfigError, match="cannot load a model"):
        module.configure_model()


def test_gradient_checkpointing_gives_the_same_loss_and_gradients(tmp_path) -> None:
    batch = first_batch(tmp_path)
    results = []
    for checkpointing in (False, True):
        seed_everything(0)
        module = tiny_module(gradient_checkpointing=checkpointing)
        module.configure_model()
        module.train()
        results.append(loss_and_grads(module, batch))
    (loss, grads), (loss_ckpt, grads_ckpt) = results
    torch.testing.assert_close(loss, loss_ckpt)
    assert grads.keys() == grads_ckpt.keys() and len(grads) > 10
    for name in grads:
        torch.testing.assert_close(grads[name], grads_ckpt[name], msg=name)


def test_lora_with_gradient_checkpointing_still_trains_the_adapters(tmp_path) -> None:
    """Reentrant checkpointing with frozen embeddings gives adapters no gradient (a known trap)."""
    batch = first_batch(tmp_path)
    results = []
    for checkpointing in (False, True):
        seed_everything(0)
        module = tiny_module(lora=LoraOptions(r=4, alpha=8), gradient_checkpointing=checkpointing)
        module.configure_model()
        module.train()
        with torch.no_grad():  # make lora_B non-zero so that lora_A gets a gradient too
            for name, parameter in module.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.02)
        results.append(loss_and_grads(module, batch)[1])
    plain, checkpointed = results
    assert plain.keys() == checkpointed.keys()
    assert plain and all("lora_" in name for name in plain)
    for name in plain:
        assert checkpointed[name].abs().sum() > 0, name
        torch.testing.assert_close(plain[name], checkpointed[name], msg=name)


def test_lora_trains_adapters_and_leaves_base_weights_alone(tmp_path) -> None:
    seed_everything(0)
    module = tiny_module(
        lora=LoraOptions(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
    )
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = quiet_trainer(max_steps=3)
    trainer.fit(module, datamodule=data(tmp_path, batch_size=4))
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trainable and all("lora_A" in n or "lora_B" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
    }
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    assert optimized == {id(p) for n, p in module.named_parameters() if n in trainable}
    for name, parameter in module.named_parameters():
        if name in trainable:
            assert not torch.equal(parameter, before[name]), f"adapter {name} did not change"
        else:
            assert torch.equal(parameter, before[name]), f"base weight {name} changed"


def test_full_fine_tuning_changes_every_weight(tmp_path) -> None:
    seed_everything(0)
    module = tiny_module(optimizer=partial(torch.optim.AdamW, lr=1e-2))
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    quiet_trainer(max_steps=2).fit(module, datamodule=data(tmp_path, batch_size=4))
    unchanged = [n for n, p in module.named_parameters() if torch.equal(p, before[n])]
    assert unchanged == []


def run_one_step(tmp_path, batch_size: int, accumulate: int) -> CaptureStep:
    seed_everything(0)
    module = tiny_module(
        model_config=tiny_model_config(initializer_range=0.3),  # peaked predictions: token losses differ
        lr_scheduler=None,
        optimizer=partial(torch.optim.SGD, lr=0.1),
    )
    capture = CaptureStep()
    trainer = quiet_trainer(max_steps=1, accumulate_grad_batches=accumulate, callbacks=[capture])
    trainer.fit(module, datamodule=data(tmp_path, batch_size=batch_size))
    assert trainer.global_step == 1
    return capture


def test_loss_is_a_per_token_mean_over_the_step_whatever_the_accumulation(tmp_path) -> None:
    """Invariant 6: 8 x 1, 2 x 4 and 3 x 3 (micro-batches of 3, 3 and 2 rows) give one loss and gradient."""
    reference = run_one_step(tmp_path, batch_size=8, accumulate=1)
    for batch_size, accumulate in [(2, 4), (3, 3), (1, 8)]:
        other = run_one_step(tmp_path, batch_size=batch_size, accumulate=accumulate)
        assert other.losses[0] == pytest.approx(reference.losses[0], rel=1e-6)
        for name, grad in reference.grads[0].items():
            # fp32 tolerance: summation order differs, so compare against the tensor's own scale.
            scale = float(grad.abs().max())
            torch.testing.assert_close(other.grads[0][name], grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


def test_the_accumulation_test_would_catch_a_mean_of_micro_batch_means(tmp_path) -> None:
    """The rows differ in length, so averaging micro-batch means gives a clearly different loss and gradient."""
    dm = data(tmp_path, batch_size=2)
    dm.setup("fit")
    seed_everything(0)
    module = tiny_module(model_config=tiny_model_config(initializer_range=0.3))
    module.configure_model()
    batches = list(dm.train_dataloader())
    sums, counts = zip(*(module.compute_loss_sum(batch) for batch in batches), strict=True)
    per_token = sum(sums) / sum(counts)
    mean_of_means = sum(s / c for s, c in zip(sums, counts, strict=True)) / len(sums)
    assert abs(float((per_token - mean_of_means).detach())) > 1e-3  # vs. agreement to 1e-6 above
    grad_per_token = torch.autograd.grad(per_token, module.model.lm_head.weight, retain_graph=True)[0]
    grad_mean_of_means = torch.autograd.grad(mean_of_means, module.model.lm_head.weight)[0]
    assert not torch.allclose(grad_per_token, grad_mean_of_means, rtol=1e-2, atol=1e-5)


def test_validation_loss_is_a_per_token_mean_over_the_whole_set(tmp_path) -> None:
    dm = data(tmp_path, rows=arithmetic_rows(10), batch_size=3, val_ratio=0.7)  # 7 rows: batches of 3, 3, 1
    seed_everything(0)
    module = tiny_module()
    [metrics] = quiet_trainer(limit_val_batches=None).validate(module, datamodule=dm, verbose=False)
    sums, counts = zip(*(module.compute_loss_sum(batch) for batch in dm.val_dataloader()), strict=True)
    assert metrics["val/loss"] == pytest.approx(float(sum(sums) / sum(counts)), rel=1e-5)


def test_batches_without_step_counts_are_refused_with_a_clear_message(tmp_path) -> None:
    module = tiny_module()
    module.configure_model()
    batch = first_batch(tmp_path)
    del batch["step_trained_tokens"]
    with pytest.raises(ConfigError, match="MicroBatchSampler"):
        module.training_step(batch, 0)
