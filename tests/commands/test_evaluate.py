from __future__ import annotations

import json
from functools import partial

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from lit_sft import SFTModule
from lit_sft.commands.evaluate import evaluate, generate, load_for_inference
from lit_sft.commands.fit import entry_point
from lit_sft.gsm8k.synthetic import SyntheticGSM8KDataModule
from tests.helpers import make_tokenizer, quiet_trainer, save_tiny_model, tiny_model_config, write_jsonl

QUESTIONS = [
    {"question": f"What is {i} plus 1?", "answer": f"{i}+1 = {i + 1}\n#### {i + 1}"} for i in range(3)
]


def save_bigram_model(directory: str, chain: dict[str, str]) -> str:
    """A tiny model whose next token depends on the current token only: ``chain`` maps a token to the next.

    Attention and MLP outputs are zeroed, so each position's hidden state is its token's embedding; the
    embeddings of the chain's tokens are orthogonal and the head points each one at its successor.
    """
    save_tiny_model(directory, "qwen")
    model = AutoModelForCausalLM.from_pretrained(directory)
    tokenizer = make_tokenizer("qwen")
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith(("o_proj.weight", "down_proj.weight")):
                parameter.zero_()
        embeddings, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
        embeddings.zero_()
        head.zero_()
        for axis, (token, following) in enumerate(chain.items()):
            token_id, following_id = tokenizer.convert_tokens_to_ids([token, following])
            embeddings[token_id, axis] = 1.0
            head[following_id, axis] = 10.0
    model.save_pretrained(directory)
    return directory


def test_evaluate_a_hugging_face_directory(tmp_path, capsys) -> None:
    # The prompt ends with the assistant header's newline ("Ċ"); the model answers "7" then ends its turn.
    model_dir = save_bigram_model(str(tmp_path / "model"), {"Ċ": "7", "7": "<|im_end|>"})
    golds = ["#### 7", "#### 8", "#### 7"]
    data = write_jsonl(
        str(tmp_path / "q.jsonl"), [{**q, "answer": a} for q, a in zip(QUESTIONS, golds, strict=True)]
    )
    out = str(tmp_path / "results" / "records.jsonl")
    result = evaluate(model_dir, data, out=out, max_new_tokens=4, device="cpu")
    assert {key: result[key] for key in ("questions", "strict", "flexible", "strict_invalid")} == {
        "questions": 3.0, "strict": 0.0, "flexible": pytest.approx(2 / 3), "strict_invalid": 1.0
    }  # fmt: skip
    printed = capsys.readouterr().out
    assert printed.startswith("gsm8k: 3 questions, strict 0.0% (no '####' answer: 100.0%), flexible 66.7%")
    assert "questions/s" in printed
    with open(out, encoding="utf-8") as handle:
        records = [json.loads(line) for line in handle]
    assert [r["question"] for r in records] == [q["question"] for q in QUESTIONS]
    assert [r["generation"] for r in records] == ["7", "7", "7"]
    assert [r["flexible_correct"] for r in records] == [True, False, True]


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


def test_evaluate_and_generate_both_read_the_hub_configuration_they_are_given(
    tiny_model_dir, monkeypatch, capsys
) -> None:
    hub_reads = []

    def load_dataset(path, name=None, split=None, cache_dir=None):  # the Hub, offline
        hub_reads.append((path, name, split))
        return datasets.Dataset.from_list(QUESTIONS)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    common = {"dataset_config_name": "main", "max_new_tokens": 2, "device": "cpu"}
    records = generate(tiny_model_dir, "openai/gsm8k:test", num_samples=2, **common)
    assert [r["question"] for r in records] == [q["question"] for q in QUESTIONS[:2]]
    assert evaluate(tiny_model_dir, "openai/gsm8k:test", **common)["questions"] == 3
    assert hub_reads == [("openai/gsm8k", "main", "test")] * 2
