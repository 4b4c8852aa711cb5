"""Regional ``torch.compile`` and activation offloading train to the same losses as plain training."""

from __future__ import annotations

import contextlib
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from lit_sft import SFTModule
from lit_sft.errors import ConfigError
from lit_sft.model import acceleration, module
from lit_sft.model.acceleration import ActivationOffloading, compile_layers, decoder_layers
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


class StepLosses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        self.values.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def train(tmp_path, steps: int = 4, **options) -> tuple[list[float], SFTModule]:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(16))
    seed_everything(0)
    sft = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=3e-3),
        lr_scheduler=None,
        **options,
    )
    losses = StepLosses()
    data = arithmetic_data(path, batch_size=4, max_length=128, shuffle=False)
    quiet_trainer(max_steps=steps, callbacks=[losses]).fit(sft, datamodule=data)
    return losses.values, sft


def test_compiled_layers_train_to_the_same_losses(tmp_path, monkeypatch) -> None:
    # aot_eager traces and differentiates the layers as inductor does, without generating C++ (minutes on CPU).
    monkeypatch.setattr(module, "compile_layers", partial(compile_layers, backend="aot_eager"))
    plain, _ = train(tmp_path)
    compiled, sft = train(tmp_path, torch_compile=True)
    torch.testing.assert_close(compiled, plain, rtol=1e-5, atol=1e-5)
    layers = decoder_layers(sft.model)
    assert len(layers) == 2 and all(layer._compiled_call_impl is not None for layer in layers)
    assert "model.layers.0.self_attn.q_proj.weight" in sft.model.state_dict()  # checkpoints keep their names


def test_compiling_a_model_without_named_layers_is_an_error() -> None:
    with pytest.raises(ConfigError, match="names no decoder layers"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_offloaded_activations_train_to_the_same_losses(tmp_path, monkeypatch) -> None:
    plain, _ = train(tmp_path)
    contexts: list[ActivationOffloading] = []

    class Counting(ActivationOffloading):
        def __init__(self, **kwargs) -> None:
            super().__init__(**kwargs)
            contexts.append(self)

    monkeypatch.setattr(acceleration, "ActivationOffloading", Counting)
    offloaded, _ = train(tmp_path, activation_offloading=True)
    torch.testing.assert_close(offloaded, plain, rtol=1e-6, atol=1e-6)
    assert len(contexts) == 4 and all(context.offloaded > 0 for context in contexts)


def test_offloading_keeps_parameters_and_small_tensors_in_place() -> None:
    weight = torch.nn.Parameter(torch.randn(64, 64))
    hooks = ActivationOffloading(min_bytes=1024)
    small = torch.randn(4)
    assert hooks._pack(weight) is weight and hooks._pack(small) is small and hooks.offloaded == 0
    activation = torch.randn(64, 64)
    restored = hooks._unpack(hooks._pack(activation))
    assert hooks.offloaded == 1 and torch.equal(restored, activation)


class Recording(ActivationOffloading):
    """Offloading that keeps what it moved, and what it was given."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.moved: list[torch.Tensor] = []
        self.seen = 0

    def _pack(self, tensor: torch.Tensor) -> object:
        self.seen += 1
        if not self.stays(tensor):
            self.moved.append(tensor)
        return super()._pack(tensor)


@pytest.mark.parametrize("weights", ["trainable", "frozen projections"])
def test_offloading_under_autocast_leaves_the_weights_bf16_copies_on_the_device(weights: str) -> None:
    """Under bf16 autocast with float32 weights, every linear layer saves autocast's bf16 copy of its weight;
    offloading must move the activations and none of those copies (nor give different gradients)."""
    seed_everything(0)
    sft = SFTModule(model_config=tiny_model_config(), tokenizer_name_or_path="builtin:byte-chatml")
    sft.configure_model()
    if weights != "trainable":
        for name, parameter in sft.model.named_parameters():
            parameter.requires_grad_(not name.endswith("proj.weight"))
    ids = torch.randint(0, 200, (2, 24), generator=torch.Generator().manual_seed(0))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}

    def gradients(hooks: ActivationOffloading | None) -> dict[str, torch.Tensor]:
        sft.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16), hooks or contextlib.nullcontext():
            loss_sum, _ = sft.compute_loss_sum(batch)
        loss_sum.backward()
        return {name: p.grad.clone() for name, p in sft.model.named_parameters() if p.grad is not None}

    hooks = Recording(parameters=sft.model.parameters())
    offloaded = gradients(hooks)
    casts = [p.detach().to(torch.bfloat16) for p in sft.model.parameters() if p.dim() == 2]

    def is_weight_copy(tensor: torch.Tensor) -> bool:
        return any(
            candidate.shape == cast.shape and torch.equal(candidate, cast)
            for cast in casts
            for candidate in (tensor, tensor.mT)
        )

    projections = sum(name.endswith("proj.weight") for name, _ in sft.model.named_parameters())
    assert hooks.seen > len(hooks.moved) >= projections  # the activations move, and some tensors stay
    assert [tensor.shape for tensor in hooks.moved if is_weight_copy(tensor)] == []
    assert hooks.offloaded == len(hooks.moved)
    plain = gradients(None)
    assert plain.keys() == offloaded.keys() and plain
    for name, gradient in plain.items():
        torch.testing.assert_close(offloaded[name], gradient, rtol=0, atol=0, msg=name)


@pytest.mark.slow
def test_inductor_compiled_layers_train_to_the_same_losses(tmp_path) -> None:
    """The real thing (inductor, C++ on CPU): about 1.5 minutes on two cores."""
    plain, _ = train(tmp_path, steps=2)
    compiled, _ = train(tmp_path, steps=2, torch_compile=True)
    torch.testing.assert_close(compiled, plain, rtol=1e-4, atol=1e-4)
