"""QLoRA on a CUDA GPU as users run it: NF4, double quantization, bf16 compute, bf16-mixed training; the merged
export (de-quantized base, bf16) gives the trained model's logits. Run with ``pytest -m gpu tests/gpu``."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_sft import SFTModule
from lit_sft.callbacks import HFExport
from lit_sft.model import LoraOptions
from lit_sft.model.quantization import QuantizationOptions
from tests.helpers import (
    arithmetic_data,
    arithmetic_rows,
    make_tokenizer,
    quiet_trainer,
    tiny_model_config,
    write_jsonl,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
INPUT = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def test_nf4_qlora_trains_on_gpu_and_exports_a_bf16_merged_model(tmp_path) -> None:
    pytest.importorskip("bitsandbytes")
    directory = str(tmp_path / "base")
    tokenizer = make_tokenizer()
    values = tiny_model_config(hidden_size=128, intermediate_size=256)
    config = AutoConfig.for_model(values.pop("model_type"), vocab_size=len(tokenizer), **values)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    module = SFTModule(
        model_name_or_path=directory,
        dtype="bfloat16",
        lora=LoraOptions(r=8, alpha=16),
        quantization=QuantizationOptions(),
        neftune_noise_alpha=5.0,
        optimizer=partial(torch.optim.AdamW, lr=2e-2),
    )
    data = arithmetic_data(
        write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(16)),
        tokenizer_name_or_path=directory,
        batch_size=4,
    )
    trainer = quiet_trainer(
        accelerator="gpu",
        precision="bf16-mixed",
        max_steps=4,
        callbacks=[HFExport(lora="merged", dtype="bfloat16")],
        default_root_dir=str(tmp_path / "run"),
    )
    trainer.fit(module, datamodule=data)
    assert trainer.callback_metrics["train/token_accuracy"] >= 0
    module.eval()
    with torch.no_grad():
        trained = module.model(input_ids=INPUT.cuda()).logits.float().cpu()
    final = tmp_path / "run" / "hf" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert merged.dtype == torch.bfloat16
    with open(final / "config.json", encoding="utf-8") as handle:
        assert "quantization_config" not in json.load(handle)
    with torch.no_grad():
        exported = merged(INPUT).logits.float()
    scale = float(trained.abs().max())
    torch.testing.assert_close(exported, trained, rtol=0, atol=0.05 * max(scale, 1.0))
