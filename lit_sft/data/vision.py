"""Image + text conversations for vision-language models (Qwen2.5-VL style).

Rows have ``messages`` whose user content mixes text and images::

    {"messages": [{"role": "user", "content": [{"type": "image", "image": "cat.png"},
                                                 {"type": "text", "text": "What is this?"}]},
                  {"role": "assistant", "content": "A cat."}]}

An image is a path (relative to ``image_root``), bytes, a ``{"bytes", "path"}`` mapping (parquet image
columns), or a PIL image (``datasets.Image``); or the parts are bare ``{"type": "image"}`` placeholders and
the images come, in order, from an ``images`` column. The conversation is rendered and masked exactly as
text is (assistant content and end-of-turn trained); the model's processor then expands each image
placeholder into the image's tokens, which are never trained. Truncation never cuts through an image:
a row whose images would lose tokens is dropped and counted (or rejected under ``truncation: error``).
Images travel with the tokenized rows and are turned into pixel values in the DataLoader workers.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any, cast

import datasets
import torch

from lit_sft.batch import IGNORE_INDEX, VisionBatch
from lit_sft.data.collate import PackedCollator, PaddingCollator
from lit_sft.data.conversation import Conversation, FormatOptions, row_to_conversation
from lit_sft.data.datamodule import SFTDataModule
from lit_sft.data.render import ConversationRenderer
from lit_sft.data.row_tokenizer import IMAGE_TRUNCATED, TOKENIZED_FEATURES, RejectedRow, RowTokenizer
from lit_sft.data.splits import check_columns
from lit_sft.data.tokenize import (
    TokenizeOptions,
    tokenize_rendered,
    truncate,
)
from lit_sft.errors import ConfigError, InvalidRow
from lit_sft.hub import ProcessorOwner

VISION_FEATURES = datasets.Features(
    {
        **TOKENIZED_FEATURES,
        "images": datasets.Sequence(datasets.Value("binary")),
        "mm_token_type_ids": datasets.Sequence(datasets.Value("int8")),
    }
)


def image_bytes(value: Any, root: str | None, where: str) -> bytes:
    """The encoded bytes of an image given as a path, bytes, a ``{bytes, path}`` mapping or a PIL image,
    checked to decode.

    Raises:
        InvalidRow: When the image is missing, unreadable, or of an unsupported kind.
    """
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(value, str):
        if value.startswith(("http://", "https://")):
            raise InvalidRow(
                where, f"image URLs are not fetched ({value}); download the images first", "invalid_image"
            )
        path = value if os.path.isabs(value) or root is None else os.path.join(root, value)
        try:
            with open(path, "rb") as handle:
                value = handle.read()
        except OSError as error:
            raise InvalidRow(where, f"cannot read image {path}: {error.strerror}", "invalid_image") from None
    if not isinstance(value, bytes | bytearray):
        raise InvalidRow(
            where,
            f"an image must be a path, bytes or a PIL image, got {type(value).__name__}",
            "invalid_image",
        )
    try:
        with Image.open(io.BytesIO(value)) as image:
            image.verify()
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise InvalidRow(where, f"the image cannot be decoded ({error})", "invalid_image") from None
    return bytes(value)


def collect_images(
    conversation: Conversation, row: Mapping[str, Any], images_key: str, root: str | None
) -> list[bytes]:
    """The conversation's images in order, as bytes; its image parts become bare ``{"type": "image"}``.

    Raises:
        InvalidRow: For unreadable images, or placeholders that do not match the images column.
    """
    inline, placeholders = [], []
    for index, message in enumerate(conversation.messages):
        if not isinstance(message.get("content"), list):
            continue
        for position, part in enumerate(message["content"]):
            if part["type"] != "image":
                continue
            where = f"{conversation.field}[{index}].content[{position}].image"
            if "image" in part:
                inline.append(image_bytes(part["image"], root, where))
            else:
                placeholders.append(where)
            message["content"][position] = {"type": "image"}
    if not placeholders:
        return inline
    if inline:
        raise InvalidRow(
            conversation.field,
            "mixes inline images and placeholders for the images column",
            "image_count_mismatch",
        )
    column = row.get(images_key)
    column = [] if column is None else list(column)
    if len(column) != len(placeholders):
        raise InvalidRow(
            images_key,
            f"{len(placeholders)} image placeholders in the messages but {len(column)} images",
            kind="image_count_mismatch",
        )
    return [image_bytes(value, root, f"{images_key}[{i}]") for i, value in enumerate(column)]


def align_insertions(short: Sequence[int], long: Sequence[int]) -> list[int] | None:
    """For each token of ``long``, its position in ``short``, or -1 where ``long`` inserts a token; None when
    ``long`` is not ``short`` with insertions (the processor changed the text otherwise)."""
    positions, cursor = [], 0
    for token in long:
        if cursor < len(short) and token == short[cursor]:
            positions.append(cursor)
            cursor += 1
        else:
            positions.append(-1)
    return positions if cursor == len(short) else None


def image_spans(input_ids: Sequence[int], in_image: Sequence[bool], special_ids: set[int]) -> set[int]:
    """Positions that belong to an image: its tokens, and the special tokens right around each run of them
    (Qwen's ``<|vision_start|>``/``<|vision_end|>``, Gemma's ``<start_of_image>``...). Truncation may keep all
    of an image or none of a row, nothing in between."""
    span: set[int] = set()
    for index, flag in enumerate(in_image):
        if not flag:
            continue
        span.add(index)
        for neighbour in (index - 1, index + 1):
            if (
                0 <= neighbour < len(input_ids)
                and not in_image[neighbour]
                and input_ids[neighbour] in special_ids
            ):
                span.add(neighbour)
    return span


class VisionRowTokenizer(RowTokenizer):
    """The ``datasets.map`` function for image + text rows (see the module docstring).

    Besides ids and labels it keeps each row's images (encoded bytes) and ``mm_token_type_ids``.

    Args:
        processor: The model's processor (tokenizer, image processor, chat template).
        format_options: How to read conversations (``multimodal`` is switched on).
        tokenize_options: Length limits and truncation.
        template_kwargs: Extra chat-template variables.
        images_key: Column holding images for bare ``{"type": "image"}`` parts.
        image_root: Directory that relative image paths are relative to.
    """

    def __init__(
        self,
        processor: Any,
        format_options: FormatOptions,
        tokenize_options: TokenizeOptions,
        template_kwargs: dict[str, Any] | None = None,
        images_key: str = "images",
        image_root: str | None = None,
    ) -> None:
        tokenizer = processor.tokenizer
        tokenizer.chat_template = processor.chat_template  # the processor's template renders images
        options = FormatOptions(**{**format_options.__dict__, "multimodal": True})
        super().__init__(tokenizer, "messages", options, tokenize_options, template_kwargs)
        self.processor = processor
        self.images_key, self.image_root = images_key, image_root
        self._special_ids = set(tokenizer.all_special_ids) | set(tokenizer.added_tokens_decoder)

    features = VISION_FEATURES
    extra_columns = ("images", "mm_token_type_ids")

    def fingerprint(self) -> str:
        image_config = self.processor.image_processor.to_json_string()
        extra = json.dumps([image_config, self.images_key, self.image_root], sort_keys=True)
        return hashlib.sha256(f"{super().fingerprint()}-{extra}".encode()).hexdigest()[:16]

    def _row(self, row: Mapping[str, Any], renderer: ConversationRenderer) -> dict[str, Any]:
        conversation = row_to_conversation(row, "messages", self.format_options)
        images = collect_images(conversation, row, self.images_key, self.image_root)
        rendered = renderer.render(conversation)
        placeholder = getattr(self.processor, "image_token", None)
        if placeholder and rendered.text.count(placeholder) != len(images):
            raise InvalidRow(
                conversation.field,
                f"the rendered text holds {rendered.text.count(placeholder)} image placeholders "
                f"({placeholder}) for {len(images)} images: is the placeholder typed inside a text part?",
                "image_count_mismatch",
            )
        [(text_ids, text_labels)] = tokenize_rendered(self.tokenizer, [rendered])
        from PIL import Image

        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for data in images]
        try:
            encoded = self.processor(text=[rendered.text], images=pictures or None, add_special_tokens=False)
        except (ValueError, TypeError, RuntimeError) as error:  # e.g. an aspect ratio over 200 in Qwen2-VL
            raise InvalidRow(
                conversation.field, f"the processor rejected the row: {error}", "invalid_image"
            ) from None
        input_ids = list(encoded["input_ids"][0])
        positions = align_insertions(text_ids, input_ids)
        if positions is None:
            raise InvalidRow(
                conversation.field,
                "the processor changed the text beyond inserting image tokens",
                "template_error",
            )
        labels = [text_labels[p] if p >= 0 else IGNORE_INDEX for p in positions]
        image_token = getattr(self.processor, "image_token_id", None)
        in_image = [p < 0 or token == image_token for p, token in zip(positions, input_ids, strict=True)]
        # Truncate a sequence of positions to learn which tokens survive.
        kept = truncate(list(range(len(input_ids))), labels, self.tokenize_options, conversation.field)
        cut = set(range(len(input_ids))) - set(kept.input_ids)
        if cut & image_spans(input_ids, in_image, self._special_ids):
            raise InvalidRow(
                conversation.field, "truncation would cut through an image's tokens", IMAGE_TRUNCATED
            )
        token_types = encoded.get("mm_token_type_ids")
        token_types = list(token_types[0]) if token_types is not None else [int(flag) for flag in in_image]
        return {
            "input_ids": [input_ids[i] for i in kept.input_ids],
            "labels": kept.labels,
            "mm_token_type_ids": [token_types[i] for i in kept.input_ids],
            "images": images,
            "original_length": len(input_ids),
            "truncated": kept.truncated,
        }

    def tokenize_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any] | RejectedRow]:
        """Row by row: the processor expands each row's images into its own number of tokens."""
        results: list[dict[str, Any] | RejectedRow] = []
        for row in rows:
            try:
                results.append(self._row(row, self.renderer))
            except InvalidRow as error:
                results.append(RejectedRow(error))
        return results


class VisionCollator:
    """Right-pads (or packs) the token columns, ``mm_token_type_ids`` included, and turns the rows' images
    into the model's inputs (``pixel_values``, ``image_grid_thw``...) with the processor's image processor.

    Packed batches also carry ``row_lengths`` and ``row_images`` (plain lists, computed here on the host),
    from which `lit_sft.model.vision.VisionSFTModule` builds each row's own multimodal positions.

    Args:
        processor: The model's processor.
        pad_token_id: Id written into padded positions.
        pad_to_multiple_of: Round padded lengths up to a multiple of this.
        packing: Concatenate rows into one sequence instead of padding them.
    """

    columns = ("input_ids", "labels", "mm_token_type_ids", "images")

    def __init__(
        self, processor: Any, pad_token_id: int, pad_to_multiple_of: int | None = None, packing: bool = False
    ) -> None:
        self.processor = processor
        self.packing = packing
        self.text = PackedCollator() if packing else PaddingCollator(pad_token_id, pad_to_multiple_of)

    def __call__(
        self,
        input_ids: Sequence[Sequence[int]],
        labels: Sequence[Sequence[int]],
        mm_token_type_ids: Sequence[Sequence[int]],
        images: Sequence[Sequence[bytes]],
    ) -> VisionBatch:
        from PIL import Image

        # The text batch, to which the image keys are added.
        batch = cast(VisionBatch, self.text(input_ids, labels))
        if self.packing:
            types = torch.as_tensor([value for row in mm_token_type_ids for value in row], dtype=torch.long)[
                None
            ]
            batch["row_lengths"] = [len(row) for row in input_ids]
            batch["row_images"] = [len(row) for row in images]
        else:
            types = torch.zeros_like(batch["input_ids"])
            for row, values in enumerate(mm_token_type_ids):
                types[row, : len(values)] = torch.as_tensor(values, dtype=torch.long)
        batch["mm_token_type_ids"] = types
        pictures = [Image.open(io.BytesIO(data)).convert("RGB") for row in images for data in row]
        if pictures:
            batch.update(self.processor.image_processor(images=pictures, return_tensors="pt"))
        return batch


class VisionSFTDataModule(ProcessorOwner, SFTDataModule):
    """`SFTDataModule` for image + text conversations (``messages`` rows; see `lit_sft.data.vision`).

    Args:
        processor_name_or_path: The model's processor (``AutoProcessor``). When unset, the processor is loaded
            from ``tokenizer_name_or_path``, which the CLI links to the model's tokenizer (or model) path; set
            this when the processor lives elsewhere.
        images_key: Column with the images of rows whose image parts are bare ``{"type": "image"}``.
        image_root: Directory relative image paths start from (default: as given).
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained``, e.g. ``{"max_pixels": 1003520}``
            to bound each image's tokens; `VisionSFTModule` saves this processor with its exports.
        **kwargs: Any other `SFTDataModule` option. With ``packing``, rows are concatenated as for text;
            models with multimodal rotary positions (Qwen2-VL, Qwen2.5-VL...) get each row's positions
            computed on its own by `lit_sft.model.vision.VisionSFTModule`.
    """

    _no_processor_path = (
        "data.processor_name_or_path is not set, nor data.tokenizer_name_or_path (which the CLI links to the "
        "model's)"
    )

    def __init__(
        self,
        processor_name_or_path: str | None = None,
        images_key: str = "images",
        image_root: str | None = None,
        processor_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.setdefault("format", "messages") not in ("auto", "messages"):
            raise ConfigError(
                f"vision-language data has a messages column (data.format=messages), not {kwargs['format']!r}"
            )
        kwargs["format"] = "messages"
        super().__init__(**kwargs)
        self.processor_name_or_path = processor_name_or_path
        self.images_key = images_key
        self.image_root = os.path.expanduser(image_root) if image_root else None
        self.processor_kwargs = dict(processor_kwargs or {})
        self._processor: Any = None

    def preflight_problems(self) -> list[str]:
        problems = super().preflight_problems()
        if self.image_root and not os.path.isdir(self.image_root):
            problems.append(f"data.image_root: {self.image_root}: no such directory")
        return problems

    def row_tokenizer(
        self, source: Any, tokenize_options: TokenizeOptions | None = None
    ) -> VisionRowTokenizer:
        check_columns(source, self.format_options)
        return VisionRowTokenizer(
            self.processor,
            replace(self.format_options, struct_nulls=source.typed),
            tokenize_options or self.tokenize_options,
            self.template_kwargs,
            self.images_key,
            self.image_root,
        )

    def _collator(self) -> VisionCollator:
        return VisionCollator(
            self.processor, self.tokenizer.pad_token_id, self.pad_to_multiple_of, packing=self.packing
        )
