"""Exports load where users go next (from_pretrained, peft) and give the trained module's logits."""

from __future__ import annotations

import json
import os
from functools import partial

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from lit_sft import SFTModule
from lit_sft.callbacks import HFExport
from lit_sft.commands.fit import entry_point
from lit_sft.model import LoraOptions
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl

INPUT = torch.tensor([[5, 6, 7, 8, 9, 10, 11]])


def train(tmp_path, callbacks=(), **kwargs) -> tuple[SFTModule, object]:
    kwargs.setdefault("model_config", tiny_model_config())
    kwargs.setdefault("tokenizer_name_or_path", "builtin:byte-chatml")
    module = SFTModule(optimizer=partial(torch.optim.AdamW, lr=1e-2), **kwargs)
    data = arithmetic_data(
        write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8)),
        tokenizer_name_or_path=kwargs["tokenizer_name_or_path"],
        batch_size=4,
    )
    trainer = quiet_trainer(max_steps=4, callbacks=list(callbacks), default_root_dir=str(tmp_path / "run"))
    trainer.fit(module, datamodule=data)
    return module, trainer


def logits_of(module: SFTModule) -> torch.Tensor:
    module.eval()
    with torch.no_grad():
        return module(INPUT)


def test_full_fine_tune_export_loads_with_from_pretrained(tmp_path) -> None:
    export = HFExport(every_n_train_steps=2)
    module, _trainer = train(tmp_path, callbacks=[export])
    root = tmp_path / "run" / "hf"
    assert sorted(os.listdir(root)) == ["final", "step-2", "step-4"]
    loaded = AutoModelForCausalLM.from_pretrained(root / "final")
    torch.testing.assert_close(loaded(INPUT).logits, logits_of(module))
    tokenizer = AutoTokenizer.from_pretrained(root / "final")
    assert tokenizer.chat_template == module.tokenizer.chat_template and tokenizer.eos_token == "<|im_end|>"
    generation = GenerationConfig.from_pretrained(root / "final")
    assert generation.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert loaded.config.use_cache is True  # training turned it off; the export turns it back on
    assert module.model.config.use_cache is False  # and the live model is untouched


def test_lora_exports_merged_and_as_an_adapter_with_the_right_alpha(tmp_path, tiny_model_dir) -> None:
    module, _ = train(
        tmp_path,
        callbacks=[HFExport(lora="both")],
        model_config=None,
        model_name_or_path=tiny_model_dir,
        tokenizer_name_or_path=tiny_model_dir,
        lora=LoraOptions(r=4, alpha=16, target_modules=["q_proj", "v_proj"]),
    )
    expected = logits_of(module)
    final = tmp_path / "run" / "hf" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)
    assert not any("lora" in name for name in merged.state_dict())
    torch.testing.assert_close(merged(INPUT).logits, expected, rtol=1e-5, atol=1e-5)
    with open(final / "adapter" / "adapter_config.json", encoding="utf-8") as handle:
        adapter_config = json.load(handle)
    assert (adapter_config["r"], adapter_config["lora_alpha"]) == (4, 16)
    assert adapter_config["base_model_name_or_path"] == tiny_model_dir
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), final / "adapter"
    )
    torch.testing.assert_close(adapted(INPUT).logits, expected, rtol=1e-5, atol=1e-5)


def test_a_randomly_initialised_lora_run_ships_its_base_weights_with_the_adapter(tmp_path) -> None:
    module, _ = train(tmp_path, callbacks=[HFExport(lora="adapter")], lora=LoraOptions(r=4, alpha=8))
    final = tmp_path / "run" / "hf" / "final"
    with open(final / "adapter_config.json", encoding="utf-8") as handle:
        assert json.load(handle)["base_model_name_or_path"] == str(final / "base")
    base = AutoModelForCausalLM.from_pretrained(final / "base")
    adapted = PeftModel.from_pretrained(base, final)
    torch.testing.assert_close(adapted(INPUT).logits, logits_of(module), rtol=1e-5, atol=1e-5)


def test_lit_sft_export_converts_a_checkpoint(tmp_path, capsys) -> None:
    module, trainer = train(tmp_path, lora=LoraOptions(r=4, alpha=8))
    checkpoint = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(checkpoint)
    entry_point(["export", "--ckpt", checkpoint, "--out", str(tmp_path / "exported"), "--dtype", "bfloat16"])
    assert "exported" in capsys.readouterr().out
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "exported")
    assert loaded.dtype == torch.bfloat16
    torch.testing.assert_close(loaded.float()(INPUT).logits, logits_of(module), rtol=0.05, atol=0.05)
    with pytest.raises(SystemExit) as exit_info:
        entry_point(["export", "--ckpt", str(tmp_path / "missing.ckpt"), "--out", str(tmp_path / "x")])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("options", "config_entry"),
    [
        ({"use_dora": True}, ("use_dora", True)),
        ({"use_rslora": True}, ("use_rslora", True)),
        ({"init_lora_weights": "gaussian"}, ("init_lora_weights", "gaussian")),
        ({"init_lora_weights": "pissa"}, ("r", 8)),  # converted: a rank-2r LoRA on the original base
        ({"init_lora_weights": "olora"}, ("r", 8)),
        ({"layers_to_transform": [1]}, ("layers_to_transform", [1])),
    ],
    ids=["dora", "rslora", "gaussian", "pissa", "olora", "layers_to_transform"],
)
def test_each_lora_variant_exports_merged_and_as_an_adapter_that_give_the_trained_logits(
    tmp_path, tiny_model_dir, options: dict, config_entry: tuple
) -> None:
    module, _ = train(
        tmp_path,
        callbacks=[HFExport(lora="both")],
        model_config=None,
        model_name_or_path=tiny_model_dir,
        tokenizer_name_or_path=tiny_model_dir,
        lora=LoraOptions(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], **options),
    )
    expected = logits_of(module)
    untrained = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(INPUT).logits
    assert not torch.allclose(expected, untrained, atol=1e-3)  # the adapter did change the model
    final = tmp_path / "run" / "hf" / "final"
    merged = AutoModelForCausalLM.from_pretrained(final)
    torch.testing.assert_close(merged(INPUT).logits, expected, rtol=1e-4, atol=1e-4)
    with open(final / "adapter" / "adapter_config.json", encoding="utf-8") as handle:
        adapter_config = json.load(handle)
    name, value = config_entry
    assert adapter_config[name] == value
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), final / "adapter"
    )
    torch.testing.assert_close(adapted(INPUT).logits, expected, rtol=1e-4, atol=1e-4)
    if "layers_to_transform" in options:
        adapted_layers = {
            n.split(".layers.")[1].split(".")[0] for n, _ in module.model.named_parameters() if "lora_" in n
        }
        assert adapted_layers == {"1"}


def test_a_pissa_checkpoint_exports_an_adapter_for_the_original_base(tmp_path, tiny_model_dir) -> None:
    """From a checkpoint, the initial PiSSA adapter is rebuilt from the pretrained base to convert the export."""
    module, trainer = train(
        tmp_path,
        model_config=None,
        model_name_or_path=tiny_model_dir,
        tokenizer_name_or_path=tiny_model_dir,
        lora=LoraOptions(r=4, alpha=8, init_lora_weights="pissa"),
    )
    checkpoint = str(tmp_path / "pissa.ckpt")
    trainer.save_checkpoint(checkpoint)
    entry_point(["export", "--ckpt", checkpoint, "--out", str(tmp_path / "adapter"), "--lora", "adapter"])
    adapted = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter"
    )
    torch.testing.assert_close(adapted(INPUT).logits, logits_of(module), rtol=1e-4, atol=1e-4)
