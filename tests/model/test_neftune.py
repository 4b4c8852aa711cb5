"""NEFTune: noise of the documented scale on the input embeddings in training steps, and nowhere else."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
from lightning.pytorch import Callback, seed_everything

from lit_sft import SFTModule
from lit_sft.errors import ConfigError
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl

ALPHA = 5.0


def tiny_module(**kwargs) -> SFTModule:
    seed_everything(0)
    module = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        **kwargs,
    )
    module.configure_model()
    return module


def embeddings_seen(module: SFTModule, input_ids: torch.Tensor) -> torch.Tensor:
    """What the decoder receives from the embedding layer (after NEFTune's hook, registered before this one)."""
    seen: list[torch.Tensor] = []
    embeddings = module.model.get_input_embeddings()
    handle = embeddings.register_forward_hook(lambda module, args, output: seen.append(output.detach()))
    try:
        module.model(input_ids=input_ids)
    finally:
        handle.remove()
    return seen[0]


@pytest.mark.parametrize("lora", [None, {"r": 4, "alpha": 8}], ids=["full", "lora"])
def test_noise_has_the_neftune_scale_and_only_inside_training_steps(lora) -> None:
    module = tiny_module(neftune_noise_alpha=ALPHA, lora=lora)
    input_ids = torch.randint(0, 200, (3, 40), generator=torch.Generator().manual_seed(0))
    clean = module.model.get_input_embeddings().weight[input_ids].detach()
    module.model.train()
    assert torch.equal(embeddings_seen(module, input_ids), clean)  # train mode alone: no noise
    with module.neftune.noisy():
        noise = embeddings_seen(module, input_ids) - clean
    bound = ALPHA / math.sqrt(40 * 32)  # alpha / sqrt(length * hidden_size)
    assert float(noise.abs().max()) <= bound * (1 + 1e-5)
    assert float(noise.abs().max()) > 0.95 * bound
    assert float(noise.abs().mean()) == pytest.approx(bound / 2, rel=0.05)  # uniform on [-bound, bound]
    module.model.eval()
    with module.neftune.noisy():  # evaluation inside a training step's context stays clean too
        assert torch.equal(embeddings_seen(module, input_ids), clean)


class FirstLoss(Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def test_training_is_noisy_and_validation_is_not(tmp_path) -> None:
    rows = write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(12))
    results = {}
    for alpha in (None, ALPHA):
        module = tiny_module(neftune_noise_alpha=alpha)
        data = arithmetic_data(rows, batch_size=4, val_ratio=0.3, shuffle=False)
        [validated] = quiet_trainer(limit_val_batches=None).validate(module, datamodule=data, verbose=False)
        first = FirstLoss()
        quiet_trainer(max_steps=1, callbacks=[first]).fit(module, datamodule=data)
        module.eval()
        with torch.no_grad():
            logits = module(torch.tensor([[5, 6, 7, 8]]))
        results[alpha] = validated["val/loss"], first.losses[0], logits, module
    assert results[ALPHA][0] == results[None][0]  # validation: exactly the noiseless loss
    assert results[ALPHA][1] != pytest.approx(results[None][1], abs=1e-6)  # the training step saw noise
    trained = results[ALPHA][3]
    with torch.no_grad():  # after training, evaluation logits are deterministic (no noise left on)
        torch.testing.assert_close(trained(torch.tensor([[5, 6, 7, 8]])), results[ALPHA][2], rtol=0, atol=0)


def test_a_negative_alpha_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"model\.neftune_noise_alpha"):
        SFTModule(model_config=tiny_model_config(), neftune_noise_alpha=-1.0)
