"""GSM8K evaluation by generation: question rows -> prompts -> greedy answers -> scored records.

Shared by the `GSM8KEvaluation` callback (during ``fit``/``validate``) and ``lit-sft evaluate`` /
``lit-sft generate``. Prompts are rendered exactly as training prompts are (same keys, same system
prompt, same chat template), so the model is asked in the format it learned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from transformers import PreTrainedTokenizerBase

from lit_sft.data.conversation import FormatOptions, get_path, prompt_messages
from lit_sft.data.sources import expand_specs, load_sources
from lit_sft.errors import InvalidRow, RowError
from lit_sft.gsm8k.scoring import score
from lit_sft.inference.generation import Prompt, greedy_generate, render_prompt, stop_token_ids


@dataclass
class EvalSet:
    """Questions ready for generation.

    Attributes:
        questions: The question text shown in records (the last user message).
        prompts: Tokenized prompts (generation prompt included, left-truncated to the budget).
        references: Reference answers (GSM8K solutions or bare numbers).
    """

    questions: list[str] = field(default_factory=list)
    prompts: list[Prompt] = field(default_factory=list)
    references: list[Any] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def num_truncated(self) -> int:
        return sum(prompt.truncated for prompt in self.prompts)


def load_eval_set(
    tokenizer: PreTrainedTokenizerBase,
    files: str | Sequence[str],
    *,
    prompt_key: str = "question",
    answer_key: str = "answer",
    system_prompt: str | None = None,
    max_samples: int | None = None,
    max_prompt_length: int | None = 1024,
    template_kwargs: dict[str, Any] | None = None,
    cache_dir: str | None = None,
    dataset_config_name: str | None = None,
) -> EvalSet:
    """Read GSM8K-style rows (jsonl/parquet/Hub) and tokenize their prompts.

    Args:
        tokenizer: The model's tokenizer with its chat template.
        files: Data files or Hub ids, as for `SFTDataModule`.
        prompt_key: Column (or dotted path) of the prompt: a question string or a list of messages.
        answer_key: Column (or dotted path) of the reference: a GSM8K solution or a number.
        system_prompt: System message added when the prompt has none (as in training).
        max_samples: Use the first this many rows.
        max_prompt_length: Longer prompts keep their last tokens (counted in ``num_truncated``).
        template_kwargs: Extra chat-template variables.
        cache_dir: ``datasets`` cache directory.
        dataset_config_name: Configuration of Hub datasets (``main`` for ``openai/gsm8k``).

    Raises:
        RowError: For a row whose prompt or reference is missing or malformed.
    """
    options = FormatOptions(prompt_key=prompt_key, system_prompt=system_prompt)
    eval_set = EvalSet()
    sources = (
        source
        for spec in expand_specs(files)
        for source in load_sources(
            spec, config_name=dataset_config_name, cache_dir=cache_dir, default_split="test"
        )
    )
    for source in sources:
        dataset = source.dataset
        if max_samples is not None:
            remaining = max_samples - len(eval_set)
            if remaining <= 0:
                break
            dataset = dataset.select(range(min(remaining, len(dataset))))
        for row_index, row in enumerate(dataset):
            try:
                messages = prompt_messages(row, options)
                reference = get_path(row, answer_key)
            except InvalidRow as error:
                raise RowError(source.name, row_index, error.field, error.reason) from None
            if reference is None:
                raise RowError(source.name, row_index, answer_key, "the reference answer is null")
            eval_set.questions.append(str(messages[-1]["content"]))
            eval_set.prompts.append(render_prompt(tokenizer, messages, max_prompt_length, template_kwargs))
            eval_set.references.append(reference)
    return eval_set


def shard(count: int, world_size: int, rank: int) -> list[int | None]:
    """This rank's item indices; every rank gets ``ceil(count / world_size)``, None marking padding."""
    per_rank = math.ceil(count / world_size) if count else 0
    return [index if index < count else None for index in range(rank, per_rank * world_size, world_size)]


def evaluate_items(
    model: Any,
    tokenizer: PreTrainedTokenizerBase,
    eval_set: EvalSet,
    indices: Sequence[int | None],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 256,
    synced: bool = False,
    stop_ids: Sequence[int] | None = None,
    stop_early: bool = True,
) -> list[dict[str, Any]]:
    """Generate and score the items at ``indices`` (None: padding, generated but not returned).

    ``stop_early=False`` generates ``max_new_tokens`` for every item (speed measurements).

    Returns:
        One record per real item: index, question, generation, strict/flexible answers, gold, verdicts and
        whether the prompt was truncated.
    """
    if not indices:
        return []
    stop_ids = (
        list(stop_ids)
        if stop_ids is not None
        else stop_token_ids(tokenizer, getattr(model, "generation_config", None))
    )
    prompts = [eval_set.prompts[index if index is not None else 0].input_ids for index in indices]
    completions = greedy_generate(
        model,
        prompts,
        pad_token_id=tokenizer.pad_token_id,
        stop_ids=stop_ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        synced=synced,
        stop_early=stop_early,
    )
    records = []
    for index, tokens in zip(indices, completions, strict=True):
        if index is None:
            continue
        # One sequence of ids decodes to one string (decode's type covers batches too).
        generation = cast(str, tokenizer.decode(tokens, skip_special_tokens=True))
        result = score(generation, eval_set.references[index])
        records.append(
            {
                "index": index,
                "question": eval_set.questions[index],
                "generation": generation,
                "strict_answer": result.strict_answer,
                "flexible_answer": result.flexible_answer,
                "gold": eval_set.references[index],
                "strict_correct": result.strict_correct,
                "flexible_correct": result.flexible_correct,
                "prompt_truncated": eval_set.prompts[index].truncated,
            }
        )
    return records
