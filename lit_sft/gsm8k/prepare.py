"""GSM8K in verl's formats (``lit-sft prepare gsm8k``): single-turn SFT/RL parquet rows
(``OUT/{split}.parquet``) and ``messages`` rows (``OUT/multiturn/{split}.parquet``)."""

from __future__ import annotations

import os
from typing import Any

from lit_sft.data.sources import load_source
from lit_sft.errors import ConfigError
from lit_sft.gsm8k.scoring import extract_strict
from lit_sft.io import write_rows

#: The instruction verl appends to every GSM8K question.
GSM8K_INSTRUCTION = 'Let\'s think step by step and output the final answer after "####".'


def _gsm8k_split(source: str, split: str, config_name: str) -> Any:
    if os.path.isdir(source):
        for ending in (".jsonl", ".parquet", ".json"):
            path = os.path.join(source, f"{split}{ending}")
            if os.path.isfile(path):
                return load_source(path).dataset
        raise ConfigError(f"{source}: no {split}.jsonl or {split}.parquet")
    return load_source(f"{source}:{split}", config_name=config_name).dataset


def gsm8k(
    source: str,
    out: str,
    splits: list[str] | None = None,
    instruction: str = GSM8K_INSTRUCTION,
    config_name: str = "main",
) -> dict[str, int]:
    """Write GSM8K in verl's formats: ``OUT/{split}.parquet`` (single-turn) and ``OUT/multiturn/{split}.parquet``.

    Single-turn rows: ``data_source``, ``prompt`` (a user message: the question and the instruction),
    ``response`` (the reference solution), ``ability``, ``reward_model`` (``{style: rule, ground_truth}``
    with the numeric answer) and ``extra_info`` (split, index, question, answer, ground_truth). Multi-turn
    rows: ``messages`` (the same user message, then the solution as the assistant turn).

    Args:
        source: A directory with ``train.jsonl``/``test.jsonl`` (OpenAI's release) or a Hub id (``openai/gsm8k``).
        out: The output directory.
        splits: Splits to convert (default: train and test).
        instruction: Appended to each question (verl's by default).
        config_name: Hub configuration (``main``).

    Returns:
        Rows written per split.
    """
    written = {}
    for split in splits or ["train", "test"]:
        single, multi = [], []
        for index, row in enumerate(_gsm8k_split(source, split, config_name)):
            question, answer = row.get("question"), row.get("answer")
            ground_truth = extract_strict(answer) if isinstance(answer, str) else None
            if not isinstance(question, str) or not question.strip() or ground_truth is None:
                raise ConfigError(
                    f"{source} {split}, row {index}: not a GSM8K row (question, answer ending in '#### N')"
                )
            prompt = f"{question} {instruction}".strip()
            single.append(
                {
                    "data_source": "openai/gsm8k",
                    "prompt": [{"role": "user", "content": prompt}],
                    "response": answer,
                    "ability": "math",
                    "reward_model": {"style": "rule", "ground_truth": ground_truth},
                    "extra_info": {
                        "split": split,
                        "index": index,
                        "question": question,
                        "answer": answer,
                        "ground_truth": ground_truth,
                    },
                }
            )
            multi.append(
                {"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]}
            )
        write_rows(os.path.join(out, f"{split}.parquet"), single)
        write_rows(os.path.join(out, "multiturn", f"{split}.parquet"), multi)
        written[split] = len(single)
        print(f"gsm8k {split}: {len(single)} rows -> {out}/{split}.parquet, {out}/multiturn/{split}.parquet")
    return written
