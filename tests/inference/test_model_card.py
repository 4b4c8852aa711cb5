"""Every Hugging Face export has a README.md model card whose metadata the Hub reads and whose numbers are
the run's."""

from __future__ import annotations

from functools import partial

import torch
import yaml

from lit_sft import SFTModule, __version__
from lit_sft.callbacks import HFExport, RunSummary
from lit_sft.commands.fit import entry_point
from lit_sft.inference.model_card import ModelCardInfo, render_card
from lit_sft.model import LoraOptions
from tests.helpers import arithmetic_data, arithmetic_rows, quiet_trainer, tiny_model_config, write_jsonl


def read_card(path) -> tuple[dict, str]:
    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    front, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(front), body


def fit(tmp_path, callbacks, lora=None):
    module = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        lora=lora,
    )
    data = arithmetic_data(
        write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(16)), batch_size=4, val_ratio=0.25
    )
    trainer = quiet_trainer(
        max_steps=4,
        limit_val_batches=None,
        val_check_interval=2,
        callbacks=callbacks,
        default_root_dir=str(tmp_path / "run"),
    )
    trainer.fit(module, datamodule=data)
    return module, data, trainer


def test_hf_export_writes_a_card_with_the_runs_data_settings_and_metrics(tmp_path) -> None:
    _, data, trainer = fit(tmp_path, [HFExport()])
    metadata, body = read_card(tmp_path / "run" / "hf" / "final" / "README.md")
    assert metadata["library_name"] == "transformers" and "lit-sft" in metadata["tags"]
    assert "base_model" not in metadata  # initialised from a config: nothing on the Hub to point at
    train, val = data.summaries["train"], data.summaries["val"]
    assert (train.kept, val.kept) == (12, 4)
    source = str(tmp_path / "train.jsonl")
    assert f"| train | {source} | 12 | {train.tokens} | {train.trained_tokens} |" in body
    assert f"| val | {source} | 4 | {val.tokens} | {val.trained_tokens} |" in body
    assert "- optimizer steps: 4" in body
    assert f"| validation loss | {float(trainer.callback_metrics['val/loss']):.4f} |" in body
    assert f"| train loss (last step) | {float(trainer.callback_metrics['train/loss']):.4f} |" in body
    assert "| data.batch_size | 4 |" in body and "| optimizer.lr | 0.01 |" in body
    assert f"lit_sft {__version__}" in body


def test_lit_sft_export_writes_the_card_from_what_the_checkpoint_holds(tmp_path) -> None:
    summary = RunSummary()
    _, data, trainer = fit(tmp_path, [summary], lora=LoraOptions(r=4, alpha=8))
    checkpoint = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(checkpoint)
    entry_point(["export", "--ckpt", checkpoint, "--out", str(tmp_path / "exported"), "--lora", "both"])
    for directory, library in (
        (tmp_path / "exported", "transformers"),
        (tmp_path / "exported" / "adapter", "peft"),
    ):
        metadata, body = read_card(directory / "README.md")
        assert metadata["library_name"] == library
        assert f"| train | {tmp_path / 'train.jsonl'} | 12 | {data.summaries['train'].tokens} |" in body
        assert "- optimizer steps: 4" in body
        last_val_loss = summary.history["val/loss"][-1][1]
        assert f"| validation loss | {last_val_loss:.4f} |" in body
        assert f"| train loss (last step) | {summary.train_losses[-1][1]:.4f} |" in body
        assert '| model.lora | {"r": 4, "alpha": 8' in body
    assert "peft" in metadata["tags"]


def test_card_metadata_names_hub_models_and_datasets_and_reports_gsm8k_accuracy() -> None:
    info = ModelCardInfo(
        base_model="Qwen/Qwen2.5-0.5B-Instruct",
        sources=[
            {"split": "train", "name": "openai/gsm8k:train", "rows": 7473, "tokens": 10, "trained_tokens": 5,
             "rows_per_epoch": None},
            {"split": "train", "name": "/data/chat.parquet", "rows": 3, "tokens": 1, "trained_tokens": 1,
             "rows_per_epoch": None},
        ],
        metrics={"val/loss": 0.5, "val/gsm8k_acc_strict": 0.4125},
        hyperparameters={"data._class_path": "lit_sft.SFTDataModule", "data.batch_size": 4, "data.cache_dir": None},
        config="trainer:\n  max_steps: 10\n",
        command="lit-sft fit --config run.yaml",
    )  # fmt: skip
    text = render_card(info)
    metadata = yaml.safe_load(text.split("---\n")[1])
    assert metadata["base_model"] == "Qwen/Qwen2.5-0.5B-Instruct"
    assert metadata["datasets"] == ["openai/gsm8k"]  # local files are not Hub datasets
    assert metadata["pipeline_tag"] == "text-generation"
    assert "| GSM8K accuracy (strict) | 41.25% |" in text
    assert "```bash\nlit-sft fit --config run.yaml\n```" in text and "max_steps: 10" in text
    assert "| data.batch_size | 4 |" in text and "_class_path" not in text and "cache_dir" not in text
