"""`HFExport`: write Hugging Face model directories during and at the end of training."""

from __future__ import annotations

import os
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from typing_extensions import override

from lit_sft.errors import ConfigError
from lit_sft.inference.export import ExportDType, LoraExport, export_hf
from lit_sft.inference.model_card import card_from_trainer
from lit_sft.training.distributed import gather_full_state_dict, is_sharded


class HFExport(Callback):
    """Exports the model with ``save_pretrained`` (weights, tokenizer, generation config) to
    ``<dirpath>/final`` when ``fit`` ends and, optionally, to ``<dirpath>/step-N`` every N steps.

    Each export has a ``README.md`` model card (base model, data sources with rows and tokens,
    hyper-parameters, steps, final losses and GSM8K accuracy when measured, the configuration). Only rank 0
    writes. The export loads with ``AutoModelForCausalLM.from_pretrained`` (and, for a LoRA
    adapter, with peft), as verl, vLLM and transformers expect.

    Args:
        dirpath: Where the exports go (default: ``<trainer.default_root_dir>/hf``).
        every_n_train_steps: Also export every this many optimizer steps (None: only at the end).
        lora: For LoRA runs: ``merged`` (adapters folded into the weights), ``adapter`` (a peft adapter
            directory with the trained ``lora_alpha``), or ``both``.
        dtype: Weight dtype of the exports (``auto`` keeps the training dtype; ``bfloat16`` halves the size).
    """

    def __init__(
        self,
        dirpath: str | None = None,
        every_n_train_steps: int | None = None,
        lora: LoraExport = "merged",
        dtype: ExportDType = "auto",
    ) -> None:
        if every_n_train_steps is not None and every_n_train_steps < 1:
            raise ConfigError("HFExport.every_n_train_steps must be at least 1")
        self.dirpath, self.every_n_train_steps, self.lora, self.dtype = (
            dirpath,
            every_n_train_steps,
            lora,
            dtype,
        )
        self.exported: list[str] = []
        self._last_step = 0

    def export(self, trainer: Trainer, pl_module: LightningModule, name: str) -> None:
        """Export the model as it is now to ``<dirpath>/<name>`` (every rank calls it: sharded models are gathered)."""
        model = pl_module.model
        if is_sharded(trainer):  # every rank takes part in gathering; rank 0 loads an unsharded copy
            state = gather_full_state_dict(trainer)
            if trainer.global_rank != 0:
                return
            # An SFTModule method; nn.Module.__getattr__ types an unknown attribute as Tensor | Module.
            model = pl_module.build_unsharded(state)  # type: ignore[operator]
        if trainer.global_rank != 0:
            return
        directory = os.path.join(self.dirpath or os.path.join(trainer.default_root_dir, "hf"), name)
        self.exported += export_hf(
            model,
            getattr(pl_module, "processor", None) or pl_module.tokenizer,
            directory,
            lora=self.lora,
            dtype=self.dtype,
            base_model_name_or_path=getattr(pl_module, "model_name_or_path", None),
            card=card_from_trainer(trainer, pl_module),
        )

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        # Called after every micro-batch; the step counter moves once per optimizer step.
        if (
            self.every_n_train_steps
            and step
            and step % self.every_n_train_steps == 0
            and step != self._last_step
        ):
            self._last_step = step
            self.export(trainer, pl_module, f"step-{step}")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module, "final")
