"""The batch view marks exactly the trained tokens, and truncation where it cut."""

from __future__ import annotations

import re
from html import unescape

from lit_sft.data import SFTDataModule
from lit_sft.data.highlight import batch_html, micro_batch_rows
from tests.helpers import arithmetic_rows, write_jsonl


def spans(html_text: str, css: str) -> list[str]:
    return [unescape(text) for text in re.findall(rf'<span class="{css}">(.*?)</span>', html_text, re.S)]


LONG_PROMPT = {"question": "Why? " * 40, "answer": "#### 1"}
LONG_ANSWER = {"question": "Why?", "answer": "Because. " * 30 + "#### 1"}


def datamodule(tmp_path, long_row=LONG_PROMPT, **kwargs) -> SFTDataModule:
    rows = [*arithmetic_rows(3), long_row]
    return SFTDataModule(
        train_files=write_jsonl(str(tmp_path / "train.jsonl"), rows),
        tokenizer_name_or_path="builtin:byte-chatml",
        prompt_key="question",
        response_key="answer",
        batch_size=4,
        shuffle=False,
        **kwargs,
    )


def test_trained_spans_are_exactly_the_label_tokens(tmp_path) -> None:
    dm = datamodule(tmp_path)
    page = batch_html(dm)
    rows = micro_batch_rows(dm)
    tokenizer = dm.tokenizer
    expected = [tokenizer.decode([t for t in row["labels"] if t != -100]) for row in rows]
    assert "".join(spans(page, "lit-sft-trained")) == "".join(expected)
    assert expected[0] == "0+0=0\n#### 0<|im_end|>"
    assert "<|im_start|>assistant\n" in "".join(spans(page, "lit-sft-masked"))
    assert "cut by truncation" not in page and 'class="lit-sft-cut"' not in page


def test_truncation_is_marked_where_it_cut(tmp_path) -> None:
    dm = datamodule(tmp_path, max_length=96, truncation="left")
    page = batch_html(dm)
    [long_row] = [row for row in micro_batch_rows(dm) if row["original_length"] > 96]
    cut = long_row["original_length"] - 96
    assert f"{cut} cut by truncation" in page
    marker = f"[✂ {cut} tokens cut at the start]"
    assert spans(page, "lit-sft-cut") == [marker]
    # The marker opens the long row's box: what follows it is the kept end of that row.
    after = page.split(marker, 1)[1]
    assert re.match(r'</span><span class="lit-sft-masked">[^<]*Why\?', after), after[:120]

    # Right truncation would leave the long prompt no trained token (that row is dropped); a long answer
    # loses its end instead.
    right = datamodule(tmp_path, LONG_ANSWER, max_length=96, truncation="right")
    [long_row] = [row for row in micro_batch_rows(right) if row["original_length"] > 96]
    page = batch_html(right)
    marker = f"[✂ {long_row['original_length'] - 96} tokens cut at the end]"
    assert spans(page, "lit-sft-cut") == [marker]
    # It closes the row, right after the kept part of the trained answer.
    closing = rf'<span class="lit-sft-trained">[^<]*</span><span class="lit-sft-cut">{re.escape(marker)}</span></div>'
    assert re.search(closing, page), page[-300:]
