"""`VisionSFTModule`: supervised fine-tuning of vision-language models (Qwen2.5-VL style)."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel

from lit_sft.batch import VISION_INPUTS, VisionBatch
from lit_sft.errors import ConfigError
from lit_sft.hub import ProcessorOwner
from lit_sft.model.build import import_class
from lit_sft.model.hf import base_model
from lit_sft.model.module import SFTModule

#: Submodule names of vision encoders across families (Qwen2-VL ``visual``, LLaVA ``vision_tower``...).
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model", "image_encoder")
#: Vision towers and the projectors between them and the language model: never LoRA targets.
NOT_LANGUAGE_MODEL = r".*\b(" + "|".join((*VISION_TOWER_NAMES, "multi_modal_projector", "merger")) + r")\b.*"


def vision_tower_modules(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    """The vision encoder submodules of a vision-language model (outermost matches only)."""
    found: list[tuple[str, torch.nn.Module]] = []
    for name, module in model.named_modules():
        if name.split(".")[-1] in VISION_TOWER_NAMES and not any(
            name.startswith(f"{outer}.") for outer, _ in found
        ):
            found.append((name, module))
    return found


def packed_rope_positions(
    rope_index: Callable[..., tuple[torch.Tensor, torch.Tensor]],
    input_ids: torch.Tensor,
    text_positions: torch.Tensor,
    token_types: torch.Tensor,
    image_grid_thw: torch.Tensor | None,
    row_lengths: Sequence[int],
    row_images: Sequence[int],
) -> torch.Tensor:
    """Positions ``(4, 1, length)`` of a packed sequence for a model with multimodal rotary positions:
    the text positions (restarting per row: they keep rows apart in attention) on top of each row's own
    3-D (time, height, width) positions from the model's ``get_rope_index``, as if the row were alone.

    transformers' Qwen2-VL family reads the first of the four as the text positions of packed input.
    """
    pieces, start, image = [], 0, 0
    for length, images in zip(row_lengths, row_images, strict=True):
        end = start + length
        if images:
            assert image_grid_thw is not None, "a row with images needs its image_grid_thw"
            positions, _ = rope_index(
                input_ids[:, start:end],
                mm_token_type_ids=token_types[:, start:end],
                image_grid_thw=image_grid_thw[image : image + images],
            )
        else:  # a text-only row: the three axes advance together
            positions = text_positions[:, start:end].expand(3, 1, -1)
        pieces.append(positions.to(text_positions.dtype))
        start, image = end, image + images
    return torch.cat([text_positions[None], torch.cat(pieces, dim=-1)], dim=0)


class VisionSFTModule(ProcessorOwner, SFTModule):
    """`SFTModule` for ``AutoModelForImageTextToText`` models: images in, assistant text trained.

    LoRA adapters go on the language model only; the vision tower is frozen unless ``train_vision_tower``.
    Batches from `lit_sft.data.vision.VisionSFTDataModule` carry the pixel values; packed batches get each
    row's multimodal positions computed on its own (models with ``get_rope_index``: Qwen2-VL, Qwen2.5-VL,
    Qwen3-VL, GLM-4V), so rows of a pack neither attend to nor shift each other.

    Args:
        processor_name_or_path: The model's processor (default: the tokenizer or model path).
        train_vision_tower: Train the vision encoder too (all its weights, even with LoRA elsewhere).
        processor_kwargs: Passed to ``AutoProcessor.from_pretrained`` (image resolution bounds). In a
            run, the module takes the data module's processor and its ``processor_kwargs``, so exports and
            checkpoints carry the processor the images were encoded with.
        model_class: The model's own class as a dotted path (``transformers.Qwen2_5_VLForConditionalGeneration``
            or a class of your package) for models ``AutoModelForImageTextToText`` does not map.
        **kwargs: Any `SFTModule` option (``model_config`` takes ``{model_type: qwen2_vl, text_config: {...},
            vision_config: {...}}`` for random initialisation).
    """

    _no_processor_path = "model.processor_name_or_path is needed when the model comes from model_config"

    def __init__(
        self,
        processor_name_or_path: str | None = None,
        train_vision_tower: bool = False,
        processor_kwargs: dict[str, Any] | None = None,
        model_class: str | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("sequence_parallel_size", 1) > 1:
            raise ConfigError("sequence parallelism is not supported for vision-language models")
        super().__init__(**kwargs)
        self.processor_name_or_path = processor_name_or_path
        self.train_vision_tower = train_vision_tower
        self.processor_kwargs = dict(processor_kwargs or {})
        self.model_class = model_class
        if model_class is not None and self._model_class() is None:
            raise ConfigError(f"model.model_class {model_class!r} is not an importable class")
        self._processor: Any = None

    def _model_class(self) -> Any:
        """``model_class`` imported, or ``AutoModelForImageTextToText``."""
        return import_class(self.model_class) if self.model_class else AutoModelForImageTextToText

    def processor_kwargs_conflict(self, datamodule: Any) -> str | None:
        """Why this module's ``processor_kwargs`` cannot go with ``datamodule``'s, or None."""
        if self.processor_kwargs and self.processor_kwargs != datamodule.processor_kwargs:
            return (
                f"model.processor_kwargs {self.processor_kwargs} differ from data.processor_kwargs "
                f"{datamodule.processor_kwargs}: set them on the data module only (images would be encoded "
                "unlike the saved processor says)"
            )
        return None

    def setup(self, stage: str) -> None:
        """Take the data module's processor (the one the images were encoded with) for exports."""
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if datamodule is None or not hasattr(datamodule, "processor_kwargs"):
            return
        conflict = self.processor_kwargs_conflict(datamodule)
        if conflict:
            raise ConfigError(conflict)
        self._processor = datamodule.processor
        self.processor_kwargs = dict(datamodule.processor_kwargs)
        # Checkpoints rebuild this processor from hparams; the initial copy is what Lightning compares with
        # the data module's (the same key with another value stops the run when hyperparameters are logged).
        self.hparams["processor_kwargs"] = self.processor_kwargs
        # Lightning sets it from outside the class (undeclared: nn.Module.__getattr__ types it Tensor | Module).
        initial: dict[str, Any] = self._hparams_initial  # type: ignore[assignment]
        initial["processor_kwargs"] = dict(self.processor_kwargs)

    def build_model(self) -> PreTrainedModel:
        """Load or randomly initialise the vision-language model."""
        kwargs = self._load_kwargs()
        if self.model_name_or_path is not None:
            try:
                return self._model_class().from_pretrained(self.model_name_or_path, **kwargs)
            except (OSError, ValueError) as error:
                raise ConfigError(
                    f"cannot load a vision-language model from {self.model_name_or_path!r}: {error}"
                ) from None
        values = dict(self.model_config or {})
        model_type = values.pop("model_type")
        text = dict(values.pop("text_config", {}))
        text.setdefault("vocab_size", len(self.tokenizer))
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            text.setdefault(name, getattr(self.tokenizer, name))
        if self.dropout is not None:
            text.setdefault("attention_dropout", self.dropout)
        vocabulary = self.tokenizer.get_vocab()
        tokens = {
            "image_token_id": getattr(self.processor, "image_token", None),
            "video_token_id": getattr(self.processor, "video_token", None),
            "vision_start_token_id": "<|vision_start|>",
            "vision_end_token_id": "<|vision_end|>",
        }
        for name, token in tokens.items():
            if token in vocabulary:
                values.setdefault(name, vocabulary[token])
        config = AutoConfig.for_model(model_type, text_config=text, **values)
        kwargs.pop("trust_remote_code")
        if self.model_class:
            return self._model_class()._from_config(config, **kwargs)
        return AutoModelForImageTextToText.from_config(
            config, trust_remote_code=self.trust_remote_code, **kwargs
        )

    def _prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        model = super()._prepare_model(model)
        for _, tower in vision_tower_modules(model):
            tower.requires_grad_(self.train_vision_tower)
        return model

    def _lora_config_kwargs(self) -> dict[str, Any]:
        return {"exclude_modules": NOT_LANGUAGE_MODEL}  # adapters on the language model only

    @functools.cached_property
    def _accepted_inputs(self) -> set[str]:
        """The forward arguments of the model among `VISION_INPUTS`."""
        assert self.model is not None, "call configure_model() first (the Trainer does)"
        parameters = inspect.signature(base_model(self.model).forward).parameters
        return {name for name in VISION_INPUTS if name in parameters}

    @functools.cached_property
    def _rope_index(self) -> Callable[..., tuple[torch.Tensor, torch.Tensor]] | None:
        """The model's ``get_rope_index`` (multimodal rotary positions), if it has one; looked up once, not
        on every packed batch."""
        assert self.model is not None, "call configure_model() first (the Trainer does)"
        for module in base_model(self.model).modules():
            get_rope_index = getattr(module, "get_rope_index", None)
            if callable(get_rope_index):
                return get_rope_index
        return None

    def model_inputs(self, batch: VisionBatch) -> dict[str, Any]:  # type: ignore[override]
        """Besides mask and positions, the image inputs the model takes; a packed batch gets each row's own
        multimodal positions. A text-only batch (the packing check's probe) is all text, without images."""
        inputs = super().model_inputs(batch)
        token_types = batch.get("mm_token_type_ids")
        if token_types is None and "row_lengths" in batch:  # a packed text-only batch: every token is text
            token_types = torch.zeros_like(batch["input_ids"])
            batch = {**batch, "mm_token_type_ids": token_types}
        fields: Mapping[str, Any] = batch  # looked up by names known at run time
        inputs.update({name: fields[name] for name in self._accepted_inputs if name in fields})
        if "row_lengths" in batch and "position_ids" in inputs:  # a packed batch
            rope_index = self._rope_index
            if rope_index is not None:
                assert token_types is not None  # set above for every packed batch
                inputs["position_ids"] = packed_rope_positions(
                    rope_index,
                    batch["input_ids"],
                    inputs["position_ids"],
                    token_types,
                    batch.get("image_grid_thw"),
                    batch["row_lengths"],
                    batch.get("row_images") or [0] * len(batch["row_lengths"]),
                )
        return inputs
