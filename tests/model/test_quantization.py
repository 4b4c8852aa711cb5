"""QLoRA: the options refuse what cannot run, the start-up check says where bitsandbytes cannot run, and (with
bitsandbytes' CPU backend) a 4-bit run trains and exports merged into the de-quantized base."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import types
from functools import partial

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_sft import SFTModule
from lit_sft.callbacks import HFExport
from lit_sft.errors import ConfigError
from lit_sft.model import LoraOptions, LossOptions
from lit_sft.model.build import load_module
from lit_sft.model.quantization import QuantizationOptions, drop_quantized_base, quantization_problems
from lit_sft.training.preflight import preflight
from tests.helpers import (
    arithmetic_data,
    arithmetic_rows,
    make_tokenizer,
    quiet_trainer,
    tiny_model_config,
    write_jsonl,
)

INPUT = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lora": None}, "set model.lora too"),
        ({"model_name_or_path": None, "model_config": tiny_model_config()}, "set model.model_name_or_path"),
        ({"quantization": {"load_in_4bit": False}}, "load_in_4bit must be true"),
        ({"quantization": {"bnb_4bit_quant_type": "int4"}}, "must be nf4 or fp4"),
        ({"quantization": {"bnb_4bit_compute_dtype": "auto"}}, "must be a dtype, not auto"),
    ],
)
def test_quantization_options_refuse_what_cannot_run(kwargs: dict, message: str) -> None:
    arguments = {"model_name_or_path": "some/model", "lora": LoraOptions(r=4), "quantization": {}, **kwargs}
    with pytest.raises(ConfigError, match=message):
        SFTModule(tokenizer_name_or_path="builtin:byte-chatml", **arguments)


def test_the_start_up_check_says_when_bitsandbytes_is_missing_or_has_no_cpu_backend(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails
    assert quantization_problems(on_gpu=False) == [
        "model.quantization needs bitsandbytes: pip install -e '.[qlora]'"
    ]
    assert quantization_problems(on_gpu=True) == quantization_problems(on_gpu=False)

    def no_cpu_backend(*args, **kwargs):
        raise RuntimeError("no kernel for device cpu")

    functional = types.SimpleNamespace(quantize_4bit=no_cpu_backend)
    fake = types.SimpleNamespace(__version__="0.42.0", functional=functional)
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    monkeypatch.setitem(sys.modules, "bitsandbytes.functional", functional)
    [problem] = quantization_problems(on_gpu=False)
    assert problem.startswith(
        "model.quantization needs a CUDA GPU here: bitsandbytes 0.42.0 has no CPU backend"
    )
    assert "\n" not in problem
    assert quantization_problems(on_gpu=True) == []

    module = SFTModule(
        model_name_or_path="some/model", lora=LoraOptions(r=4), quantization=QuantizationOptions()
    )
    trainer = quiet_trainer(default_root_dir="/tmp")
    with pytest.raises(ConfigError, match=r"model\.quantization needs a CUDA GPU here"):
        preflight(trainer, module, types.SimpleNamespace())


def test_checkpoints_leave_out_the_4_bit_base_only() -> None:
    state = {
        "model.base_model.model.layers.0.q_proj.base_layer.weight": 1,
        "model.base_model.model.layers.0.q_proj.base_layer.weight.absmax": 2,
        "model.base_model.model.layers.0.q_proj.base_layer.weight.quant_state.bitsandbytes__nf4": 3,
        "model.base_model.model.layers.0.q_proj.base_layer.bias": 4,
        "model.base_model.model.layers.0.q_proj.lora_A.default.weight": 5,
        "model.base_model.model.norm.weight": 6,
    }
    assert sorted(drop_quantized_base(state)) == [
        "model.base_model.model.layers.0.q_proj.base_layer.bias",
        "model.base_model.model.layers.0.q_proj.lora_A.default.weight",
        "model.base_model.model.norm.weight",
    ]


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


def test_a_4_bit_run_trains_on_cpu_and_exports_merged_into_the_dequantized_base(tmp_path, model_64) -> None:
    pytest.importorskip("bitsandbytes")
    if quantization_problems(on_gpu=False):
        pytest.skip("bitsandbytes has no CPU backend here")
    module = SFTModule(
        model_name_or_path=model_64,
        lora=LoraOptions(r=4, alpha=16),
        quantization=QuantizationOptions(bnb_4bit_compute_dtype="float32"),
        optimizer=partial(torch.optim.AdamW, lr=2e-2),
    )
    data = arithmetic_data(
        write_jsonl(str(tmp_path / "t.jsonl"), arithmetic_rows(8)),
        tokenizer_name_or_path=model_64,
        batch_size=4,
    )
    trainer = quiet_trainer(
        max_steps=3, callbacks=[HFExport(lora="both")], default_root_dir=str(tmp_path / "run")
    )
    trainer.fit(module, datamodule=data)
    layer = module.model.get_base_model().model.layers[0].self_attn.q_proj.base_layer
    assert type(layer).__name__ == "Linear4bit"
    module.model.train()  # bitsandbytes' CPU inference kernels round differently from its training path
    with torch.no_grad():
        trained = module.model(input_ids=INPUT).logits
        module.model.disable_adapter_layers()
        quantized_base = module.model(input_ids=INPUT).logits
        module.model.enable_adapter_layers()
    final = tmp_path / "run" / "hf" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert type(merged.model.layers[0].self_attn.q_proj) is torch.nn.Linear
    with open(final / "config.json", encoding="utf-8") as handle:
        assert "quantization_config" not in json.load(handle)
    with torch.no_grad():
        exported = merged(INPUT).logits
    # bitsandbytes' CPU kernels agree with the de-quantized weights to ~1e-3; the adapters moved the logits by far
    # more than that, so a merge that lost them (or merged into requantized layers) fails.
    assert float((trained - quantized_base).abs().max()) > 0.05
    torch.testing.assert_close(exported, trained, rtol=0, atol=5e-3)
    with open(final / "adapter" / "adapter_config.json", encoding="utf-8") as handle:
        assert json.load(handle)["base_model_name_or_path"] == model_64

    # A checkpoint leaves the 4-bit base out and loads back (quantized again from the pretrained weights).
    checkpoint = str(tmp_path / "qlora.ckpt")
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(".absmax" in name or ".quant_state." in name for name in saved)
    assert any("lora_A" in name for name in saved)
    loaded = load_module(checkpoint)
    loaded.model.train()
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(input_ids=INPUT).logits, trained)


def test_the_qlora_overlay_composes_with_a_lora_recipe_and_is_in_help(capsys) -> None:
    from lit_sft.commands.fit import main

    root = os.path.join(os.path.dirname(__file__), "..", "..", "configs")
    cli = main(
        [
            "--config", os.path.join(root, "qwen2.5-0.5b", "gsm8k_lora.yaml"),
            "--config", os.path.join(root, "options", "qlora.yaml"),
            "--trainer.accelerator", "cpu",
        ],
        run=False,
    )  # fmt: skip
    assert cli.model.quantization == QuantizationOptions()
    assert cli.model.lora.r == 16
    with pytest.raises(SystemExit):
        main(["--model.help", "lit_sft.SFTModule"], run=False)
    help_text = capsys.readouterr().out
    for option in ("--model.quantization", "--model.neftune_noise_alpha", "--model.loss", "--model.lora"):
        assert option in help_text, option
    # Each group's fields are documented in its docstring, which jsonargparse shows (--model.lora.help ...).
    for options in (LoraOptions, QuantizationOptions, LossOptions):
        for field in dataclasses.fields(options):
            assert f"{field.name}:" in options.__doc__, f"{options.__name__}.{field.name}"


def test_the_start_up_check_refuses_qlora_with_fsdp(tmp_path, monkeypatch) -> None:
    from lightning.pytorch.strategies import FSDPStrategy

    monkeypatch.setattr("lit_sft.model.quantization.quantization_problems", lambda on_gpu: [])
    module = SFTModule(
        model_name_or_path="some/model", lora=LoraOptions(r=4), quantization=QuantizationOptions()
    )
    trainer = types.SimpleNamespace(
        default_root_dir=str(tmp_path),
        loggers=[],
        callbacks=[],
        accelerator=None,
        strategy=FSDPStrategy.__new__(FSDPStrategy),
        world_size=1,
        limit_val_batches=0,
    )
    with pytest.raises(
        ConfigError, match=r"model\.quantization \(4-bit QLoRA\) runs on one device or with DDP"
    ):
        preflight(trainer, module, types.SimpleNamespace())
