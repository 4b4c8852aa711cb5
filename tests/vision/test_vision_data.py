"""Image + text rows: rendering, exact masks, the three ways images arrive, batching, and bad input."""

from __future__ import annotations

from typing import Any

import datasets
import pytest
import torch

from lit_sft.batch import IGNORE_INDEX
from lit_sft.data.vision import VisionCollator, VisionSFTDataModule, align_insertions
from lit_sft.errors import ConfigError, DataFileError, RowError
from tests.helpers import write_jsonl, write_parquet
from tests.vision.helpers import colour_rows, image_png

IMAGE_PAD, VISION_START, VISION_END, IM_END = (
    "<|image_pad|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|im_end|>",
)


def datamodule(processor_dir: str, files: str | list[str], tmp_path, **kwargs: Any) -> VisionSFTDataModule:
    kwargs.setdefault("image_root", str(tmp_path / "img"))
    module = VisionSFTDataModule(
        processor_name_or_path=processor_dir,
        train_files=files,
        cache_dir=str(tmp_path / "cache"),
        shuffle=False,
        **kwargs,
    )
    module.setup("fit")
    return module


def test_align_insertions_maps_each_token_back_or_marks_it_inserted() -> None:
    assert align_insertions([5, 9, 7], [5, 1, 1, 9, 7]) == [0, -1, -1, 1, 2]
    assert align_insertions([5, 9, 7], [5, 9]) is None  # a token went missing: not insertions only


def test_only_assistant_tokens_are_trained_and_image_tokens_never_are(processor_dir, tmp_path) -> None:
    rows = colour_rows(8, str(tmp_path / "img"), sizes=((56, 56), (84, 56), (112, 112)))
    module = datamodule(processor_dir, write_jsonl(str(tmp_path / "train.jsonl"), rows), tmp_path)
    tokenizer = module.tokenizer
    image_pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    expected_tokens = {(56, 56): 4, (84, 56): 6, (112, 112): 16}  # (height/28) x (width/28) merged patches
    assert len(module.train_dataset) == 8
    for index, row in enumerate(module.train_dataset):
        ids, labels, types = row["input_ids"], row["labels"], row["mm_token_type_ids"]
        colour = rows[index]["messages"][1]["content"]
        trained = [token for token, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX]
        assert trained == tokenizer(colour + IM_END, add_special_tokens=False)["input_ids"]
        assert [label for label in labels if label != IGNORE_INDEX] == trained  # labels are the tokens
        size = ((56, 56), (84, 56), (112, 112))[index % 3]
        assert ids.count(image_pad) == expected_tokens[size]
        assert types == [int(token == image_pad) for token in ids]
        text = tokenizer.decode(ids)
        assert text.startswith(
            f"<|im_start|>user\n{VISION_START}{IMAGE_PAD * expected_tokens[size]}{VISION_END}"
        )
        assert text.endswith(f"<|im_start|>assistant\n{colour}{IM_END}\n")
        assert len(row["images"]) == 1


def test_images_as_paths_bytes_or_an_images_column_give_the_same_tokens(processor_dir, tmp_path) -> None:
    rows = colour_rows(4, str(tmp_path / "img"))
    paths = write_jsonl(str(tmp_path / "paths.jsonl"), rows)

    def parts(row: dict[str, Any], image: Any) -> list[dict[str, Any]]:
        question = row["messages"][0]["content"][1]
        user = [{"type": "image", "image": image}, question]
        answer = [{"type": "text", "text": row["messages"][1]["content"], "image": None}]
        return [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]

    def read(path: str) -> bytes:
        with open(tmp_path / "img" / path, "rb") as handle:
            return handle.read()

    inline = [{"messages": parts(row, read(row["messages"][0]["content"][0]["image"]))} for row in rows]
    in_parquet = write_parquet(str(tmp_path / "bytes.parquet"), inline)
    column = datasets.Dataset.from_dict(
        {
            "messages": [parts(row, None) for row in rows],
            "images": [[str(tmp_path / "img" / row["messages"][0]["content"][0]["image"])] for row in rows],
        }
    ).cast_column("images", datasets.Sequence(datasets.Image()))  # PIL images when read back
    column_file = str(tmp_path / "column.parquet")
    column.to_parquet(column_file)
    results = [
        datamodule(processor_dir, files, tmp_path).train_dataset for files in (paths, in_parquet, column_file)
    ]
    for dataset in results[1:]:
        assert dataset["input_ids"] == results[0]["input_ids"]
        assert dataset["labels"] == results[0]["labels"]
    assert results[0]["images"][0] == [read(rows[0]["messages"][0]["content"][0]["image"])]


def test_a_padded_batch_carries_pixel_values_grids_and_token_types(processor_dir, tmp_path) -> None:
    rows = colour_rows(3, str(tmp_path / "img"), sizes=((56, 56), (84, 56), (112, 112)))
    rows.append(
        {"messages": [{"role": "user", "content": "No picture"}, {"role": "assistant", "content": "ok"}]}
    )
    module = datamodule(processor_dir, write_jsonl(str(tmp_path / "t.jsonl"), rows), tmp_path, batch_size=4)
    [batch] = list(module.train_dataloader())
    lengths = [len(ids) for ids in module.train_dataset["input_ids"]]
    assert batch["input_ids"].shape == batch["mm_token_type_ids"].shape == (4, max(lengths))
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 6], [1, 8, 8]]  # (t, h, w) in 14-px patches
    patch = 3 * 2 * 14 * 14  # channels x temporal patch x patch area
    assert batch["pixel_values"].shape == (16 + 24 + 64, patch)
    image_pad = module.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert torch.equal(batch["mm_token_type_ids"].bool(), batch["input_ids"] == image_pad)
    for row, length in enumerate(lengths):  # padding is masked by position
        assert batch["attention_mask"][row].tolist() == [1] * length + [0] * (max(lengths) - length)
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()


def test_packed_rows_are_concatenated_with_their_images_in_order(processor_dir, tmp_path) -> None:
    rows = colour_rows(3, str(tmp_path / "img"))
    module = datamodule(
        processor_dir, write_jsonl(str(tmp_path / "t.jsonl"), rows), tmp_path, packing=True, max_length=256
    )
    [batch] = list(module.train_dataloader())
    lengths = [len(ids) for ids in module.train_dataset["input_ids"]]
    assert batch["input_ids"].shape == batch["mm_token_type_ids"].shape == (1, sum(lengths))
    assert sorted(batch["row_lengths"]) == sorted(lengths) and batch["row_images"] == [1, 1, 1]
    assert batch["position_ids"][0].tolist() == [p for n in batch["row_lengths"] for p in range(n)]
    assert batch["image_grid_thw"].shape == (3, 3)


def test_truncation_never_cuts_an_image_such_rows_are_dropped_and_counted(processor_dir, tmp_path) -> None:
    rows = colour_rows(4, str(tmp_path / "img"), sizes=((56, 56), (112, 112)))  # 4 or 16 image tokens
    files = write_jsonl(str(tmp_path / "t.jsonl"), rows)
    lengths = [len(ids) for ids in datamodule(processor_dir, files, tmp_path).train_dataset["input_ids"]]
    assert lengths == [38, 51, 37, 52]  # "<|im_start|>user\n" is 6 tokens, then <|vision_start|>
    # Keeping the last 45 tokens leaves row 1's image whole but cuts row 3's <|vision_start|>.
    module = datamodule(processor_dir, files, tmp_path, max_length=45, truncation="left")
    summary = module.summaries["train"]
    assert summary.dropped == {"image_truncated": 1} and summary.kept == 3 and summary.truncated == 1
    assert "1 dropped (image_truncated: 1)" in summary.line()
    module = datamodule(processor_dir, files, tmp_path, max_length=40, truncation="left")  # into the pads
    assert module.summaries["train"].dropped == {"image_truncated": 2}
    with pytest.raises(RowError, match=r"row 1, field 'messages': the conversation .* more than 45"):
        datamodule(processor_dir, files, tmp_path, max_length=45, truncation="error")


def test_truncation_that_spares_the_images_keeps_the_row(processor_dir, tmp_path) -> None:
    rows = colour_rows(2, str(tmp_path / "img"))
    rows[0]["messages"][1]["content"] = "blue, " * 30  # a long answer, cut on the right
    module = datamodule(
        processor_dir,
        write_jsonl(str(tmp_path / "t.jsonl"), rows),
        tmp_path,
        max_length=64,
        truncation="right",
    )
    assert module.summaries["train"].kept == 2 and module.summaries["train"].truncated == 1
    row = module.train_dataset[0]
    image_pad = module.tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    assert len(row["input_ids"]) == 64 and row["labels"][-1] != IGNORE_INDEX
    assert row["input_ids"].count(image_pad) == 4 and row["mm_token_type_ids"].count(1) == 4


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda row: row["messages"][0]["content"][0].update(image="missing.png"),
         "messages[0].content[0].image", "cannot read image"),
        (lambda row: row["messages"][0]["content"][0].update(image="not-an-image.png"),
         "messages[0].content[0].image", "cannot be decoded"),
        (lambda row: row["messages"][0]["content"][0].update(image=7),
         "messages[0].content[0].image", "must be a path, bytes or a PIL image"),
        (lambda row: row["messages"][0]["content"].insert(0, {"type": "image"}),
         "messages", "mixes inline images and placeholders"),
        (lambda row: row["messages"][1].update(content=[{"type": "image", "image": "red-0.png"}]),
         "messages[1].content[0]", "images are supported in user messages"),
        (lambda row: row["messages"][0]["content"].append({"type": "audio"}),
         "messages[0].content[2]", "must be {type: text, text} or {type: image}"),
        (lambda row: row["messages"][0]["content"][1].update(text=f"Colour? {IMAGE_PAD}"),
         "messages", "2 image placeholders (<|image_pad|>) for 1 images"),
        (lambda row: row["messages"][0]["content"][0].update(image="too-long.png"),
         "messages", "the processor rejected the row: absolute aspect ratio must be smaller than 200"),
    ],
    ids=["missing", "undecodable", "wrong-kind", "mixed", "assistant-image", "unknown-part", "typed-placeholder",
         "processor-rejects"],
)  # fmt: skip
def test_bad_images_name_the_file_row_and_field(processor_dir, tmp_path, mutate, field, reason) -> None:
    rows = colour_rows(3, str(tmp_path / "img"))
    with open(tmp_path / "img" / "not-an-image.png", "w") as handle:
        handle.write("plain text")
    with open(tmp_path / "img" / "too-long.png", "wb") as handle:
        handle.write(image_png("red", (28 * 201, 28)))
    mutate(rows[2])
    files = write_jsonl(str(tmp_path / "t.jsonl"), rows)
    with pytest.raises(RowError) as caught:
        datamodule(processor_dir, files, tmp_path)
    assert caught.value.file == files and caught.value.row == 2
    assert caught.value.field == field and reason in caught.value.reason
    skipped = datamodule(processor_dir, files, tmp_path, skip_invalid_rows=True)
    assert skipped.summaries["train"].kept == 2 and sum(skipped.summaries["train"].dropped.values()) == 1


@pytest.mark.parametrize(("placeholders", "images"), [(2, 1), (1, 2), (1, 0)])
def test_placeholder_and_image_counts_must_match(processor_dir, tmp_path, placeholders, images) -> None:
    picture = str(tmp_path / "red.png")
    with open(picture, "wb") as handle:
        handle.write(image_png("red"))
    good = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": "red"},
        ],
        "images": [picture],
    }
    bad = {
        "messages": [
            {"role": "user", "content": [{"type": "image"}] * placeholders + [{"type": "text", "text": "?"}]},
            {"role": "assistant", "content": "red"},
        ],
        "images": [picture] * images,
    }
    files = write_jsonl(str(tmp_path / "t.jsonl"), [good, bad])
    with pytest.raises(
        RowError, match=rf"row 1, field 'images': {placeholders} image placeholders .* {images} images"
    ):
        datamodule(processor_dir, files, tmp_path)
    skipped = datamodule(processor_dir, files, tmp_path, skip_invalid_rows=True)
    assert skipped.summaries["train"].dropped == {"image_count_mismatch": 1}


def test_a_missing_messages_column_is_a_data_file_error_and_other_formats_a_config_error(
    processor_dir, tmp_path
) -> None:
    files = write_jsonl(str(tmp_path / "t.jsonl"), [{"prompt": "a", "response": "b"}])
    with pytest.raises(DataFileError, match="missing column 'messages'"):
        datamodule(processor_dir, files, tmp_path)
    with pytest.raises(ConfigError, match=r"data\.format=messages"):
        VisionSFTDataModule(train_files=files, format="prompt_response")


def test_an_unloadable_processor_is_a_config_error(tmp_path) -> None:
    module = VisionSFTDataModule(processor_name_or_path=str(tmp_path / "nothing"), train_files="x.jsonl")
    with pytest.raises(ConfigError, match="cannot load a processor"):
        module.processor  # noqa: B018


def test_the_collator_pads_rows_without_images(processor_dir) -> None:
    from lit_sft.hub import load_processor

    processor = load_processor(processor_dir)
    batch = VisionCollator(processor, processor.tokenizer.pad_token_id)(
        [[1, 2, 3], [4]], [[1, 2, 3], [4]], [[0, 0, 0], [0]], [[], []]
    )
    assert "pixel_values" not in batch and batch["mm_token_type_ids"].tolist() == [[0, 0, 0], [0, 0, 0]]
