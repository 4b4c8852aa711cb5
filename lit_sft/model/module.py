"""`SFTModule`: any ``AutoModelForCausalLM``, full fine-tuning or LoRA, with a per-token mean loss.

The Lightning hooks only: building the model is `lit_sft.model.build`, the loss `lit_sft.model.loss`, the
step bookkeeping (non-finite guard, RNG states) `lit_sft.model.guard`.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict
from typing import Any

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.accelerators import CUDAAccelerator
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from transformers import PreTrainedModel

from lit_sft.batch import TextBatch
from lit_sft.errors import ConfigError
from lit_sft.hub import DTypeName, TokenizerOwner
from lit_sft.model import sequence_parallel
from lit_sft.model.acceleration import compile_layers, offload_activations
from lit_sft.model.attention import READS_ROW_OFFSETS, offsets_kwargs, resolve_attention
from lit_sft.model.build import (
    LoraOptions,
    build_causal_lm,
    check_module_options,
    load_kwargs,
    load_module,
    prepare_for_training,
)
from lit_sft.model.guard import (
    StepAccounting,
    all_rank_rng_states,
    rank_rng_state,
    restore_rng_states,
)
from lit_sft.model.hf import check_packed_attention
from lit_sft.model.loss import (
    TOKEN_METRICS,
    LossImplementation,
    LossOptions,
    TokenLoss,
    resolve_loss_options,
    select_loss,
    step_normalized_loss,
)
from lit_sft.model.neftune import NEFTune
from lit_sft.model.quantization import (
    QuantizationOptions,
    bitsandbytes_config,
    check_options,
    drop_quantized_base,
    prepare_quantized,
    weight_count,
)
from lit_sft.model.scheduler import SFTAdamW, WarmupDecayLR, takes_unset_argument
from lit_sft.training.clipping import clip_gradients
from lit_sft.training.distributed import gradient_average_size

log = logging.getLogger("lit_sft")

__all__ = ["LoraOptions", "LossOptions", "SFTModule", "load_module"]


class SFTModule(TokenizerOwner, LightningModule):
    """Supervised fine-tuning of a Hugging Face causal language model.

    The loss of an optimizer step is the mean over every trained token of the step, whatever the
    micro-batch size, gradient accumulation or number of devices (batches from `SFTDataModule` carry the
    step's token count). Subclass it to change the loss (`compute_loss_sum`) or how the model is built
    (`build_model`). The building blocks live in `lit_sft.model.build`, the losses in `lit_sft.model.loss`,
    the step bookkeeping in `lit_sft.model.guard`; this class holds the Lightning hooks.

    Args:
        model_name_or_path: A Hub id or local directory for ``AutoModelForCausalLM.from_pretrained``.
        model_config: Instead of pretrained weights, a model config for random initialisation, e.g.
            ``{model_type: qwen2, hidden_size: 256, num_hidden_layers: 4, ...}``; ``vocab_size`` and the
            special token ids default to the tokenizer's.
        tokenizer_name_or_path: The tokenizer (default: ``model_name_or_path``); ``builtin:byte-chatml``
            is a byte-level ChatML tokenizer that needs no download.
        chat_template: A Jinja chat template (text or ``.jinja`` file) replacing the tokenizer's own.
        dtype: Weight dtype when loading (``float32`` suits mixed precision; ``auto`` keeps the checkpoint's).
        attn_implementation: ``auto`` (default: on a CUDA GPU with packed batches ``flash_attention_2`` when the
            flash-attn package is installed, else ``varlen``, PyTorch's own variable-length attention; ``sdpa``
            otherwise), ``sdpa``, ``varlen``, ``eager``, ``flash_attention_2`` or ``flex_attention``.
        trust_remote_code: Allow models and tokenizers with custom code.
        model_kwargs: Further keyword arguments for ``from_pretrained`` / ``from_config``.
        dropout: Set every dropout probability of the model config (attention, hidden, residual...) to this.
        lora: LoRA options; None trains every weight.
        quantization: QLoRA: load the base model in 4 bits with bitsandbytes (``{load_in_4bit: true,
            bnb_4bit_quant_type: nf4, bnb_4bit_compute_dtype: bfloat16, double_quant: true}``; needs ``lora``,
            ``model_name_or_path`` and ``pip install -e '.[qlora]'``; a CUDA GPU, or a CPU with bitsandbytes'
            CPU backend). Exports merge into the de-quantized base. See `QuantizationOptions`.
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant).
        liger_kernels: Use Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA GPU, ``liger-kernel``).
        loss: How the token losses are computed: ``{implementation: chunked, chunk_size: 4096, type: nll,
            token_metrics: true}`` (default); ``implementation: plain`` uses the model's own logits, ``liger``
            Liger's fused kernel (CUDA GPU); ``type: dft`` is Dynamic Fine-Tuning's loss (what other tools call
            ``loss_type: dft``); ``token_metrics`` logs token accuracy and entropy. See `LossOptions`.
        neftune_noise_alpha: NEFTune: add uniform noise of scale ``alpha / sqrt(length * hidden_size)`` to the
            input embeddings in training steps only (never in validation, generation or export); drawn from
            the global torch RNG, whose state checkpoints carry, so resumed runs stay exact. Typical: 5.
        skip_nonfinite_steps: How many optimizer steps with a non-finite loss or gradient norm to skip (their
            update is dropped, and they are counted) before the run stops with an error naming the step.
        torch_compile: Compile each decoder layer with ``torch.compile`` (regional compilation: short compile
            times, one graph reused by every layer).
        activation_offloading: Keep the activations saved for the backward pass in CPU memory instead of the
            GPU's (long sequences; costs transfer time).
        sequence_parallel_size: Split each packed sequence across this many ranks (Ulysses all-to-all
            attention), for sequences too long for one device; needs ``data.packing`` and head counts
            divisible by it. The ranks of a group share micro-batches.
        optimizer: The optimizer, called with the trainable parameters. Default: AdamW with lr 2e-5 and no
            weight decay (`SFTAdamW`; torch's own default lr of 1e-3 wrecks a pretrained model).
        lr_scheduler: The learning-rate scheduler, called with the optimizer (and ``total_steps`` when it
            takes that argument, as `WarmupDecayLR` does); stepped every optimizer step. Default: linear
            warmup over the first 5 % of the steps, then cosine decay to 0.
        loss_implementation: Deprecated: the old name of ``loss.implementation`` (still accepted).
        loss_chunk_size: Deprecated: the old name of ``loss.chunk_size`` (still accepted).
    """

    _no_tokenizer_path = "model.tokenizer_name_or_path is needed when the model comes from model_config"

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer_name_or_path: str | None = None,
        chat_template: str | None = None,
        dtype: DTypeName = "float32",
        attn_implementation: str | None = "auto",
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        dropout: float | None = None,
        lora: LoraOptions | None = None,
        quantization: QuantizationOptions | None = None,
        gradient_checkpointing: bool = False,
        liger_kernels: bool = False,
        loss: LossOptions | None = None,
        neftune_noise_alpha: float | None = None,
        skip_nonfinite_steps: int = 0,
        torch_compile: bool = False,
        activation_offloading: bool = False,
        sequence_parallel_size: int = 1,
        optimizer: OptimizerCallable = SFTAdamW,
        lr_scheduler: LRSchedulerCallable | None = WarmupDecayLR,
        loss_implementation: LossImplementation | None = None,
        loss_chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        loss_options = check_module_options(
            model_name_or_path,
            model_config,
            dtype,
            resolve_loss_options(loss, loss_implementation, loss_chunk_size),
            neftune_noise_alpha,
            skip_nonfinite_steps,
            sequence_parallel_size,
        )
        self.save_hyperparameters(
            ignore=[
                "optimizer",
                "lr_scheduler",
                "lora",
                "quantization",
                "loss",
                "loss_implementation",
                "loss_chunk_size",
            ]
        )
        lora = LoraOptions(**lora) if isinstance(lora, dict) else lora
        # Plain dicts in the checkpoint: Lightning loads checkpoints with ``weights_only``, which refuses classes.
        self.hparams["lora"] = asdict(lora) if lora is not None else None
        quantization = QuantizationOptions(**quantization) if isinstance(quantization, dict) else quantization
        if quantization is not None:
            check_options(quantization, lora is not None, model_name_or_path is not None)
            # Checkpoints leave out the 4-bit base (`on_load_checkpoint`), which loading quantizes again.
            self.strict_loading = False
        self.hparams["quantization"] = asdict(quantization) if quantization is not None else None
        self.quantization = quantization
        self.hparams["loss"] = asdict(loss_options)
        self.model_name_or_path = model_name_or_path
        self.model_config = dict(model_config) if model_config else None
        self.tokenizer_name_or_path = tokenizer_name_or_path or model_name_or_path
        self.chat_template = chat_template
        self.dtype_name = dtype
        self.attn_implementation = attn_implementation
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = dict(model_kwargs or {})
        self.dropout = dropout
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        self.liger_kernels = liger_kernels
        self.loss_options = loss_options
        self.neftune_noise_alpha = neftune_noise_alpha
        self.torch_compile = torch_compile
        self.activation_offloading = activation_offloading
        self.sequence_parallel_size = sequence_parallel_size
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model: PreTrainedModel | None = None
        #: How the token losses are computed, chosen once the model is built (`configure_model`).
        self.token_loss: TokenLoss | None = None
        self.val_loss = MeanMetric()
        #: Validation means of the per-token metrics (`lit_sft.model.loss.TOKEN_METRICS`).
        self.val_token_metrics: dict[str, MeanMetric] = torch.nn.ModuleDict(  # type: ignore[assignment]
            {name: MeanMetric() for name in TOKEN_METRICS}
        )  # a ModuleDict (moved with the module, reset and synced by Lightning), read as a dict of metrics
        self.neftune = NEFTune(neftune_noise_alpha)
        self.steps = StepAccounting(skip_nonfinite_steps)
        self._rng_to_restore: dict[str, Any] | None = None

    @property
    def skip_nonfinite_steps(self) -> int:
        """How many non-finite steps may be skipped."""
        return self.steps.skip_nonfinite_steps

    @property
    def skipped_steps(self) -> int:
        """How many non-finite steps were skipped so far (resumed runs included)."""
        return self.steps.skipped_steps

    # ----------------------------------------------------------------------------------------- model
    def _load_kwargs(self) -> dict[str, Any]:
        kwargs = load_kwargs(
            self.dtype_name, self.attn_implementation, self.trust_remote_code, self.model_kwargs
        )
        if self.quantization is not None:
            kwargs["quantization_config"] = bitsandbytes_config(self.quantization)
        return kwargs

    def build_model(self) -> PreTrainedModel:
        """Load or randomly initialise the Hugging Face model (before LoRA and checkpointing are applied)."""
        return build_causal_lm(
            self.model_name_or_path,
            self.model_config,
            lambda: self.tokenizer,
            self.dropout,
            self._load_kwargs(),
        )

    def _lora_config_kwargs(self) -> dict[str, Any]:
        """Further ``peft.LoraConfig`` arguments for subclasses (vision models exclude the vision tower)."""
        return {}

    def _prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        if self.quantization is not None:
            model = prepare_quantized(model)
        return prepare_for_training(
            model, self.liger_kernels, self.gradient_checkpointing, self.lora, self._lora_config_kwargs()
        )

    def configure_model(self) -> None:
        """Build the model once: load, then gradient checkpointing, then LoRA adapters; choose the loss."""
        if self.model is not None:
            return
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        on_cuda = self._trainer is not None and isinstance(self._trainer.accelerator, CUDAAccelerator)
        self.attn_implementation = resolve_attention(
            self.attn_implementation, getattr(datamodule, "packing", False), on_cuda
        )
        # Lightning may call this inside inference mode (``validate`` before ``fit``); parameters made there
        # would be inference tensors that can never train.
        with torch.inference_mode(False):
            model = self._prepare_model(self.build_model())
            self.model = model
            self.neftune.attach(model)
            # Checks that run the model on a probe: done now, on the whole model, before any sharding.
            self.token_loss = select_loss(
                self.loss_options,
                model,
                self,
                self.model_inputs,
                self.sequence_parallel_size,
                self.attn_implementation,
            )
            if getattr(datamodule, "packing", False):
                check_packed_attention(model, self.attn_implementation, self.model_inputs)
            if self.torch_compile:  # after the probes (no compiling for their shapes), before sharding
                compile_layers(model)
            strategy = self._trainer.strategy if self._trainer is not None else None
            shard = getattr(strategy, "shard", None)
            if shard is not None:  # FSDP2: shard after LoRA so adapters live in their layers' units
                shard(model)
            if self.sequence_parallel_size > 1:
                sequence_parallel.enable(model, self.attn_implementation or "sdpa")
        trainable = sum(weight_count(p) for p in self.model.parameters() if p.requires_grad)
        total = sum(weight_count(p) for p in self.model.parameters())
        log.info(f"model: {type(self.model).__name__}, {total:,} parameters, {trainable:,} trainable")

    def build_unsharded(self, state_dict: dict[str, Any]) -> PreTrainedModel:
        """A plain (unsharded, CPU) copy of the model holding ``state_dict`` (gathered from shards), for export."""
        with torch.device("cpu"):
            model = self._prepare_model(self.build_model())
        model.load_state_dict(state_dict)
        return model

    # ------------------------------------------------------------------------------------- forward
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **inputs: Any,
    ) -> torch.Tensor:
        """Logits of the wrapped model (no KV cache); ``inputs`` are further model inputs (pixel values...)."""
        assert self.model is not None, "call configure_model() first (the Trainer does)"
        output = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
            **inputs,
        )
        return output.logits

    def model_inputs(self, batch: TextBatch) -> dict[str, Any]:
        """The batch's model inputs besides ``input_ids``: attention mask and positions where present
        (subclasses add more: pixel values for vision models)."""
        inputs = {
            name: batch[name] for name in ("attention_mask", "position_ids") if batch.get(name) is not None
        }
        if batch.get("cu_seq_lens") is not None and self.attn_implementation in READS_ROW_OFFSETS:
            inputs.update(offsets_kwargs(batch["cu_seq_lens"], batch["max_row_length"]))
        return inputs

    def compute_loss_sum(self, batch: TextBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of token losses over the batch's targets, and the number of targets.

        Override this to change the loss; return a sum (not a mean): the per-step normalisation is done by
        the caller. By default it is the loss `configure_model` chose (`lit_sft.model.loss.select_loss`).
        """
        assert self.token_loss is not None, "call configure_model() first (the Trainer does)"
        return self.token_loss(batch)

    def generation_context(self) -> Any:
        """A context for generating with ``self.model`` (undoes the sequence split of training attention)."""
        if self.sequence_parallel_size > 1:
            assert self.model is not None, "call configure_model() first (the Trainer does)"
            return sequence_parallel.plain_attention(self.model, self.attn_implementation or "sdpa")
        return contextlib.nullcontext()

    # ------------------------------------------------------------------------------------ training
    def training_step(self, batch: TextBatch, batch_idx: int) -> torch.Tensor:
        """Backpropagate this micro-batch's share of the optimizer step's per-token mean loss."""
        if "step_trained_tokens" not in batch:
            raise ConfigError(
                "training batches must carry step_trained_tokens (the trained tokens of their whole optimizer "
                "step) for the per-token mean loss; build dataloaders with lit_sft.data.MicroBatchSampler and "
                "MicroBatchDataset, as SFTDataModule does"
            )
        with self.neftune.noisy(), offload_activations(self.activation_offloading, self.model):
            loss_sum, _ = self.compute_loss_sum(batch)
        metric_sums = self.token_loss.take_metrics() if self.token_loss is not None else None
        step_trained_tokens = int(batch["step_trained_tokens"])
        self.steps.add_micro_batch(loss_sum, step_trained_tokens, int(batch["step_tokens"]), metric_sums)
        return step_normalized_loss(
            loss_sum,
            step_trained_tokens,
            self.trainer.accumulate_grad_batches,
            gradient_average_size(self.trainer),
        )

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Guard against non-finite steps; log the step's loss, the gradient norm (before clipping), the
        learning rate and tokens seen."""
        parameters = [p for p in self.trainable_parameters() if p.grad is not None]
        for name, value, options in self.steps.end_step(
            self.trainer, parameters, optimizer.param_groups[0]["lr"]
        ):
            self.log(name, value, on_step=True, **options)

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip as Lightning does, and also where the recipes need it and Lightning refuses: a fused optimizer
        under ``bf16-mixed`` (no GradScaler, so the gradients are the true ones) and clipping by norm under FSDP
        (by the root module's ``clip_grad_norm_``); see `lit_sft.training.clipping`."""
        clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_validation_epoch_start(self) -> None:
        # ``validate`` runs in inference mode and validation inside ``fit`` does not; metric states made in
        # the former cannot be updated in the latter, so every validation starts from fresh states.
        with torch.inference_mode(False):
            self.val_loss.reset()
            for metric in self.val_token_metrics.values():
                metric.reset()

    def validation_step(self, batch: TextBatch, batch_idx: int) -> None:
        """Accumulate the validation loss (and token metrics) as per-token means over the whole validation set."""
        loss_sum, num_targets = self.compute_loss_sum(batch)
        denominator = torch.clamp(num_targets, min=1)
        self.val_loss.update(loss_sum / denominator, weight=num_targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        metric_sums = self.token_loss.take_metrics() if self.token_loss is not None else None
        if metric_sums is not None:
            for name, value in zip(TOKEN_METRICS, metric_sums, strict=True):
                metric = self.val_token_metrics[name]
                metric.update(value / denominator, weight=num_targets)
                self.log(f"val/{name}", metric, on_step=False, on_epoch=True, batch_size=1)

    # ---------------------------------------------------------------------------------- optimizers
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that receive gradients (all of them, or only the LoRA adapters)."""
        return [p for p in self.parameters() if p.requires_grad]

    def configure_optimizers(self) -> Any:
        """The injected optimizer on trainable parameters, and the scheduler stepped every optimizer step."""
        optimizer = self.optimizer_factory(self.trainable_parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        kwargs = {}
        if takes_unset_argument(self.lr_scheduler_factory, "total_steps"):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.lr_scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add tokens seen and the RNG states (Python, NumPy, torch, CUDA) for exact resume."""
        checkpoint["lit_sft"] = {
            "module_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "totals": dict(self.steps.totals),
            "skipped_steps": self.steps.skipped_steps,
            "lora": asdict(self.lora) if self.lora else None,
            "rng": all_rank_rng_states(self._trainer),
        }
        if self.quantization is not None:  # the 4-bit base comes from the pretrained weights again
            checkpoint["state_dict"] = drop_quantized_base(checkpoint.get("state_dict", {}))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.quantization is not None:
            # The 4-bit base is quantized again from the pretrained weights when the model is built; its packed
            # weights and quantization states in the checkpoint are not parameters load_state_dict can take.
            checkpoint["state_dict"] = drop_quantized_base(checkpoint.get("state_dict", {}))
        state = checkpoint.get("lit_sft", {})
        self.steps.totals.update(state.get("totals", {}))
        self.steps.skipped_steps = int(state.get("skipped_steps", 0))
        rank = self.trainer.global_rank if self._trainer is not None else 0
        self._rng_to_restore = rank_rng_state(state.get("rng"), rank)

    def on_train_start(self) -> None:
        # RNG states are restored here, after everything that set-up draws (model init, seeding), so that
        # dropout continues exactly as in the uninterrupted run.
        if self._rng_to_restore is not None:
            restore_rng_states(self._rng_to_restore)
            self._rng_to_restore = None
