"""A micro-batch as HTML: per row, the trained tokens highlighted, the masked ones dimmed, and where
truncation cut (for notebooks: ``IPython.display.HTML(batch_html(datamodule))``).

Truncation only ever removes tokens at a row's start (``truncation: left`` and ``max_prompt_length``, which
drop the oldest tokens) or at its end (``truncation: right`` and ``max_response_length``); the marker says
how many tokens were cut and where.
"""

from __future__ import annotations

import html
from typing import Any

from lit_sft.batch import IGNORE_INDEX

STYLE = (
    "<style>.lit-sft-row{font-family:monospace;white-space:pre-wrap;border:1px solid #ccc;padding:4px;"
    "margin:4px 0}.lit-sft-trained{background:#c8f7c5}.lit-sft-masked{color:#888}"
    ".lit-sft-cut{background:#f7c5c5;font-weight:bold}.lit-sft-head{font-weight:bold}</style>"
)


def cut_sides(tokenize_options: Any, cut: int) -> tuple[str, ...]:
    """Where a row that lost ``cut`` tokens lost them: ``("start",)``, ``("end",)`` or both (when the limits
    in force could cut at either end, the split between them is not recorded)."""
    if cut <= 0:
        return ()
    sides = set()
    if tokenize_options.max_prompt_length is not None or tokenize_options.truncation == "left":
        sides.add("start")
    if tokenize_options.max_response_length is not None or tokenize_options.truncation == "right":
        sides.add("end")
    return tuple(side for side in ("start", "end") if side in sides)


def row_html(tokenizer: Any, input_ids: list[int], labels: list[int], cut: int = 0, sides: tuple = ()) -> str:
    """One row: runs of trained tokens in ``lit-sft-trained`` spans, masked ones in ``lit-sft-masked``
    spans, and a ``lit-sft-cut`` marker at each side truncation cut."""
    pieces: list[str] = []
    run: list[int] = []
    trained: bool | None = None
    for token, label in [*zip(input_ids, labels, strict=True), (None, None)]:
        is_trained = label is not None and label != IGNORE_INDEX
        if token is None or (trained is not None and is_trained != trained):
            if run:
                css = "lit-sft-trained" if trained else "lit-sft-masked"
                pieces.append(f'<span class="{css}">{html.escape(tokenizer.decode(run))}</span>')
            run = []
        if token is not None:
            run.append(token)
            trained = is_trained
    where = " or ".join(sides)
    marker = f'<span class="lit-sft-cut">[✂ {cut} tokens cut at the {where}]</span>'
    if "start" in sides:
        pieces.insert(0, marker)
    if "end" in sides and "start" not in sides:
        pieces.append(marker)
    return "".join(pieces)


def micro_batch_rows(datamodule: Any, index: int = 0) -> list[dict[str, Any]]:
    """The tokenized training rows of micro-batch ``index`` of the current epoch's plan (set up first)."""
    if datamodule.train_dataset is None:
        datamodule.setup("fit")
    sampler = datamodule.train_dataloader().sampler
    micro_batch = sampler.plan(sampler.epoch)[index]
    return [datamodule.train_dataset[int(i)] for i in micro_batch.indices]


def batch_html(datamodule: Any, index: int = 0) -> str:
    """Micro-batch ``index`` of ``datamodule``'s training data as HTML: one box per row, headed by its
    token counts, with its trained tokens highlighted, masked tokens dimmed and truncation marked."""
    options = datamodule.tokenize_options
    boxes = [STYLE]
    for number, row in enumerate(micro_batch_rows(datamodule, index)):
        input_ids, labels = list(row["input_ids"]), list(row["labels"])
        trained = sum(label != IGNORE_INDEX for label in labels)
        cut = int(row.get("original_length", len(input_ids))) - len(input_ids)
        sides = cut_sides(options, cut)
        head = f"row {number}: {len(input_ids)} tokens, {trained} trained, {len(input_ids) - trained} masked"
        head += f", {cut} cut by truncation" if cut > 0 else ""
        body = row_html(datamodule.tokenizer, input_ids, labels, cut, sides)
        boxes.append(
            f'<div class="lit-sft-row"><div class="lit-sft-head">{html.escape(head)}</div>{body}</div>'
        )
    return "\n".join(boxes)
