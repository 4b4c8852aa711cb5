"""Gradient clipping of a fused AdamW under ``bf16-mixed`` (no GradScaler) and by norm under FSDP, and the
refusal kept for fp16."""

from __future__ import annotations

from functools import partial
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, seed_everything
from lightning.pytorch.plugins.precision import MixedPrecision

from lit_sft import SFTModule
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl

BETA1 = 0.9


class CaptureGradients(Callback):
    """The gradients as the backward pass left them: callbacks' ``on_before_optimizer_step`` runs before
    Lightning clips."""

    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self.grads = {n: p.grad.clone() for n, p in pl_module.named_parameters() if p.grad is not None}


def one_step(tmp_path, clip: float | None, **trainer_kwargs) -> tuple[SFTModule, CaptureGradients]:
    seed_everything(0)
    module = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3, betas=(BETA1, 0.999), fused=True),
    )
    data = arithmetic_data(
        write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8)), batch_size=4, shuffle=False
    )
    capture = CaptureGradients()
    trainer = quiet_trainer(max_steps=1, gradient_clip_val=clip, callbacks=[capture], **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == 1
    return module, capture


def gradients_the_optimizer_used(module: SFTModule) -> dict[str, torch.Tensor]:
    """After AdamW's first step, exp_avg = (1 - beta1) * the gradient it was given."""
    (optimizer,) = module.trainer.optimizers
    assert optimizer.defaults["fused"]
    return {
        name: optimizer.state[parameter]["exp_avg"] / (1 - BETA1)
        for name, parameter in module.named_parameters()
        if parameter in optimizer.state
    }


def clipped_by_norm(grads: dict[str, torch.Tensor], max_norm: float) -> tuple[dict[str, torch.Tensor], float]:
    """The reference: scale every gradient by max_norm / total L2 norm when that is below 1 (torch's 1e-6)."""
    total = sum(float(g.double().pow(2).sum()) for g in grads.values()) ** 0.5
    scale = min(1.0, max_norm / (total + 1e-6))
    return {name: g * scale for name, g in grads.items()}, total


def test_a_fused_adamw_under_bf16_mixed_is_clipped_by_norm(tmp_path) -> None:
    module, capture = one_step(tmp_path, clip=None, precision="bf16-mixed")
    unclipped_norm = clipped_by_norm(capture.grads, 1.0)[1]
    torch.testing.assert_close(gradients_the_optimizer_used(module), capture.grads, rtol=1e-5, atol=1e-8)

    max_norm = unclipped_norm / 4  # well inside the clipping range
    module, capture = one_step(tmp_path, clip=max_norm, precision="bf16-mixed")
    expected, total = clipped_by_norm(capture.grads, max_norm)
    assert total == pytest.approx(unclipped_norm, rel=1e-5)  # the same step as the unclipped run
    used = gradients_the_optimizer_used(module)
    torch.testing.assert_close(used, expected, rtol=1e-5, atol=1e-8)
    used_norm = sum(float(g.double().pow(2).sum()) for g in used.values()) ** 0.5
    assert used_norm == pytest.approx(max_norm, rel=1e-4)


def test_a_fused_adamw_under_bf16_mixed_is_clipped_by_value(tmp_path) -> None:
    module, capture = one_step(tmp_path, clip=None, precision="bf16-mixed")
    largest = max(float(g.abs().max()) for g in capture.grads.values())
    module, capture = one_step(
        tmp_path, clip=largest / 10, gradient_clip_algorithm="value", precision="bf16-mixed"
    )
    expected = {name: g.clamp(-largest / 10, largest / 10) for name, g in capture.grads.items()}
    assert any(not torch.equal(expected[name], g) for name, g in capture.grads.items())
    torch.testing.assert_close(gradients_the_optimizer_used(module), expected, rtol=1e-5, atol=1e-8)


def test_fp16_with_its_grad_scaler_still_refuses_a_fused_optimizer(tmp_path) -> None:
    # Under fp16 the fused step unscales internally, after clipping would have measured scaled gradients.
    # (Lightning turns precision="16-mixed" into bf16 on a CPU, so the plugin is given directly.)
    with pytest.raises(RuntimeError, match="does not allow for gradient clipping"):
        one_step(tmp_path, clip=1.0, plugins=[MixedPrecision("16-mixed", "cpu")])


def test_clipping_by_norm_under_fsdp_uses_the_root_modules_clip_grad_norm(tmp_path) -> None:
    """Lightning's FSDPPrecision refuses clipping by norm (it has no reference to the root FSDP module); the
    recipes' FSDP overlay clips by norm, so lit_sft clips through the strategy's root module."""
    import torch.distributed as dist
    from lightning.pytorch.plugins.precision import FSDPPrecision
    from lightning.pytorch.utilities.exceptions import MisconfigurationException
    from torch.distributed.fsdp import FullyShardedDataParallel

    from lit_sft.training.clipping import clip_gradients

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        layers = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        reference = {name: p.detach().clone() for name, p in layers.named_parameters()}
        # device_id: FSDP1 refuses a CPU-only machine unless told the CPU is its device.
        root = FullyShardedDataParallel(layers, device_id=torch.device("cpu"), use_orig_params=True)
        inputs = torch.randn(5, 6)
        root(inputs).pow(2).sum().backward()
        grads = {
            name.removeprefix("_fsdp_wrapped_module."): p.grad.clone() for name, p in root.named_parameters()
        }
        # The reference gradients, computed without FSDP from the same weights.
        plain = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
        plain.load_state_dict(reference)
        plain(inputs).pow(2).sum().backward()
        torch.testing.assert_close(grads, {n: p.grad for n, p in plain.named_parameters()})
        max_norm = clipped_by_norm(grads, 1.0)[1] / 4
        expected, _ = clipped_by_norm(grads, max_norm)

        plugin = FSDPPrecision("bf16-mixed")
        optimizer = torch.optim.AdamW(root.parameters(), fused=True)
        with pytest.raises(MisconfigurationException, match="is currently not supported for `FSDPPrecision`"):
            plugin.clip_gradients(optimizer, max_norm, "norm")  # what Lightning alone does
        trainer = SimpleNamespace(precision_plugin=plugin, strategy=SimpleNamespace(model=root))
        clip_gradients(SimpleNamespace(trainer=trainer), optimizer, max_norm, None)
        clipped = {name.removeprefix("_fsdp_wrapped_module."): p.grad for name, p in root.named_parameters()}
        torch.testing.assert_close(clipped, expected, rtol=1e-5, atol=1e-8)
    finally:
        dist.destroy_process_group()
