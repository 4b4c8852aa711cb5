"""Batched greedy generation for evaluation: left padding, KV cache, per-sequence stop tokens.

Prompts are sorted by length before batching (less padding), left-padded (so every sequence's next token
sits at the same position), and decoded greedily with the KV cache on; each sequence stops at its first
end-of-turn/EOS token. With ``synced=True`` every rank keeps stepping until all ranks are done, which
sharded models (FSDP) need because each forward pass is a collective.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from transformers import PreTrainedTokenizerBase

from lit_sft.data.conversation import Conversation
from lit_sft.data.render import ConversationRenderer
from lit_sft.errors import InvalidRow


def stop_token_ids(tokenizer: PreTrainedTokenizerBase, generation_config: Any = None) -> list[int]:
    """Token ids that end an assistant turn: the template's end-of-turn token, EOS, and the model's
    ``generation_config.eos_token_id`` (one id or a list)."""
    ids: list[int] = []
    probe = Conversation(
        messages=[{"role": "user", "content": "1"}, {"role": "assistant", "content": "2"}],
        trained=[False, True],
    )
    try:
        rendered = ConversationRenderer(tokenizer).render(probe)
    except InvalidRow:  # a template that rejects the probe: fall back to EOS and the generation config
        rendered = None
    marker = ""
    if rendered is not None:
        start, end = rendered.trained_spans[0]
        trained = rendered.text[start:end]
        marker = trained[trained.index("2") + 1 :] if "2" in trained else ""
    if marker:
        marker_ids = tokenizer(marker, add_special_tokens=False)["input_ids"]
        if len(marker_ids) == 1:
            ids.append(marker_ids[0])
    if tokenizer.eos_token_id is not None:
        ids.append(tokenizer.eos_token_id)
    configured = getattr(generation_config, "eos_token_id", None)
    if configured is not None:
        ids.extend(configured if isinstance(configured, list | tuple) else [configured])
    return list(dict.fromkeys(int(i) for i in ids))


@dataclass
class Prompt:
    """A tokenized prompt.

    Attributes:
        input_ids: The prompt's token ids (after truncation).
        truncated: Whether tokens were cut from its left to fit ``max_prompt_length``.
    """

    input_ids: list[int]
    truncated: bool = False


def render_prompt(
    tokenizer: PreTrainedTokenizerBase,
    messages: list[dict[str, Any]],
    max_prompt_length: int | None = None,
    template_kwargs: dict[str, Any] | None = None,
) -> Prompt:
    """Render messages with the generation prompt and tokenize; keep the last ``max_prompt_length`` tokens."""
    # One conversation, tokenized without return_dict, comes back as one list of ids.
    input_ids = cast(
        "list[int]",
        tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=True, return_dict=False, **(template_kwargs or {})
        ),
    )
    input_ids = list(input_ids)
    if max_prompt_length is not None and len(input_ids) > max_prompt_length:
        return Prompt(input_ids[-max_prompt_length:], truncated=True)
    return Prompt(input_ids)


def left_pad(sequences: Sequence[Sequence[int]], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad sequences into ``input_ids`` and ``attention_mask``."""
    length = max(len(sequence) for sequence in sequences)
    input_ids = torch.full((len(sequences), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(sequences), length), dtype=torch.long)
    for row, sequence in enumerate(sequences):
        if sequence:
            input_ids[row, length - len(sequence) :] = torch.as_tensor(list(sequence), dtype=torch.long)
            attention_mask[row, length - len(sequence) :] = 1
    return input_ids, attention_mask


def cut_at_stop(tokens: Sequence[int], stop_ids: Sequence[int]) -> list[int]:
    """Tokens up to (not including) the first stop token."""
    stops = set(stop_ids)
    for position, token in enumerate(tokens):
        if token in stops:
            return list(tokens[:position])
    return list(tokens)


@torch.no_grad()
def greedy_generate(
    model: Any,
    prompts: Sequence[Sequence[int]],
    *,
    pad_token_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int,
    batch_size: int = 32,
    synced: bool = False,
    stop_early: bool = True,
) -> list[list[int]]:
    """Greedy completions of ``prompts`` (in their order), each without its stop token.

    Args:
        model: A Hugging Face causal LM (or a peft model around one).
        prompts: Token ids of each prompt.
        pad_token_id: The padding id.
        stop_ids: Tokens that end a sequence.
        max_new_tokens: Most tokens generated per sequence.
        batch_size: Prompts per ``generate`` call.
        synced: Keep stepping until every rank is done (sharded models; all ranks must call this with
            the same number of batches).
        stop_early: Stop sequences at a stop token (False generates ``max_new_tokens`` always, for speed
            measurements).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]), reverse=True)
    outputs: list[list[int]] = [[] for _ in prompts]
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        input_ids, attention_mask = left_pad([prompts[i] for i in chunk], pad_token_id)
        generated = model.generate(
            input_ids=input_ids.to(device),
            attention_mask=attention_mask.to(device),
            max_new_tokens=max_new_tokens,
            min_new_tokens=None if stop_early else max_new_tokens,
            do_sample=False,
            use_cache=True,
            pad_token_id=pad_token_id,
            eos_token_id=list(stop_ids) if stop_early else None,
            synced_gpus=synced,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = generated[:, input_ids.shape[1] :].tolist()
        for index, tokens in zip(chunk, new_tokens, strict=True):
            outputs[index] = cut_at_stop(tokens, stop_ids) if stop_early else tokens
    return outputs
