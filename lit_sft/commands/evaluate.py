"""``lit-sft evaluate`` and ``lit-sft generate``: GSM8K accuracy and samples from a trained model.

The model is a Hugging Face directory or Hub id (an exported model, or a peft adapter directory), a
Lightning checkpoint (``.ckpt``) written by ``lit-sft fit``, or a GGUF file (``.gguf``, dequantized).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import torch

from lit_sft.errors import ConfigError
from lit_sft.gguf import check_local_path, is_gguf, load_gguf_model
from lit_sft.gsm8k.evaluation import EvalSet, evaluate_items, load_eval_set
from lit_sft.gsm8k.scoring import GSM8KAccuracy
from lit_sft.hub import load_tokenizer, torch_dtype
from lit_sft.io import atomic_write


def load_for_inference(
    model: str,
    device: str = "auto",
    dtype: str = "auto",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` from a checkpoint, an HF directory, a peft adapter directory or a Hub id."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    target_dtype = torch_dtype(dtype)  # None: the checkpoint's own
    network: Any  # a transformers model, or a peft model around one
    if model.endswith(".ckpt"):
        from lit_sft.model.build import load_module

        module = load_module(model)
        network = module.model
        if module.tokenizer_name_or_path is None:
            raise ConfigError(module._no_tokenizer_path)
        tokenizer = load_tokenizer(
            module.tokenizer_name_or_path, chat_template or module.chat_template, trust_remote_code
        )
        if target_dtype is not None:
            network = network.to(target_dtype)
    elif is_gguf(model):  # dequantized; tokenizer and chat template from the file
        network = load_gguf_model(model, dtype=target_dtype)
        tokenizer = load_tokenizer(model, chat_template, trust_remote_code)
    else:
        from transformers import AutoModelForCausalLM

        check_local_path(model)
        kwargs: dict[str, Any] = {"dtype": target_dtype or "auto", "trust_remote_code": trust_remote_code}
        try:
            if os.path.isfile(os.path.join(model, "adapter_config.json")):
                from peft import AutoPeftModelForCausalLM

                network = AutoPeftModelForCausalLM.from_pretrained(model, **kwargs)
            else:
                network = AutoModelForCausalLM.from_pretrained(model, **kwargs)
        except OSError as error:
            raise ConfigError(f"cannot load a model from {model!r}: {error}") from None
        tokenizer = load_tokenizer(model, chat_template, trust_remote_code)
    return network.to(device).eval(), tokenizer


def load_model_and_questions(
    model: str,
    data: str | list[str],
    *,
    prompt_key: str,
    answer_key: str,
    system_prompt: str | None,
    max_samples: int | None,
    dataset_config_name: str | None,
    max_prompt_length: int | None,
    device: str,
    dtype: str,
    chat_template: str | None,
    trust_remote_code: bool,
) -> tuple[Any, Any, EvalSet]:
    """The set-up `evaluate` and `generate` share: ``(network, tokenizer, questions)``."""
    network, tokenizer = load_for_inference(model, device, dtype, chat_template, trust_remote_code)
    eval_set = load_eval_set(
        tokenizer,
        data,
        prompt_key=prompt_key,
        answer_key=answer_key,
        system_prompt=system_prompt,
        max_samples=max_samples,
        max_prompt_length=max_prompt_length,
        dataset_config_name=dataset_config_name,
    )
    return network, tokenizer, eval_set


def evaluate(
    model: str,
    data: str | list[str],
    out: str | None = None,
    prompt_key: str = "question",
    answer_key: str = "answer",
    system_prompt: str | None = None,
    max_samples: int | None = None,
    dataset_config_name: str | None = None,
    batch_size: int = 32,
    max_new_tokens: int = 256,
    max_prompt_length: int | None = 1024,
    device: str = "auto",
    dtype: str = "auto",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> dict[str, float]:
    """GSM8K accuracy of a model, by greedy generation; prints it and writes one jsonl record per question.

    Args:
        model: A Hugging Face model directory or Hub id, a peft adapter directory, or a ``.ckpt`` from
            ``lit-sft fit``.
        data: GSM8K-style questions: jsonl/parquet files or a Hub dataset (``openai/gsm8k:test``).
        out: Where to write the records (question, generation, extracted answers, gold, verdicts).
        prompt_key: Column (or dotted path) of the question, or of a list of prompt messages.
        answer_key: Column (or dotted path) of the reference: a GSM8K solution or a number.
        system_prompt: System message for prompts without one (use the one the model was trained with).
        max_samples: Evaluate the first this many questions.
        dataset_config_name: Configuration of a Hub dataset (``main`` for ``openai/gsm8k``).
        batch_size: Questions per generation batch.
        max_new_tokens: Most tokens generated per answer.
        max_prompt_length: Longer prompts keep their last tokens (counted).
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: ``auto`` (the checkpoint's), ``float32``, ``bfloat16`` or ``float16``.
        chat_template: A chat template (Jinja text or file) replacing the tokenizer's.
        trust_remote_code: Allow models with custom code.

    Returns:
        ``{"questions", "strict", "flexible", "strict_invalid", "prompts_truncated", "seconds"}``.
    """
    network, tokenizer, eval_set = load_model_and_questions(
        model,
        data,
        prompt_key=prompt_key,
        answer_key=answer_key,
        system_prompt=system_prompt,
        max_samples=max_samples,
        dataset_config_name=dataset_config_name,
        max_prompt_length=max_prompt_length,
        device=device,
        dtype=dtype,
        chat_template=chat_template,
        trust_remote_code=trust_remote_code,
    )
    started = time.monotonic()
    records = evaluate_items(
        network,
        tokenizer,
        eval_set,
        list(range(len(eval_set))),
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
    )
    seconds = time.monotonic() - started
    metric = GSM8KAccuracy()
    metric.update([r["generation"] for r in records], [r["gold"] for r in records])
    result = {name: float(value) for name, value in metric.compute().items()}
    result.update(
        questions=float(len(records)), prompts_truncated=float(eval_set.num_truncated), seconds=seconds
    )
    if out:
        with atomic_write(out) as handle:
            for record in records:
                handle.write(json.dumps(record, default=str) + "\n")
    print(
        f"gsm8k: {len(records)} questions, strict {result['strict']:.1%} (no '####' answer: "
        f"{result['strict_invalid']:.1%}), flexible {result['flexible']:.1%}, {eval_set.num_truncated} prompts "
        f"truncated, {seconds:.1f} s ({len(records) / max(seconds, 1e-9):.1f} questions/s)"
        + (f"; records in {out}" if out else "")
    )
    return result


def generate(
    model: str,
    data: str | list[str],
    num_samples: int = 5,
    prompt_key: str = "question",
    answer_key: str = "answer",
    system_prompt: str | None = None,
    dataset_config_name: str | None = None,
    max_new_tokens: int = 256,
    max_prompt_length: int | None = 1024,
    device: str = "auto",
    dtype: str = "auto",
    chat_template: str | None = None,
    trust_remote_code: bool = False,
) -> list[dict[str, Any]]:
    """Print a few generations with the reference answer and the verdicts, for checking by hand.

    Args:
        model: A Hugging Face model directory or Hub id, a peft adapter directory, or a ``.ckpt``.
        data: GSM8K-style questions (jsonl/parquet files or a Hub dataset).
        num_samples: How many questions (the first ones).
        prompt_key: Column (or dotted path) of the question, or of a list of prompt messages.
        answer_key: Column (or dotted path) of the reference answer.
        system_prompt: System message for prompts without one.
        dataset_config_name: Configuration of a Hub dataset (``main`` for ``openai/gsm8k``).
        max_new_tokens: Most tokens generated per answer.
        max_prompt_length: Longer prompts keep their last tokens.
        device: ``auto``, ``cpu`` or ``cuda``.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        chat_template: A chat template (Jinja text or file) replacing the tokenizer's.
        trust_remote_code: Allow models with custom code.
    """
    network, tokenizer, eval_set = load_model_and_questions(
        model,
        data,
        prompt_key=prompt_key,
        answer_key=answer_key,
        system_prompt=system_prompt,
        max_samples=num_samples,
        dataset_config_name=dataset_config_name,
        max_prompt_length=max_prompt_length,
        device=device,
        dtype=dtype,
        chat_template=chat_template,
        trust_remote_code=trust_remote_code,
    )
    records = evaluate_items(
        network, tokenizer, eval_set, list(range(len(eval_set))), max_new_tokens=max_new_tokens
    )
    for record in records:
        verdict = (
            "correct"
            if record["strict_correct"]
            else ("correct (flexible only)" if record["flexible_correct"] else "wrong")
        )
        print(
            f"--- question {record['index']} ({verdict})\n{record['question']}\n--- model\n{record['generation']}"
        )
        print(f"--- reference\n{record['gold']}\n")
    return records


def main(command: str, args: list[str]) -> None:
    """Run ``evaluate`` or ``generate`` with jsonargparse (options and help from the signatures)."""
    from jsonargparse import CLI

    function = {"evaluate": evaluate, "generate": generate}[command]
    CLI(function, args=args, prog=f"lit-sft {command}", as_positional=False)


if __name__ == "__main__":  # pragma: no cover
    main(sys.argv[1], sys.argv[2:])
