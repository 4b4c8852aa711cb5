from __future__ import annotations

import csv
import glob
import json
import os
from functools import partial

import pytest
import torch
from lightning.pytorch import seed_everything
from lightning.pytorch.loggers import CSVLogger, Logger

from lit_sft import SFTModule
from lit_sft.callbacks import GSM8KEvaluation, RunSummary
from lit_sft.gsm8k.synthetic import SyntheticGSM8KDataModule
from lit_sft.model import LoraOptions
from tests.helpers import oracle_generate, quiet_trainer, tiny_model_config

RECORD_KEYS = {
    "index", "question", "generation", "strict_answer", "flexible_answer", "gold", "strict_correct",
    "flexible_correct", "prompt_truncated",
}  # fmt: skip


def module(**kwargs) -> SFTModule:
    return SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
        **kwargs,
    )


def data(tmp_path) -> SyntheticGSM8KDataModule:
    return SyntheticGSM8KDataModule(
        num_train=32,
        num_val=6,
        data_dir=str(tmp_path / "data"),
        tokenizer_name_or_path="builtin:byte-chatml",
        batch_size=4,
    )


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_evaluates_at_start_every_n_validations_and_at_the_end(tmp_path) -> None:
    seed_everything(0)
    callback = GSM8KEvaluation(
        max_new_tokens=8, every_n_validations=2, evaluate_at_fit_start=True, batch_size=4
    )
    logger = CSVLogger(str(tmp_path), name="logs")
    summary = RunSummary()
    trainer = quiet_trainer(
        max_steps=7,
        val_check_interval=2,
        limit_val_batches=None,
        logger=logger,
        callbacks=[callback, summary],
    )
    trainer.fit(module(), datamodule=data(tmp_path))
    # Validations at steps 2, 4, 6: evaluated at the 2nd (step 4); plus step 0 and the end (step 7).
    files = sorted(os.path.basename(p) for p in glob.glob(os.path.join(logger.log_dir, "gsm8k", "*.jsonl")))
    assert files == ["step-000000.jsonl", "step-000004.jsonl", "step-000007.jsonl"]
    records = read_jsonl(os.path.join(logger.log_dir, "gsm8k", "step-000007.jsonl"))
    assert len(records) == 6 and set(records[0]) == RECORD_KEYS
    assert [r["index"] for r in records] == list(range(6))
    assert records[0]["gold"].rsplit("#### ", 1)[1].isdigit()
    with open(os.path.join(logger.log_dir, "metrics.csv"), encoding="utf-8") as handle:
        logged = [row for row in csv.DictReader(handle) if row.get("val/gsm8k_acc_strict")]
    assert [int(row["step"]) for row in logged] == [0, 3, 7]  # Lightning logs validation at step - 1
    assert [step for step, _, _ in callback.history] == [0, 4, 7]
    # The summary records each evaluation at its own step, equal values included (an untrained model's 0%).
    assert [step for step, _ in summary.history["val/gsm8k_acc_strict"]] == [0, 4, 7]
    assert [step for step, _ in summary.history["val/loss"]] == [2, 4, 6]


def test_validate_reports_the_accuracy_of_what_the_model_generates(tmp_path) -> None:
    """A model that answers some questions right: the logged accuracy is exactly that fraction."""
    sft = module()
    sft.configure_model()
    datamodule = data(tmp_path)
    datamodule.setup("validate")
    with open(datamodule.val_files, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    answers = {
        row["question"]: row["answer"] if i % 3 == 0 else "I think it is 0.\n#### 0"
        for i, row in enumerate(rows)
    }
    sft.model.generate = oracle_generate(sft.tokenizer, answers)
    callback = GSM8KEvaluation(output_dir=str(tmp_path / "out"))
    [metrics] = quiet_trainer(limit_val_batches=None, callbacks=[callback]).validate(
        sft, datamodule=datamodule, verbose=False
    )
    assert metrics["val/gsm8k_acc_strict"] == metrics["val/gsm8k_acc_flexible"] == pytest.approx(2 / 6)
    [path] = glob.glob(str(tmp_path / "out" / "validate-step-*.jsonl"))
    assert sum(r["strict_correct"] for r in read_jsonl(path)) == 2


def test_works_with_lora(tmp_path) -> None:
    callback = GSM8KEvaluation(max_new_tokens=4, max_samples=3, output_dir=str(tmp_path / "out"))
    trainer = quiet_trainer(max_steps=2, limit_val_batches=None, callbacks=[callback])
    trainer.fit(module(lora=LoraOptions(r=4, alpha=8)), datamodule=data(tmp_path))
    assert [step for step, _, _ in callback.history] == [2]
    assert len(read_jsonl(str(tmp_path / "out" / "step-000002.jsonl"))) == 3


class VersionOnlyLogger(Logger):
    """A logger like wandb's: a version (run id) but no per-run log directory."""

    name, version = "remote", "run-abc"

    def log_metrics(self, metrics, step=None) -> None:  # type: ignore[override]
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:  # type: ignore[override]
        pass


def test_records_of_loggers_without_a_run_directory_go_under_the_run_version(tmp_path) -> None:
    callback = GSM8KEvaluation(max_new_tokens=4, batch_size=8)
    trainer = quiet_trainer(
        max_steps=1, logger=VersionOnlyLogger(), default_root_dir=str(tmp_path), callbacks=[callback]
    )
    trainer.fit(module(), datamodule=data(tmp_path))
    assert os.listdir(tmp_path / "gsm8k" / "run-abc") == ["step-000001.jsonl"]
