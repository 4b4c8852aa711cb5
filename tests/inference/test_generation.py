from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_sft.inference.generation import cut_at_stop, greedy_generate, left_pad, render_prompt, stop_token_ids
from tests.helpers import make_tokenizer, tiny_model_config


@pytest.fixture(scope="module")
def model() -> AutoModelForCausalLM:
    values = tiny_model_config(initializer_range=0.5)  # peaked logits: greedy choices are not near-ties
    config = AutoConfig.for_model(values.pop("model_type"), vocab_size=300, **values)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config).eval()


def test_left_pad_and_cut_at_stop() -> None:
    input_ids, attention_mask = left_pad([[5, 6, 7], [8]], pad_token_id=0)
    assert input_ids.tolist() == [[5, 6, 7], [0, 0, 8]]
    assert attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert cut_at_stop([1, 2, 9, 3, 9], [9]) == [1, 2]
    assert cut_at_stop([1, 2], [9]) == [1, 2]


@pytest.mark.parametrize(
    ("family", "expected"),
    [("qwen", ["<|im_end|>"]), ("llama3", ["<|eot_id|>"]), ("gemma", ["<end_of_turn>", "<eos>"])],
)
def test_stop_tokens_are_the_templates_end_of_turn_and_eos(family: str, expected: list[str]) -> None:
    tokenizer = make_tokenizer(family)
    assert stop_token_ids(tokenizer) == tokenizer.convert_tokens_to_ids(expected)


def test_generation_config_eos_ids_are_added() -> None:
    tokenizer = make_tokenizer("qwen")

    config = SimpleNamespace(
        eos_token_id=[tokenizer.convert_tokens_to_ids("<|endoftext|>"), tokenizer.eos_token_id]
    )
    assert stop_token_ids(tokenizer, config) == tokenizer.convert_tokens_to_ids(
        ["<|im_end|>", "<|endoftext|>"]
    )


def reference_greedy(model, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding the slow way: one full forward per token, no cache, no padding."""
    tokens = list(prompt)
    for _ in range(steps):
        logits = model(torch.tensor([tokens])).logits
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt) :]


def test_batched_left_padded_cached_generation_equals_one_by_one_greedy(model) -> None:
    prompts = [[11, 12, 13, 14, 15, 16, 17], [20, 21], [30, 31, 32, 33], [40]]
    batched = greedy_generate(
        model, prompts, pad_token_id=0, stop_ids=[299], max_new_tokens=6, batch_size=4, stop_early=False
    )
    assert batched == [reference_greedy(model, prompt, 6) for prompt in prompts]


def test_each_sequence_stops_at_its_own_stop_token(model) -> None:
    prompts = [[11, 12, 13], [20, 21, 22, 23, 24]]
    free = [reference_greedy(model, prompt, 6) for prompt in prompts]
    stop = free[0][2]  # the first sequence's third token becomes a stop token
    assert stop not in free[0][:2] and stop not in free[1], (free, stop)  # the second one never stops
    stopped = greedy_generate(model, prompts, pad_token_id=0, stop_ids=[stop], max_new_tokens=6, batch_size=2)
    assert stopped == [free[0][:2], free[1]]


def test_render_prompt_ends_with_the_generation_prompt_and_truncates_from_the_left() -> None:
    tokenizer = make_tokenizer("qwen")
    messages = [{"role": "user", "content": "What is 2+2?"}]
    prompt = render_prompt(tokenizer, messages)
    assert tokenizer.decode(prompt.input_ids).endswith("What is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    assert not prompt.truncated
    short = render_prompt(tokenizer, messages, max_prompt_length=10)
    assert short.truncated and short.input_ids == prompt.input_ids[-10:]
