"""The tokens lit_sft trains on verl-format rows, against verl's own datasets' loss masks.

verl's code is reimplemented here from its source (verl-project/verl, commit b178a3cd5), not imported:
``verl/utils/dataset/sft_dataset.py`` (``SFTDataset.__getitem__``) and
``verl/utils/dataset/multiturn_sft_dataset.py`` (``MultiTurnSFTDataset``, with
``verl/utils/chat_template.py``'s ``extract_system_prompt_and_generation``).
"""

from __future__ import annotations

import json
import os

import pyarrow.parquet as pq
import pytest

from lit_sft.data import SFTDataModule
from lit_sft.verl.overrides import load
from lit_sft.verl.translate import Launch, translate
from tests.helpers import make_tokenizer, write_parquet


def verl_sft_row(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """SFTDataset.__getitem__ without padding: (input_ids, loss_mask).

    The prompt is a user message rendered with the generation prompt; the response and the EOS token are
    tokenized separately and appended. ``loss_mask`` is 0 on the prompt except its last token and on the
    last token: position i marks the prediction of token i + 1.
    """
    prompt_text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
    response_ids = tokenizer(response + tokenizer.eos_token, add_special_tokens=False)["input_ids"]
    input_ids = prompt_ids + response_ids
    loss_mask = [1] * len(input_ids)
    if len(prompt_ids) > 1:
        loss_mask[: len(prompt_ids) - 1] = [0] * (len(prompt_ids) - 1)
    loss_mask[len(input_ids) - 1] = 0
    return input_ids, loss_mask


def verl_multiturn_row(tokenizer, messages: list[dict], tools: list | None) -> tuple[list[int], list[int]]:
    """MultiTurnSFTDataset.__getitem__ (no padding): each message rendered alone, the system prompt the
    template adds cut from every message but the first, assistant tokens after the generation prompt
    trained; ``loss_mask`` marks trained tokens themselves."""

    def ids_of(conversation: list[dict], tools: list | None = None, generation: bool = False) -> list[int]:
        return tokenizer.apply_chat_template(
            conversation, tools=tools, add_generation_prompt=generation, tokenize=True, return_dict=True
        )["input_ids"]

    empty = {"role": "user", "content": ""}
    one, two = ids_of([empty]), ids_of([empty, empty])
    system_prompt = one[: -(len(two) - len(one))]
    generation_prompt = ids_of([empty], generation=True)[len(one) :]
    input_ids, loss_mask = [], []
    for index, message in enumerate(messages):
        ids = ids_of([message], tools if index == 0 else None)
        if index != 0 and message["role"] != "system":
            ids = ids[len(system_prompt) :]
        mask = [0] * len(ids)
        if message["role"] == "assistant":
            mask = [0] * len(generation_prompt) + [1] * (len(ids) - len(generation_prompt))
        input_ids += ids
        loss_mask += mask
    assert input_ids == ids_of(messages, tools), "verl's sanity_check would refuse this row"
    return input_ids, loss_mask


def gsm8k_verl_rows(gsm8k_dir: str, count: int) -> list[dict]:
    """Rows as verl's examples/data_preprocess/gsm8k.py writes them (the fields SFT reads)."""
    rows = []
    with open(os.path.join(gsm8k_dir, "train.jsonl"), encoding="utf-8") as handle:
        for index, line in zip(range(count), handle, strict=False):
            item = json.loads(line)
            rows.append({"extra_info": {"split": "train", "index": index, "question": item["question"],
                                        "answer": item["answer"]}})  # fmt: skip
    return rows


def lit_sft_rows(tmp_path, tokenizer_dir: str, rows: list[dict], words: list[str]) -> list[dict]:
    """Tokenize ``rows`` the way ``lit-sft verl`` configures the data module for ``words``."""
    path = write_parquet(str(tmp_path / "rows.parquet"), rows)
    config = load([f"data.train_files={path}", "data.val_files=null", "model.partial_pretrain=x", *words])
    options = translate(config, Launch()).config["data"]["init_args"]
    options.update(tokenizer_name_or_path=tokenizer_dir, max_length=4096)
    for key in ("global_batch_size", "drop_last"):
        options.pop(key)
    module = SFTDataModule(**options)
    module.setup("fit")
    return [module.train_dataset[i] for i in range(len(rows))]


@pytest.mark.parametrize("family", ["qwen", "llama3"])
def test_gsm8k_rows_train_exactly_the_tokens_verls_sft_dataset_marks(
    tmp_path, gsm8k_dir, tokenizer_dir, family
) -> None:
    tokenizer = make_tokenizer(family)
    rows = gsm8k_verl_rows(gsm8k_dir, 4)
    words = ["data.prompt_key=extra_info", "data.response_key=extra_info",
             "data.prompt_dict_keys=['question']", "+data.response_dict_keys=['answer']"]  # fmt: skip
    for row, ours in zip(rows, lit_sft_rows(tmp_path, tokenizer_dir(family), rows, words), strict=True):
        verl_ids, loss_mask = verl_sft_row(
            tokenizer, row["extra_info"]["question"], row["extra_info"]["answer"]
        )
        # the same tokens (lit_sft's rendering may go on after verl's EOS: Qwen's template writes "\n")
        assert ours["input_ids"][: len(verl_ids)] == verl_ids
        trained = [i for i, label in enumerate(ours["labels"]) if label != -100]
        assert trained == [i + 1 for i, marked in enumerate(loss_mask) if marked]  # the response and its EOS
        assert [ours["input_ids"][i] for i in trained] == [ours["labels"][i] for i in trained]
        # verl's legacy fsdp_sft_trainer reads the mask one token late (loss_mask[:, 1:] against
        # input_ids[:, 1:], verl issue 3562): the prompt's last token trained, the EOS not. lit_sft does not.
        assert trained != [i for i, marked in enumerate(loss_mask) if marked]
        assert ours["input_ids"][trained[-1]] == tokenizer.eos_token_id


def test_multiturn_rows_with_tools_train_verls_assistant_tokens_without_the_newline_after_end_of_turn(
    tmp_path, tokenizer_dir
) -> None:
    tokenizer = make_tokenizer("qwen")
    tools = [{"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}]
    messages = [
        {"role": "user", "content": "Add 2 and 3."},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 3}}}],
        },
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "The sum is 5."},
    ]
    [ours] = lit_sft_rows(tmp_path, tokenizer_dir("qwen"), [{"messages": messages, "tools": tools}],
                          ["data.multiturn.enable=true"])  # fmt: skip
    # verl reads the same parquet file: the order of each struct's fields is Arrow's (pyarrow <= 23 sorts them,
    # 24+ keeps the order written), and the template's `tojson` writes tools and arguments in that order.
    [stored] = pq.read_table(tmp_path / "rows.parquet").to_pylist()
    verl_ids, loss_mask = verl_multiturn_row(tokenizer, stored["messages"], stored["tools"])
    assert ours["input_ids"] == verl_ids
    verl_trained = [i for i, marked in enumerate(loss_mask) if marked]
    trained = [i for i, label in enumerate(ours["labels"]) if label != -100]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    # verl also trains the "\n" its per-message rendering puts after <|im_end|>; that token is the template's
    # separator before the next turn, not the assistant's output, so lit_sft leaves it out.
    end_of_turn = tokenizer.convert_tokens_to_ids("<|im_end|>")
    after_end = [i for i in verl_trained if verl_ids[i : i + 1] == newline and verl_ids[i - 1] == end_of_turn]
    assert trained == [i for i in verl_trained if i not in after_end]
    assert len(after_end) == 2  # one per assistant turn


def test_where_eos_is_not_the_end_of_turn_lit_sft_trains_the_templates_end_of_turn(
    tmp_path, gsm8k_dir, tokenizer_dir
) -> None:
    """Gemma-style: verl appends ``eos_token`` (<eos>) to the response; lit_sft trains the end-of-turn token
    the chat template writes (<end_of_turn>), the one generation and RL rollouts stop on."""
    tokenizer = make_tokenizer("gemma")
    rows = gsm8k_verl_rows(gsm8k_dir, 1)
    [ours] = lit_sft_rows(tmp_path, tokenizer_dir("gemma"), rows,
                          ["data.prompt_key=extra_info.question", "data.response_key=extra_info.answer"])  # fmt: skip
    verl_ids, loss_mask = verl_sft_row(
        tokenizer, rows[0]["extra_info"]["question"], rows[0]["extra_info"]["answer"]
    )
    trained = [i for i, label in enumerate(ours["labels"]) if label != -100]
    assert ours["input_ids"][: len(verl_ids) - 1] == verl_ids[:-1]  # identical up to the last token
    assert verl_ids[-1] == tokenizer.eos_token_id
    assert ours["input_ids"][trained[-1]] == tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert trained == [i + 1 for i, marked in enumerate(loss_mask) if marked]
