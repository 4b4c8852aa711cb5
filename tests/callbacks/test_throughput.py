"""`TrainingThroughput`: token rates from the batches' own counts, model FLOPs, MFU against a known peak, and
the run summary's line."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything
from transformers import AutoConfig, AutoModelForCausalLM

from lit_sft import LoraOptions, SFTModule
from lit_sft.callbacks import RunSummary, TrainingThroughput
from lit_sft.callbacks import throughput as throughput_module
from lit_sft.callbacks.throughput import TrainingFlops, peak_flops
from lit_sft.errors import ConfigError
from lit_sft.model import LossOptions
from lit_sft.model.quantization import QuantizationOptions, quantization_problems
from tests.helpers import (
    arithmetic_data,
    arithmetic_rows,
    make_tokenizer,
    quiet_trainer,
    tiny_model_config,
    write_jsonl,
)


def tiny(**kwargs) -> SFTModule:
    seed_everything(0)
    sft = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        lr_scheduler=None,
        **kwargs,
    )
    sft.configure_model()
    return sft


def test_training_flops_count_six_per_trained_weight_and_four_per_frozen_one() -> None:
    full = tiny()
    named = dict(full.model.named_parameters())
    decoder = sum(p.numel() for n, p in named.items() if "embed_tokens" not in n and "lm_head" not in n)
    head = named["lm_head.weight"].numel()
    flops = TrainingFlops.of(full)
    assert (flops.per_token, flops.per_head_token, flops.head_on_targets) == (6 * decoder, 6 * head, True)
    assert flops.step(tokens=100, trained_tokens=30) == 6 * decoder * 100 + 6 * head * 30
    assert not TrainingFlops.of(tiny(loss=LossOptions(implementation="plain"))).head_on_targets

    lora = TrainingFlops.of(tiny(lora=LoraOptions(r=4, alpha=8)))
    adapters = sum(
        p.numel() for n, p in tiny(lora=LoraOptions(r=4, alpha=8)).model.named_parameters() if "lora_" in n
    )
    assert lora.per_token == 4 * (decoder + adapters) + 2 * adapters  # frozen weights: no weight gradient
    assert lora.per_head_token == 4 * head


@pytest.fixture(scope="module")
def model_64(tmp_path_factory) -> str:
    """A tiny model whose layers are wide enough for 4-bit blocks (64 values per block)."""
    directory = str(tmp_path_factory.mktemp("tiny64"))
    tokenizer = make_tokenizer()
    values = tiny_model_config(hidden_size=64, intermediate_size=128)
    config = AutoConfig.for_model(values.pop("model_type"), vocab_size=len(tokenizer), **values)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_qlora_flops_count_every_4_bit_weight_not_its_packed_bytes(model_64) -> None:
    pytest.importorskip("bitsandbytes")
    if quantization_problems(on_gpu=False):
        pytest.skip("bitsandbytes has no CPU backend here")
    qlora = SFTModule(
        model_name_or_path=model_64,
        lora=LoraOptions(r=4, alpha=8),
        quantization=QuantizationOptions(bnb_4bit_compute_dtype="float32"),
    )
    qlora.configure_model()
    layer = qlora.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer.weight).__name__ == "Params4bit" and layer.weight.numel() == 64 * 64 // 2
    plain = AutoModelForCausalLM.from_pretrained(model_64)  # the same weights, unquantized
    named = dict(plain.named_parameters())
    decoder = sum(p.numel() for n, p in named.items() if "embed_tokens" not in n and "lm_head" not in n)
    adapters = sum(p.numel() for n, p in qlora.model.named_parameters() if "lora_" in n)
    flops = TrainingFlops.of(qlora)
    assert flops.per_token == 4 * (decoder + adapters) + 2 * adapters
    assert flops.per_head_token == 4 * named["lm_head.weight"].numel()


def test_peak_flops_by_device_name_and_by_option(monkeypatch) -> None:
    assert peak_flops(torch.device("cpu"), "32-true") is None
    assert peak_flops(torch.device("cpu"), "32-true", peak_tflops=2.0) == 2e12
    cuda = torch.device("cuda", 0)
    for name, expected in [("NVIDIA H200", 989.4e12), ("NVIDIA H100 80GB HBM3", 989.4e12),
                           ("NVIDIA H100 PCIe", 756e12), ("NVIDIA A100-SXM4-80GB", 312e12)]:  # fmt: skip
        monkeypatch.setattr(throughput_module.torch.cuda, "get_device_name", lambda device=None, n=name: n)
        assert peak_flops(cuda, "bf16-mixed") == expected, name
    with pytest.raises(ConfigError):
        TrainingThroughput(window_size=0)


def test_rates_mfu_and_summary_of_a_run(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(16))
    data = arithmetic_data(path, batch_size=4, max_length=128, shuffle=False)
    sft = tiny()
    speed, summary = TrainingThroughput(window_size=10, peak_tflops=1e-3), RunSummary()
    trainer = quiet_trainer(max_steps=4, callbacks=[speed, summary])  # one epoch: every row once
    trainer.fit(sft, datamodule=data)
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items()}
    split = data.summaries["train"]
    # The window spans the whole epoch: the ratio of the rates is the epoch's ratio of trained to real tokens.
    assert metrics["train/trained_tokens_per_s"] / metrics["train/tokens_per_s"] == pytest.approx(
        split.trained_tokens / split.tokens,
        rel=1e-6,  # logged as float32
    )
    flops = TrainingFlops.of(sft)
    expected_mfu = (
        flops.per_token * metrics["train/tokens_per_s"]
        + flops.per_head_token * metrics["train/trained_tokens_per_s"]
    ) / 1e9
    assert metrics["train/mfu"] == pytest.approx(expected_mfu, rel=1e-6)
    assert "train/peak_memory_gb" not in metrics  # CUDA only
    assert speed.measured[1] == split.tokens - first_step_tokens(data)  # the first step is warm-up
    [line] = [line for line in summary.lines(trainer) if line.startswith("throughput:")]
    assert "trained tokens/s" in line and "MFU" in line and "3 steps" in line


def first_step_tokens(data) -> int:
    return int(next(iter(data.train_dataloader()))["step_tokens"])
