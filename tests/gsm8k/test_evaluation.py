from __future__ import annotations

import json
import os

import pytest
import torch

from lit_sft.errors import RowError
from lit_sft.gsm8k.evaluation import evaluate_items, load_eval_set, shard
from lit_sft.gsm8k.scoring import GSM8KAccuracy
from tests.helpers import make_tokenizer, oracle_generate, write_jsonl


class Oracle(torch.nn.Module):
    def __init__(self, tokenizer, answers: dict[str, str]) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        self.generate = oracle_generate(tokenizer, answers)


@pytest.mark.parametrize(("count", "world"), [(10, 1), (10, 3), (2, 4), (0, 2)])
def test_shard_gives_every_rank_the_same_count_and_covers_every_item_once(count: int, world: int) -> None:
    shards = [shard(count, world, rank) for rank in range(world)]
    assert len({len(part) for part in shards}) == 1
    items = sorted(index for part in shards for index in part if index is not None)
    assert items == list(range(count))


def test_load_eval_set_from_gsm8k_test(gsm8k_dir: str) -> None:
    tokenizer = make_tokenizer("qwen")
    eval_set = load_eval_set(tokenizer, os.path.join(gsm8k_dir, "test.jsonl"), max_samples=5)
    assert len(eval_set) == 5 and eval_set.num_truncated == 0
    assert eval_set.questions[0].startswith("Janet")
    assert eval_set.references[0].endswith("#### 18")
    text = tokenizer.decode(eval_set.prompts[0].input_ids)
    assert text.startswith("<|im_start|>system\nYou are Qwen") and text.endswith("<|im_start|>assistant\n")
    short = load_eval_set(
        tokenizer, os.path.join(gsm8k_dir, "test.jsonl"), max_samples=5, max_prompt_length=100
    )
    assert short.num_truncated == 5 and all(len(p.input_ids) == 100 for p in short.prompts)


def test_verl_style_rows_with_message_prompts_and_bare_number_answers(tmp_path) -> None:
    rows = [
        {
            "prompt": [{"role": "user", "content": "What is 2+2? Let's think step by step."}],
            "reward_model": {"ground_truth": "4", "style": "rule"},
        }
    ]
    path = write_jsonl(str(tmp_path / "verl.jsonl"), rows)
    tokenizer = make_tokenizer("qwen")
    eval_set = load_eval_set(tokenizer, path, prompt_key="prompt", answer_key="reward_model.ground_truth")
    answers = {"What is 2+2? Let's think step by step.": "2+2 = 4\n#### 4"}
    [record] = evaluate_items(Oracle(tokenizer, answers), tokenizer, eval_set, [0])
    assert record["strict_correct"] and record["gold"] == "4"


def test_bad_eval_rows_name_the_row(tmp_path) -> None:
    path = write_jsonl(
        str(tmp_path / "q.jsonl"),
        [{"question": "q", "answer": "#### 1"}, {"question": "", "answer": "#### 2"}],
    )
    with pytest.raises(RowError, match=r"q\.jsonl, row 1, field 'question': prompt is empty"):
        load_eval_set(make_tokenizer("qwen"), path)


def test_evaluate_items_scores_and_skips_padding(tmp_path) -> None:
    rows = [
        {"question": "What is 1+1?", "answer": "1+1 = 2\n#### 2"},
        {"question": "What is 2+3?", "answer": "2+3 = 5\n#### 5"},
        {"question": "What is 4+4?", "answer": "4+4 = 8\n#### 8"},
    ]
    tokenizer = make_tokenizer("qwen")
    eval_set = load_eval_set(tokenizer, write_jsonl(str(tmp_path / "q.jsonl"), rows))
    answers = {
        "What is 1+1?": "1+1 = 2\n#### 2",  # right
        "What is 2+3?": "2+3 = 6\n#### 6",  # wrong
        "What is 4+4?": "It is 8.",  # right number, no '####'
    }
    records = evaluate_items(Oracle(tokenizer, answers), tokenizer, eval_set, [0, 1, 2, None], batch_size=2)
    assert [r["index"] for r in records] == [0, 1, 2]
    assert [r["strict_correct"] for r in records] == [True, False, False]
    assert [r["flexible_correct"] for r in records] == [True, False, True]
    assert records[2]["strict_answer"] is None and records[2]["generation"] == "It is 8."
    json.dumps(records)  # records are plain JSON
    metric = GSM8KAccuracy()
    metric.update([r["generation"] for r in records], [r["gold"] for r in records])
    result = metric.compute()
    assert float(result["strict"]) == pytest.approx(1 / 3)
    assert float(result["flexible"]) == pytest.approx(2 / 3)
    assert float(result["strict_invalid"]) == pytest.approx(1 / 3)
