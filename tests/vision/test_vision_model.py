"""VisionSFTModule on a tiny random Qwen2-VL: it learns, freezes what it should, packs, exports, resumes."""

from __future__ import annotations

import os
from functools import partial
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback
from transformers import AutoModelForImageTextToText, GenerationConfig
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLForConditionalGeneration

from lit_sft.batch import packed_batch
from lit_sft.callbacks import HFExport
from lit_sft.commands.fit import entry_point
from lit_sft.data.vision import VisionSFTDataModule
from lit_sft.errors import ConfigError
from lit_sft.model import LoraOptions, LossOptions
from lit_sft.model.build import load_module
from lit_sft.model.vision import VisionSFTModule, vision_tower_modules
from tests.helpers import quiet_trainer, write_jsonl
from tests.vision.helpers import colour_rows, load_saved_processor, vision_model_config


class Losses(Callback):
    def __init__(self) -> None:
        self.values: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[override]
        self.values.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))


def data(processor_dir: str, tmp_path, count: int = 8, **kwargs: Any) -> VisionSFTDataModule:
    rows = colour_rows(count, str(tmp_path / "img"))
    return VisionSFTDataModule(
        processor_name_or_path=processor_dir,
        train_files=write_jsonl(str(tmp_path / "train.jsonl"), rows),
        image_root=str(tmp_path / "img"),
        cache_dir=str(tmp_path / "cache"),
        **{"batch_size": 4, **kwargs},
    )


def model_inputs_of(batch: dict[str, Any]) -> dict[str, Any]:
    """What a transformers user passes to the exported model's forward."""
    keys = ("input_ids", "attention_mask", "pixel_values", "image_grid_thw", "mm_token_type_ids")
    return {key: batch[key] for key in keys}


def module(processor_dir: str, lr: float = 3e-3, **kwargs: Any) -> VisionSFTModule:
    torch.manual_seed(0)
    kwargs.setdefault("model_config", vision_model_config())
    return VisionSFTModule(
        processor_name_or_path=processor_dir,
        optimizer=partial(torch.optim.AdamW, lr=lr),
        lr_scheduler=None,
        **kwargs,
    )


def fit(model: VisionSFTModule, datamodule: VisionSFTDataModule, steps: int, **kwargs: Any) -> list[float]:
    losses = Losses()
    kwargs["callbacks"] = [losses, *kwargs.get("callbacks", [])]
    quiet_trainer(max_steps=steps, **kwargs).fit(model, datamodule=datamodule)
    return losses.values


def training_set_loss(model: VisionSFTModule, datamodule: VisionSFTDataModule) -> float:
    """Per-token mean loss over the whole training split, without dropout or gradients: unlike one step's
    loss, it does not move with the batch the sampler happened to draw."""
    datamodule.setup("fit")
    total = targets = 0.0
    training = model.training
    model.eval()
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            loss_sum, count = model.compute_loss_sum(batch)
            total, targets = total + float(loss_sum), targets + float(count)
    model.train(training)
    return total / targets


def tower_state(model: VisionSFTModule) -> dict[str, torch.Tensor]:
    [(_, tower)] = vision_tower_modules(model.model)
    return {name: value.detach().clone() for name, value in tower.state_dict().items()}


def test_loss_falls_and_the_vision_tower_stays_frozen(processor_dir, tmp_path) -> None:
    model = module(processor_dir)
    model.configure_model()
    before = tower_state(model)
    [(name, tower)] = vision_tower_modules(model.model)
    assert name == "model.visual" and not any(p.requires_grad for p in tower.parameters())
    losses = fit(model, data(processor_dir, tmp_path), steps=16)
    assert isinstance(model.model, Qwen2VLForConditionalGeneration)
    assert sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4, losses
    for key, value in tower_state(model).items():
        assert torch.equal(value, before[key]), key


def test_the_vision_tower_trains_when_asked(processor_dir, tmp_path) -> None:
    model = module(processor_dir, train_vision_tower=True)
    model.configure_model()
    before = tower_state(model)
    fit(model, data(processor_dir, tmp_path), steps=2)
    assert all(p.requires_grad for _, tower in vision_tower_modules(model.model) for p in tower.parameters())
    assert any(not torch.equal(value, before[key]) for key, value in tower_state(model).items())


def test_lora_adapts_the_language_model_only(processor_dir, tmp_path) -> None:
    model = module(processor_dir, lr=1e-2, lora=LoraOptions(r=4, alpha=8, target_modules="all-linear"))
    model.configure_model()
    trainable = [name for name, p in model.model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in name for name in trainable)
    assert not any(".visual." in name for name in trainable)
    assert any(".language_model." in name and "q_proj" in name for name in trainable)
    assert any(".language_model." in name and "down_proj" in name for name in trainable)
    measured = data(processor_dir, tmp_path)
    before = training_set_loss(model, measured)
    fit(model, data(processor_dir, tmp_path), steps=10)
    assert training_set_loss(model, measured) < 0.9 * before  # 0.86 when written


def test_chunked_and_plain_losses_agree_on_image_batches(processor_dir, tmp_path) -> None:
    datamodule = data(processor_dir, tmp_path, batch_size=8)
    datamodule.setup("fit")
    [batch] = list(datamodule.train_dataloader())
    results = []
    for implementation in ("chunked", "plain"):
        model = module(processor_dir, loss=LossOptions(implementation=implementation, chunk_size=7))
        model.configure_model()
        results.append(model.compute_loss_sum(batch))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    assert int(results[0][1]) == int(results[1][1]) == batch["step_trained_tokens"]


@pytest.mark.parametrize("attn_implementation", ["sdpa", "varlen"])
def test_packed_rows_give_the_padded_loss(
    processor_dir, tmp_path, monkeypatch, attn_implementation: str
) -> None:
    """Each packed row gets the 3-D rotary positions it would have alone; the model's own positions for the
    pack (continuing across rows) would change the loss. ``varlen`` keeps the rows apart by the collator's
    offsets (3-D positions say nothing about where rows start)."""
    rows = colour_rows(6, str(tmp_path / "img"))
    rows.insert(
        3, {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "hello"}]}
    )
    files = write_jsonl(str(tmp_path / "mixed.jsonl"), rows)
    model = module(processor_dir, attn_implementation=attn_implementation)
    model.configure_model()
    totals = {}
    for packing in (False, True):
        datamodule = VisionSFTDataModule(
            processor_name_or_path=processor_dir, train_files=files, image_root=str(tmp_path / "img"),
            cache_dir=str(tmp_path / "cache"), batch_size=7, packing=packing, max_length=512, shuffle=False,
        )  # fmt: skip
        datamodule.setup("fit")
        [batch] = list(datamodule.train_dataloader())
        assert batch["input_ids"].shape[0] == (1 if packing else 7)
        with torch.no_grad():
            totals[packing] = model.compute_loss_sum(batch)
    torch.testing.assert_close(totals[True][0], totals[False][0], rtol=1e-5, atol=1e-4)
    assert int(totals[True][1]) == int(totals[False][1])
    if attn_implementation == "varlen":
        return  # rows apart by offsets: positions continuing across rows change the loss little (RoPE is relative)
    monkeypatch.setattr(model, "_rope_index", None)  # as for a model without get_rope_index
    with torch.no_grad():
        unaware = model.compute_loss_sum(batch)[0]
    assert abs(float(unaware) - float(totals[False][0])) > 1e-3


def test_packed_training_runs_end_to_end(processor_dir, tmp_path) -> None:
    model = module(processor_dir)
    model.configure_model()
    measured = data(processor_dir, tmp_path, packing=True, max_length=128)
    before = training_set_loss(model, measured)
    fit(model, data(processor_dir, tmp_path, packing=True, max_length=128), steps=8)
    assert training_set_loss(model, measured) < 0.8 * before  # 0.66 when written


def test_export_loads_with_from_pretrained_and_the_processor_beside_it(processor_dir, tmp_path) -> None:
    model = module(processor_dir)
    datamodule = data(processor_dir, tmp_path, batch_size=8)
    fit(model, datamodule, steps=3, callbacks=[HFExport()], default_root_dir=str(tmp_path / "run"))
    final = str(tmp_path / "run" / "hf" / "final")
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "chat_template.jinja"} <= set(
        os.listdir(final)
    )
    loaded = AutoModelForImageTextToText.from_pretrained(final)
    assert isinstance(loaded, Qwen2VLForConditionalGeneration) and loaded.config.text_config.use_cache is True
    [batch] = list(datamodule.train_dataloader())
    inputs = model_inputs_of(batch)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**inputs).logits, model(**inputs), rtol=1e-5, atol=1e-5)
    processor = load_saved_processor(final)  # what AutoProcessor.from_pretrained returns
    assert processor.chat_template == model.processor.chat_template
    assert processor.image_processor.to_dict() == model.processor.image_processor.to_dict()
    assert processor.tokenizer.get_vocab() == model.tokenizer.get_vocab()
    generation = GenerationConfig.from_pretrained(final)
    assert generation.eos_token_id == model.tokenizer.convert_tokens_to_ids("<|im_end|>")


def test_a_checkpoint_reloads_as_a_vision_module_and_exports_with_lora_merged(
    processor_dir, tmp_path, capsys
) -> None:
    model = module(processor_dir, lora=LoraOptions(r=4, alpha=8))
    trainer = quiet_trainer(max_steps=2, default_root_dir=str(tmp_path / "run"))
    datamodule = data(processor_dir, tmp_path, batch_size=8)
    trainer.fit(model, datamodule=datamodule)
    checkpoint = str(tmp_path / "vision.ckpt")
    trainer.save_checkpoint(checkpoint)
    reloaded = load_module(checkpoint)
    assert isinstance(reloaded, VisionSFTModule) and reloaded.processor_name_or_path == processor_dir
    entry_point(["export", "--ckpt", checkpoint, "--out", str(tmp_path / "exported")])
    assert "exported" in capsys.readouterr().out
    merged = AutoModelForImageTextToText.from_pretrained(tmp_path / "exported")
    assert not any("lora" in name for name in merged.state_dict())
    [batch] = list(datamodule.train_dataloader())
    inputs = model_inputs_of(batch)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, model(**inputs), rtol=1e-4, atol=1e-4)
    assert os.path.isfile(tmp_path / "exported" / "preprocessor_config.json")


def test_a_pretrained_vision_model_loads_from_its_directory(vlm_dir, tmp_path) -> None:
    model = VisionSFTModule(model_name_or_path=vlm_dir)
    losses = fit(model, data(vlm_dir, tmp_path), steps=2)
    assert len(losses) == 2 and isinstance(model.model, Qwen2VLForConditionalGeneration)
    with pytest.raises(ConfigError, match="cannot load a vision-language model"):
        VisionSFTModule(model_name_or_path=str(tmp_path / "nothing")).build_model()


def test_the_model_class_can_be_named_for_models_the_auto_class_does_not_map(vlm_dir, processor_dir) -> None:
    own = "transformers.Qwen2VLForConditionalGeneration"
    built = module(processor_dir, model_class=own).build_model()
    loaded = VisionSFTModule(model_name_or_path=vlm_dir, model_class=own, dtype="bfloat16").build_model()
    assert isinstance(built, Qwen2VLForConditionalGeneration) and isinstance(
        loaded, Qwen2VLForConditionalGeneration
    )
    assert loaded.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match=r"'transformers\.NoSuchModel' is not an importable class"):
        VisionSFTModule(model_name_or_path=vlm_dir, model_class="transformers.NoSuchModel")


def test_the_generic_packing_probe_is_a_text_only_vision_batch(processor_dir) -> None:
    """The packing check's probe carries text keys only; the vision module reads it as all text, no images."""
    model = module(processor_dir)
    model.configure_model()
    probe = packed_batch([torch.randint(0, 200, (1, n)) for n in (5, 7)])
    assert set(probe) == {"input_ids", "position_ids", "row_lengths", "cu_seq_lens", "max_row_length"}
    explicit = {**probe, "mm_token_type_ids": torch.zeros_like(probe["input_ids"]), "row_images": [0, 0]}
    implicit_inputs, explicit_inputs = model.model_inputs(probe), model.model_inputs(explicit)
    assert implicit_inputs.keys() == explicit_inputs.keys() and "mm_token_type_ids" in implicit_inputs
    for name, value in explicit_inputs.items():
        torch.testing.assert_close(implicit_inputs[name], value, msg=name)
    assert implicit_inputs["position_ids"].shape == (4, 1, 12)  # text positions on top of per-row 3-D ones
