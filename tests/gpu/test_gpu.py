"""On a CUDA GPU (``pytest -m gpu``; skipped elsewhere): bf16 training, the losses and kernels that only run
there, packed attention without flash-attn, FSDP2, generation, export, resume, compile, offloading, and the
speed metrics. ``benchmarks/gpu_check.sh`` runs these first."""

from __future__ import annotations

import importlib.util
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.callbacks import ModelCheckpoint
from transformers import AutoModelForCausalLM

from lit_sft import LossOptions, SFTDataModule, SFTModule
from lit_sft.callbacks import TrainingThroughput
from lit_sft.inference.export import export_hf
from lit_sft.inference.generation import greedy_generate
from lit_sft.model import attention
from lit_sft.training.strategies import FSDP2Strategy
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl

pytestmark = pytest.mark.gpu

#: Head dimension 64, as the flash kernels like it.
CONFIG = tiny_model_config(
    hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2
)


class StepLosses(Callback):
    def __init__(self) -> None:
        self.values: dict[int, float] = {}

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        if "train/loss" in trainer.callback_metrics:
            self.values[trainer.global_step] = float(trainer.callback_metrics["train/loss"])


def module(**kwargs) -> SFTModule:
    seed_everything(0)
    return SFTModule(
        model_config=dict(CONFIG),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        lr_scheduler=None,
        **kwargs,
    )


@pytest.fixture
def rows(tmp_path) -> str:
    return write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(64))


def data(path: str, **kwargs) -> SFTDataModule:
    return arithmetic_data(path, **{"max_length": 128, "shuffle": False, "batch_size": 8, **kwargs})


def fit(sft: SFTModule, dm: SFTDataModule, steps: int = 8, **trainer_kwargs) -> dict[int, float]:
    losses = StepLosses()
    trainer_kwargs.setdefault("precision", "bf16-mixed")
    callbacks = [losses, *trainer_kwargs.pop("callbacks", [])]
    quiet_trainer(accelerator="cuda", max_steps=steps, callbacks=callbacks, **trainer_kwargs).fit(
        sft, datamodule=dm
    )
    return losses.values


def first_batch(dm: SFTDataModule) -> dict:
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    return {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def loss_of(sft: SFTModule, batch: dict) -> torch.Tensor:
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss_sum, count = sft.compute_loss_sum(batch)
    return loss_sum / count


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_training_learns(rows, precision: str) -> None:
    losses = fit(module(), data(rows), steps=16, precision=precision)
    assert all(torch.isfinite(torch.tensor(list(losses.values()))))
    assert losses[16] < 0.8 * losses[1]


def test_chunked_plain_and_liger_losses_agree(rows) -> None:
    batch = first_batch(data(rows))
    values = {}
    liger = importlib.util.find_spec("liger_kernel") is not None
    for name in ("chunked", "plain", "liger") if liger else ("chunked", "plain"):
        sft = module(loss=LossOptions(implementation=name), liger_kernels=name == "liger").cuda()
        sft.configure_model()
        sft.model.cuda()
        values[name] = float(loss_of(sft, batch))
    assert values["plain"] == pytest.approx(values["chunked"], rel=1e-2)
    if liger:
        assert values["liger"] == pytest.approx(values["chunked"], rel=2e-2)


def gradients(sft: SFTModule, dm: SFTDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    dm.setup("fit")
    sft.zero_grad()
    sums, count = [], 0
    for batch in dm.train_dataloader():
        batch = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss_sum, targets = sft.compute_loss_sum(batch)
        sums.append(loss_sum)
        count += int(targets)
    loss = sum(sums) / count
    loss.backward()
    return loss.detach(), torch.cat([p.grad.flatten() for p in sft.parameters() if p.grad is not None])


@pytest.mark.parametrize("kernel", ["varlen", "flex"])
def test_packed_varlen_equals_padded_sdpa_in_bf16(rows, monkeypatch, kernel: str) -> None:
    if kernel == "varlen" and not attention.has_varlen_kernel():
        pytest.skip("this PyTorch has no torch.nn.attention.varlen")
    if kernel == "flex":
        monkeypatch.setattr(attention, "has_varlen_kernel", lambda: False)
    assert attention.packed_kernel(torch.zeros(1, device="cuda", dtype=torch.bfloat16)) == kernel
    reference = module(attn_implementation="sdpa")
    reference.configure_model()
    reference.model.cuda()
    padded_loss, padded_grads = gradients(reference, data(rows))
    sft = module(attn_implementation="varlen")
    sft.configure_model()
    sft.model.cuda()
    packed_loss, packed_grads = gradients(sft, data(rows, packing=True, max_tokens_per_batch=1024))
    assert float(packed_loss) == pytest.approx(float(padded_loss), rel=1e-2)
    assert torch.nn.functional.cosine_similarity(packed_grads, padded_grads, dim=0) > 0.99


def test_auto_attention_packs_with_varlen_or_flash_attn_on_cuda(rows) -> None:
    sft = module()
    losses = fit(sft, data(rows, packing=True, max_tokens_per_batch=1024), steps=4)
    assert sft.attn_implementation in ("varlen", "flash_attention_2") and len(losses) == 4


def test_fsdp2_on_one_gpu_matches_a_plain_run(rows) -> None:
    plain = fit(module(), data(rows), steps=4, precision="32-true")
    sharded = fit(module(), data(rows), steps=4, precision="32-true", strategy=FSDP2Strategy(), devices=1)
    for step, value in plain.items():
        assert sharded[step] == pytest.approx(value, rel=1e-3), step


def test_batched_generation_equals_one_prompt_at_a_time() -> None:
    sft = module()
    sft.configure_model()
    model = sft.model.cuda().eval()
    prompts = [list(range(10, 10 + n)) for n in (3, 9, 5, 12, 7, 4)]
    options = {"pad_token_id": 0, "stop_ids": [1], "max_new_tokens": 16}
    batched = greedy_generate(model, prompts, batch_size=6, **options)
    alone = greedy_generate(model, prompts, batch_size=1, **options)
    assert batched == alone


def test_export_reloads_with_the_same_logits(tmp_path) -> None:
    sft = module()
    sft.configure_model()
    model = sft.model.cuda().eval()
    export_hf(model, sft.tokenizer, str(tmp_path / "export"))
    reloaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export")).cuda().eval()
    ids = torch.randint(0, 200, (2, 16), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


class StopAt(Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        if trainer.global_step >= self.step:
            trainer.should_stop = True


def test_resume_continues_the_loss_curve(rows, tmp_path) -> None:
    full = fit(module(), data(rows), steps=8, precision="32-true")
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), every_n_train_steps=4, save_last=True)
    fit(
        module(),
        data(rows),
        steps=8,
        precision="32-true",
        callbacks=[checkpoint, StopAt(4)],
        enable_checkpointing=True,
    )
    losses = StepLosses()
    quiet_trainer(accelerator="cuda", max_steps=8, callbacks=[losses], precision="32-true").fit(
        module(), datamodule=data(rows), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt")
    )
    assert sorted(losses.values) == [5, 6, 7, 8]
    for step, value in losses.values.items():
        assert value == pytest.approx(full[step], rel=1e-4), step


def test_compiled_and_offloaded_training_match_plain(rows) -> None:
    plain = fit(module(), data(rows), steps=4)
    for options in (
        {"torch_compile": True},
        {"activation_offloading": True},
        {"gradient_checkpointing": True},
    ):
        other = fit(module(**options), data(rows), steps=4)
        for step, value in plain.items():
            assert other[step] == pytest.approx(value, rel=2e-2), (options, step)


def test_speed_and_memory_are_logged(rows) -> None:
    sft = module()
    speed = TrainingThroughput(window_size=2)
    trainer = quiet_trainer(accelerator="cuda", max_steps=6, precision="bf16-mixed", callbacks=[speed])
    trainer.fit(sft, datamodule=data(rows))
    metrics = trainer.callback_metrics
    assert float(metrics["train/peak_memory_gb"]) > 0 and float(metrics["train/tokens_per_s"]) > 0
    if speed.peak is not None:
        assert 0 < float(metrics["train/mfu"]) < 1
