"""Builders for tests: tokenizers of three chat-template families, tiny models, data files.

Everything is made in memory in well under a second; nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from lit_sft.hub import _bytes_to_unicode

# Qwen2.5's ChatML template: an implicit default system prompt, tools in the system turn, tool calls in
# assistant turns, consecutive tool results grouped into one user turn.
QWEN_TEMPLATE = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions to assist with the user query.\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama 3: BOS written by the template (the tokenizer also adds one when asked: it must not be doubled),
# header tokens around the role, <|eot_id|> closes every turn, content trimmed.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)

# Gemma: no system role (the template raises), the assistant is called "model", a newline follows
# <end_of_turn>.
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\\n'}}{% endif %}"
)

FAMILIES: dict[str, dict[str, Any]] = {
    "qwen": {
        "template": QWEN_TEMPLATE,
        "specials": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "extra_tokens": ["<tool_call>", "</tool_call>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "end_of_turn": "<|im_end|>",
    },
    "llama3": {
        "template": LLAMA3_TEMPLATE,
        "specials": [
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eot_id|>",
        ],
        "extra_tokens": [],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": None,
        "end_of_turn": "<|eot_id|>",
    },
    "gemma": {
        "template": GEMMA_TEMPLATE,
        "specials": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "extra_tokens": [],
        "bos": "<bos>",
        "eos": "<eos>",
        "pad": "<pad>",
        "end_of_turn": "<end_of_turn>",
    },
}


def make_tokenizer(family: str = "qwen") -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with the special tokens and chat template of a model family.

    Tokenizers with a BOS also add it on plain calls (``add_special_tokens=True``), as Llama 3's and
    Gemma's do, so a doubled BOS would show.
    """
    spec = FAMILIES[family]
    vocab = {char: byte for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(spec["specials"])
    backend.add_tokens(spec["extra_tokens"])
    if spec["bos"]:
        bos_id = backend.token_to_id(spec["bos"])
        backend.post_processor = processors.TemplateProcessing(
            single=f"{spec['bos']} $A", pair=f"{spec['bos']} $A $B", special_tokens=[(spec["bos"], bos_id)]
        )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token=spec["bos"], eos_token=spec["eos"], pad_token=spec["pad"]
    )
    tokenizer.chat_template = spec["template"]
    return tokenizer


def tiny_model_config(**overrides: Any) -> dict[str, Any]:
    """A 2-layer Qwen2-style config (about 50k parameters with a 270-token vocabulary)."""
    config = {
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 512,
        "tie_word_embeddings": False,
    }
    config.update(overrides)
    return config


def save_tiny_model(directory: str, family: str = "qwen", seed: int = 0) -> str:
    """Save a random tiny model and its tokenizer with ``save_pretrained``; return the directory."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = make_tokenizer(family)
    values = tiny_model_config()
    config = AutoConfig.for_model(
        values.pop("model_type"),
        vocab_size=len(tokenizer),
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        **values,
    )
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_jsonl(path: str, rows: Sequence[Any]) -> str:
    """Write rows (dicts, or raw strings written as they are) one per line."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write((row if isinstance(row, str) else json.dumps(row)) + "\n")
    return path


def write_parquet(path: str, rows: Sequence[dict[str, Any]]) -> str:
    """Write rows as a parquet file (nested dicts and lists become nested columns)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    pq.write_table(pa.Table.from_pylist(list(rows)), path)
    return path


def arithmetic_data(train_files: str, **kwargs: Any):
    """An `SFTDataModule` over `arithmetic_rows` files (``question``/``answer`` columns, the byte tokenizer)."""
    from lit_sft import SFTDataModule

    return SFTDataModule(
        train_files=train_files,
        tokenizer_name_or_path=kwargs.pop("tokenizer_name_or_path", "builtin:byte-chatml"),
        prompt_key="question",
        response_key="answer",
        **kwargs,
    )


def arithmetic_rows(count: int, start: int = 0) -> list[dict[str, str]]:
    """GSM8K-style rows of varied length (so that micro-batches hold different numbers of targets)."""
    rows = []
    for i in range(start, start + count):
        words = " and then" * (i % 5)
        rows.append(
            {
                "question": f"What is {i} plus {i % 7}{words}?",
                "answer": f"{i}+{i % 7}={i + i % 7}\n#### {i + i % 7}",
            }
        )
    return rows


def quiet_trainer(**kwargs: Any):
    """A CPU Trainer with no logger, checkpoints, progress bar or sanity check (override any of them)."""
    from lightning.pytorch import Trainer

    defaults = {
        "accelerator": "cpu",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 0,
    }
    defaults.update(kwargs)
    return Trainer(**defaults)


def oracle_generate(tokenizer, answers: dict[str, str]):
    """A stand-in for ``model.generate`` that answers each question with a fixed text, then end-of-turn."""
    import torch

    def generate(input_ids, attention_mask, max_new_tokens, pad_token_id, **kwargs):
        completions = []
        for row, mask in zip(input_ids, attention_mask, strict=True):
            prompt = tokenizer.decode(row[mask.bool()])
            question = prompt.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0]
            tokens = tokenizer(answers[question], add_special_tokens=False)["input_ids"] + [
                tokenizer.eos_token_id
            ]
            tokens = tokens[:max_new_tokens]
            completions.append(tokens + [pad_token_id] * (max_new_tokens - len(tokens)))
        return torch.cat([input_ids, torch.tensor(completions)], dim=1)

    return generate


def make_bpe_tokenizer(texts: Sequence[str], vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on ``texts`` (merges make tokens straddle text boundaries) with ChatML."""
    from tokenizers import trainers

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=FAMILIES["qwen"]["specials"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = QWEN_TEMPLATE
    return tokenizer
