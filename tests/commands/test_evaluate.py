from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from lit_sft import SFTModule
from lit_sft.commands.evaluate import evaluate, load_for_inference
from lit_sft.commands.fit import entry_point
from lit_sft.gsm8k.synthetic import SyntheticGSM8KDataModule
from tests.helpers import quiet_trainer, tiny_model_config, write_jsonl

QUESTIONS = [
    {"question": f"What is {i} plus 1?", "answer": f"{i}+1 = {i + 1}\n#### {i + 1}"} for i in range(3)
]


def test_evaluate_a_hugging_face_directory(tiny_model_dir, tmp_path, capsys) -> None:
    data = write_jsonl(str(tmp_path / "q.jsonl"), QUESTIONS)
    out = str(tmp_path / "results" / "records.jsonl")
    result = evaluate(tiny_model_dir, data, out=out, max_new_tokens=4, device="cpu")
    assert result["questions"] == 3 and 0.0 <= result["strict"] <= 1.0
    printed = capsys.readouterr().out
    assert printed.startswith("gsm8k: 3 questions, strict") and "questions/s" in printed
    with open(out, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert [r["question"] for r in records] == [q["question"] for q in QUESTIONS]


def test_evaluate_and_generate_a_lightning_checkpoint_through_the_cli(tmp_path, capsys) -> None:
    module = SFTModule(
        model_config=tiny_model_config(),
        tokenizer_name_or_path="builtin:byte-chatml",
        optimizer=partial(torch.optim.AdamW, lr=1e-3),
    )
    datamodule = SyntheticGSM8KDataModule(
        num_train=8, num_val=2, data_dir=str(tmp_path / "data"), tokenizer_name_or_path="builtin:byte-chatml"
    )
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(module, datamodule=datamodule)
    checkpoint = str(tmp_path / "model.ckpt")
    trainer.save_checkpoint(checkpoint)
    network, tokenizer = load_for_inference(checkpoint, device="cpu")
    input_ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(network(input_ids).logits, module.model(input_ids).logits)
    assert tokenizer.eos_token == "<|im_end|>"

    entry_point(["evaluate", "--model", checkpoint, "--data", datamodule.val_files, "--max_new_tokens", "4"])
    assert "gsm8k: 2 questions" in capsys.readouterr().out
    entry_point(
        [
            "generate",
            "--model",
            checkpoint,
            "--data",
            datamodule.val_files,
            "--num_samples",
            "1",
            "--max_new_tokens",
            "4",
        ]
    )
    printed = capsys.readouterr().out
    assert printed.startswith("--- question 0") and "--- reference" in printed


def test_command_help_and_errors(capsys, tmp_path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        entry_point(["evaluate", "--help"])
    assert exit_info.value.code == 0
    assert "GSM8K accuracy of a model" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        entry_point(["evaluate", "--model", str(tmp_path / "missing.ckpt"), "--data", "x.jsonl"])
    assert exit_info.value.code == 2
    assert "lit-sft: error: no checkpoint at" in capsys.readouterr().err
