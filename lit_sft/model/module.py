"""`SFTModule`: any ``AutoModelForCausalLM``, full fine-tuning or LoRA, with a per-token mean loss."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torchmetrics import MeanMetric
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from lit_sft.training.distributed import gradient_average_size
from lit_sft.errors import ConfigError, TrainingError
from lit_sft.model import sequence_parallel
from lit_sft.model.hf import (
    HiddenStatePath,
    apply_dropout,
    apply_liger_kernels,
    base_model,
    check_packed_attention,
    hidden_state_path,
)
from lit_sft.model.loss import (
    chunked_cross_entropy_sum,
    step_normalized_loss,
    target_positions,
    token_loss_sum,
)
from lit_sft.model.scheduler import SFTAdamW, WarmupDecayLR
from lit_sft.gguf import check_local_path, is_gguf, load_gguf_model
from lit_sft.hub import load_tokenizer

log = logging.getLogger("lit_sft")

DTypeName = Literal["auto", "float32", "bfloat16", "float16"]
LossImplementation = Literal["chunked", "plain", "liger"]
DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}


def _takes_unset_argument(factory: Any, name: str) -> bool:
    """Whether ``factory`` (a class, function or partial, as jsonargparse builds) takes ``name`` and it is unset."""
    if isinstance(factory, functools.partial) and name in factory.keywords:
        return factory.keywords[name] is None
    try:
        parameter = inspect.signature(factory).parameters.get(name)
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is None


def _rng_states() -> dict[str, Any]:
    """Lightning's RNG states, with NumPy's key array as a list so that ``weights_only`` loading accepts it."""
    states = _collect_rng_states()
    if "numpy" in states:
        kind, keys, position, has_gauss, gauss = states["numpy"]
        states["numpy"] = (kind, keys.tolist(), position, has_gauss, gauss)
    return states


def _from_plain_numpy_state(states: dict[str, Any]) -> dict[str, Any]:
    if "numpy" in states:
        kind, keys, position, has_gauss, gauss = states["numpy"]
        states = {**states, "numpy": (kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, gauss)}
    return states


@dataclass
class LoraOptions:
    """LoRA adapters (through peft); only adapter weights train.

    Args:
        r: Adapter rank.
        alpha: Scaling numerator (``lora_alpha``); the update is scaled by ``alpha / r``.
        dropout: Dropout on the adapter input.
        target_modules: Module names to adapt (``[q_proj, k_proj, v_proj, o_proj]``) or ``all-linear``.
        modules_to_save: Modules trained in full besides the adapters (e.g. ``[lm_head]``).
    """

    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] | str = "all-linear"
    modules_to_save: list[str] | None = None


@dataclass
class _StepState:
    """What the current optimizer step has accumulated so far (for logging)."""

    loss: torch.Tensor | None = None
    trained_tokens: int = 0
    tokens: int = 0
    totals: dict[str, int] = field(default_factory=lambda: {"tokens": 0, "trained_tokens": 0})


class SFTModule(LightningModule):
    """Supervised fine-tuning of a Hugging Face causal language model.

    The loss of an optimizer step is the mean over every trained token of the step, whatever the
    micro-batch size, gradient accumulation or number of devices (batches from `SFTDataModule` carry the
    step's token count). Subclass it to change the loss (`compute_loss_sum`) or how the model is built
    (`build_model`).

    Args:
        model_name_or_path: A Hub id or local directory for ``AutoModelForCausalLM.from_pretrained``.
        model_config: Instead of pretrained weights, a model config for random initialisation, e.g.
            ``{model_type: qwen2, hidden_size: 256, num_hidden_layers: 4, ...}``; ``vocab_size`` and the
            special token ids default to the tokenizer's.
        tokenizer_name_or_path: The tokenizer (default: ``model_name_or_path``); ``builtin:byte-chatml``
            is a byte-level ChatML tokenizer that needs no download.
        chat_template: A Jinja chat template (text or ``.jinja`` file) replacing the tokenizer's own.
        dtype: Weight dtype when loading (``float32`` suits mixed precision; ``auto`` keeps the checkpoint's).
        attn_implementation: ``sdpa``, ``eager``, ``flash_attention_2`` or ``flex_attention``.
        trust_remote_code: Allow models and tokenizers with custom code.
        model_kwargs: Further keyword arguments for ``from_pretrained`` / ``from_config``.
        dropout: Set every dropout probability of the model config (attention, hidden, residual...) to this.
        lora: LoRA options; None trains every weight.
        gradient_checkpointing: Recompute activations in the backward pass (non-reentrant).
        liger_kernels: Use Liger's Triton kernels for RMSNorm, RoPE and SwiGLU (CUDA GPU, ``liger-kernel``).
        loss_implementation: ``chunked`` (default): logits only for target positions, ``loss_chunk_size`` at a
            time, recomputed in the backward pass, so full-vocabulary fp32 logits are never held for the whole
            batch; ``liger``: Liger's fused linear cross-entropy (CUDA GPU); ``plain``: the model's logits for
            every position. Models whose logits are not ``lm_head(hidden states)`` fall back to ``plain``.
        loss_chunk_size: Target positions per chunk of the chunked loss.
        skip_nonfinite_steps: How many optimizer steps with a non-finite loss or gradient norm to skip (their
            update is dropped, and they are counted) before the run stops with an error naming the step.
        sequence_parallel_size: Split each packed sequence across this many ranks (Ulysses all-to-all
            attention), for sequences too long for one device; needs ``data.packing`` and head counts
            divisible by it. The ranks of a group share micro-batches.
        optimizer: The optimizer, called with the trainable parameters. Default: AdamW with lr 2e-5 and no
            weight decay (`SFTAdamW`; torch's own default lr of 1e-3 wrecks a pretrained model).
        lr_scheduler: The learning-rate scheduler, called with the optimizer (and ``total_steps`` when it
            takes that argument, as `WarmupDecayLR` does); stepped every optimizer step. Default: linear
            warmup over the first 5 % of the steps, then cosine decay to 0.
    """

    def __init__(
        self,
        model_name_or_path: str | None = None,
        model_config: dict[str, Any] | None = None,
        tokenizer_name_or_path: str | None = None,
        chat_template: str | None = None,
        dtype: DTypeName = "float32",
        attn_implementation: str | None = "sdpa",
        trust_remote_code: bool = False,
        model_kwargs: dict[str, Any] | None = None,
        dropout: float | None = None,
        lora: LoraOptions | None = None,
        gradient_checkpointing: bool = False,
        liger_kernels: bool = False,
        loss_implementation: LossImplementation = "chunked",
        loss_chunk_size: int = 4096,
        skip_nonfinite_steps: int = 0,
        sequence_parallel_size: int = 1,
        optimizer: OptimizerCallable = SFTAdamW,
        lr_scheduler: LRSchedulerCallable | None = WarmupDecayLR,
    ) -> None:
        super().__init__()
        if (model_name_or_path is None) == (model_config is None):
            raise ConfigError("set exactly one of model.model_name_or_path and model.model_config")
        if model_config is not None and "model_type" not in model_config:
            raise ConfigError("model.model_config needs a model_type (e.g. qwen2, llama)")
        if dtype not in ("auto", *DTYPES):
            raise ConfigError(f"model.dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}")
        if loss_implementation not in ("chunked", "plain", "liger"):
            raise ConfigError(
                f"model.loss_implementation must be chunked, plain or liger; got {loss_implementation!r}"
            )
        if loss_chunk_size < 1 or skip_nonfinite_steps < 0:
            raise ConfigError(
                "model.loss_chunk_size must be positive and model.skip_nonfinite_steps not negative"
            )
        self.save_hyperparameters(ignore=["optimizer", "lr_scheduler", "lora"])
        lora = LoraOptions(**lora) if isinstance(lora, dict) else lora
        # A plain dict in the checkpoint: Lightning loads checkpoints with ``weights_only``, which refuses classes.
        self.hparams["lora"] = asdict(lora) if lora is not None else None
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
        self.loss_implementation = loss_implementation
        self.loss_chunk_size = loss_chunk_size
        self.skip_nonfinite_steps = skip_nonfinite_steps
        if sequence_parallel_size < 1:
            raise ConfigError("model.sequence_parallel_size must be at least 1")
        self.sequence_parallel_size = sequence_parallel_size
        self.skipped_steps = 0
        self._hidden_path: HiddenStatePath | bool | None = False  # False: not resolved yet
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        self.model: PreTrainedModel | None = None
        self.val_loss = MeanMetric()
        self._step = _StepState()
        self._tokenizer: Any = None
        self._rng_to_restore: dict[str, Any] | None = None

    # ----------------------------------------------------------------------------------------- model
    @property
    def tokenizer(self) -> Any:
        """The tokenizer (loaded on first use)."""
        if self._tokenizer is None:
            if not self.tokenizer_name_or_path:
                raise ConfigError(
                    "model.tokenizer_name_or_path is needed when the model comes from model_config"
                )
            self._tokenizer = load_tokenizer(
                self.tokenizer_name_or_path, self.chat_template, self.trust_remote_code
            )
        return self._tokenizer

    def _load_kwargs(self) -> dict[str, Any]:
        kwargs = {"trust_remote_code": self.trust_remote_code, **self.model_kwargs}
        if self.attn_implementation:
            kwargs["attn_implementation"] = self.attn_implementation
        if self.dtype_name != "auto":
            kwargs["dtype"] = DTYPES[self.dtype_name]
        return kwargs

    def build_model(self) -> PreTrainedModel:
        """Load or randomly initialise the Hugging Face model (before LoRA and checkpointing are applied)."""
        kwargs = self._load_kwargs()
        if is_gguf(self.model_name_or_path):  # dequantized to model.dtype; tokenizer from the file
            dropout = self.dropout
            configure = None if dropout is None else functools.partial(apply_dropout, probability=dropout)
            return load_gguf_model(self.model_name_or_path, configure, **kwargs)
        if self.model_name_or_path is not None:
            check_local_path(self.model_name_or_path)
            try:
                config = AutoConfig.from_pretrained(
                    self.model_name_or_path, trust_remote_code=self.trust_remote_code
                )
                if self.dropout is not None:
                    apply_dropout(config, self.dropout)
                return AutoModelForCausalLM.from_pretrained(self.model_name_or_path, config=config, **kwargs)
            except OSError as error:
                raise ConfigError(f"cannot load a model from {self.model_name_or_path!r}: {error}") from None
        config_values = dict(self.model_config or {})
        model_type = config_values.pop("model_type")
        tokenizer = self.tokenizer
        config_values.setdefault("vocab_size", len(tokenizer))
        if config_values["vocab_size"] < len(tokenizer):
            raise ConfigError(
                f"model_config.vocab_size={config_values['vocab_size']} is smaller than the tokenizer ({len(tokenizer)})"
            )
        for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
            config_values.setdefault(name, getattr(tokenizer, name))
        config = AutoConfig.for_model(model_type, **config_values)
        if self.dropout is not None:
            apply_dropout(config, self.dropout)
        kwargs.pop("trust_remote_code")
        return AutoModelForCausalLM.from_config(config, trust_remote_code=self.trust_remote_code, **kwargs)

    def configure_model(self) -> None:
        """Build the model once: load, then gradient checkpointing, then LoRA adapters."""
        if self.model is not None:
            return
        # Lightning may call this inside inference mode (``validate`` before ``fit``); parameters made there
        # would be inference tensors that can never train.
        with torch.inference_mode(False):
            model = self._prepare_model(self.build_model())
            self.model = model
            # Checks that run the model on a probe: done now, on the whole model, before any sharding.
            self._resolve_hidden_path()
            datamodule = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
            if getattr(datamodule, "packing", False):
                check_packed_attention(model, self.attn_implementation, self.model_inputs)
            strategy = self._trainer.strategy if self._trainer is not None else None
            if hasattr(strategy, "shard"):  # FSDP2: shard after LoRA so adapters live in their layers' units
                strategy.shard(model)
            if self.sequence_parallel_size > 1:
                self._sequence_attention = sequence_parallel.enable(model, self.attn_implementation or "sdpa")
        trainable = sum(p.numel() for p in self.model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.model.parameters())
        log.info(f"model: {type(self.model).__name__}, {total:,} parameters, {trainable:,} trainable")

    def build_unsharded(self, state_dict: dict[str, Any]) -> PreTrainedModel:
        """A plain (unsharded, CPU) copy of the model holding ``state_dict`` (gathered from shards), for export."""
        with torch.device("cpu"):
            model = self._prepare_model(self.build_model())
        model.load_state_dict(state_dict)
        return model

    def _lora_config_kwargs(self) -> dict[str, Any]:
        """Further ``peft.LoraConfig`` arguments for subclasses (vision models exclude the vision tower)."""
        return {}

    def _prepare_model(self, model: PreTrainedModel) -> PreTrainedModel:
        # from_pretrained returns the model in eval mode and Lightning keeps the modes it finds at fit start:
        # dropout and gradient checkpointing (it checks ``self.training``) would be silently off.
        model.train()
        # A KV cache is useless in training and breaks packed attention (vision models: their text config's).
        model.config.use_cache = False
        model.config.get_text_config().use_cache = False
        if self.liger_kernels:
            apply_liger_kernels(model)
        if self.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora is not None:
            from peft import LoraConfig, get_peft_model

            config = LoraConfig(
                r=self.lora.r,
                lora_alpha=self.lora.alpha,
                lora_dropout=self.lora.dropout,
                target_modules=self.lora.target_modules,
                modules_to_save=self.lora.modules_to_save,
                task_type="CAUSAL_LM",
                **self._lora_config_kwargs(),
            )
            model = get_peft_model(model, config)
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

    def model_inputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The batch's model inputs besides ``input_ids``: attention mask and positions where present
        (subclasses add more: pixel values for vision models)."""
        return {
            name: batch[name] for name in ("attention_mask", "position_ids") if batch.get(name) is not None
        }

    def _resolve_hidden_path(self) -> HiddenStatePath | None:
        """The decoder/head split the chunked and Liger losses need (checked once on the real model)."""
        if self._hidden_path is False:
            path = None if self.loss_implementation == "plain" else hidden_state_path(self.model)
            if path is None and self.loss_implementation == "liger":
                raise ConfigError(
                    "model.loss_implementation=liger needs a model whose logits are lm_head(hidden states)"
                )
            self._hidden_path = path
        return self._hidden_path

    def compute_loss_sum(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum of token losses over the batch's targets, and the number of targets.

        Override this to change the loss; return a sum (not a mean): the per-step normalisation is done by
        the caller.
        """
        shifted = self.sequence_parallel_size > 1
        if shifted:  # this rank's slice of the sequence, labels shifted over the whole of it
            group = sequence_parallel.sequence_parallel_group(self.sequence_parallel_size)
            batch = sequence_parallel.shard_batch(batch, group, self.attn_implementation or "sdpa")
        input_ids, labels = batch["input_ids"], batch["shift_labels"] if shifted else batch["labels"]
        indexed = "target_index" in batch and not shifted  # positions chosen on the host: no device sync
        path = self._resolve_hidden_path()
        if path is None:
            logits = self(input_ids, **self.model_inputs(batch))
            if not indexed:
                return token_loss_sum(logits, labels, shifted=shifted)
            selected = logits.reshape(-1, logits.shape[-1]).index_select(0, batch["target_index"]).float()
            loss_sum = F.cross_entropy(selected, batch["target_ids"], reduction="sum")
            return loss_sum, torch.as_tensor(batch["target_ids"].shape[0], device=loss_sum.device)
        hidden = path.hidden_states(input_ids, **self.model_inputs(batch))
        if indexed:
            hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["target_index"])
            targets = batch["target_ids"]
        else:
            hidden, targets = target_positions(hidden, labels, shifted=shifted)
        count = torch.as_tensor(targets.shape[0], device=targets.device)
        if self.loss_implementation == "liger":
            return self._liger_loss_sum(path, hidden, targets), count
        return chunked_cross_entropy_sum(hidden, targets, path.logits, self.loss_chunk_size), count

    def generation_context(self) -> Any:
        """A context for generating with ``self.model`` (undoes the sequence split of training attention)."""
        if self.sequence_parallel_size > 1:
            return sequence_parallel.plain_attention(self.model, self.attn_implementation or "sdpa")
        return contextlib.nullcontext()

    def _liger_loss_sum(
        self, path: HiddenStatePath, hidden: torch.Tensor, targets: torch.Tensor
    ) -> torch.Tensor:
        try:
            from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
        except ImportError:
            raise ConfigError(
                "model.loss_implementation=liger needs liger-kernel: pip install -e '.[gpu]'"
            ) from None
        softcap = getattr(base_model(self.model).config, "final_logit_softcapping", None)
        loss = LigerFusedLinearCrossEntropyLoss(reduction="sum", softcap=softcap)
        return loss(path.head.weight, hidden, targets, getattr(path.head, "bias", None)).float()

    # ------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """Backpropagate this micro-batch's share of the optimizer step's per-token mean loss."""
        if "step_trained_tokens" not in batch:
            raise ConfigError(
                "training batches must carry step_trained_tokens (the trained tokens of their whole optimizer "
                "step) for the per-token mean loss; build dataloaders with lit_sft.data.MicroBatchSampler and "
                "MicroBatchDataset, as SFTDataModule does"
            )
        loss_sum, _ = self.compute_loss_sum(batch)
        step_trained_tokens = int(batch["step_trained_tokens"])
        loss = step_normalized_loss(
            loss_sum,
            step_trained_tokens,
            self.trainer.accumulate_grad_batches,
            gradient_average_size(self.trainer),
        )
        share = loss_sum.detach() / max(step_trained_tokens, 1)
        self._step.loss = share if self._step.loss is None else self._step.loss + share
        self._step.trained_tokens = step_trained_tokens
        self._step.tokens = int(batch["step_tokens"])
        return loss

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Guard against non-finite steps; log the step's loss, the gradient norm (before clipping), the
        learning rate and tokens seen."""
        parameters = [p for p in self.trainable_parameters() if p.grad is not None]
        grad_norm = (
            torch.nn.utils.get_total_norm([p.grad for p in parameters], norm_type=2.0) if parameters else None
        )
        if grad_norm is not None and hasattr(grad_norm, "full_tensor"):  # sharded gradients (FSDP2)
            grad_norm = grad_norm.full_tensor()
        step_loss = self._step.loss
        self._step.loss = None
        self._guard_nonfinite(step_loss, grad_norm, parameters)
        if grad_norm is not None:
            self.log("train/grad_norm", grad_norm, on_step=True)
        if step_loss is not None:
            # Each rank holds its micro-batches' share of the step mean; their sum is the step mean.
            self.log("train/loss", step_loss, on_step=True, prog_bar=True, sync_dist=True, reduce_fx="sum")
        self._step.totals["trained_tokens"] += self._step.trained_tokens
        self._step.totals["tokens"] += self._step.tokens
        self.log("train/lr", optimizer.param_groups[0]["lr"], on_step=True)
        self.log("train/trained_tokens_seen", float(self._step.totals["trained_tokens"]), on_step=True)
        self.log("train/tokens_seen", float(self._step.totals["tokens"]), on_step=True)
        if self.skipped_steps:
            self.log("train/skipped_steps", float(self.skipped_steps), on_step=True)

    def _guard_nonfinite(
        self,
        step_loss: torch.Tensor | None,
        grad_norm: torch.Tensor | None,
        parameters: list[torch.nn.Parameter],
    ) -> None:
        """Skip (drop the gradients of) a step whose loss or gradient norm is not finite, within the budget
        of ``skip_nonfinite_steps``; past it, stop with an error naming the step. All ranks decide together."""
        values = [value for value in (step_loss, grad_norm) if value is not None]
        finite = bool(all(torch.isfinite(value).all() for value in values))
        if self.trainer.world_size > 1:
            finite = self.trainer.strategy.reduce_boolean_decision(finite, all=True)
        if finite:
            return
        step = self.trainer.global_step + 1
        loss_text = f"{float(step_loss):.4g}" if step_loss is not None else "n/a"
        norm_text = f"{float(grad_norm):.4g}" if grad_norm is not None else "n/a"
        self.skipped_steps += 1
        if self.skipped_steps > self.skip_nonfinite_steps:
            raise TrainingError(
                f"non-finite loss or gradient at step {step} (loss {loss_text}, gradient norm {norm_text}); "
                f"{self.skipped_steps - 1} such steps were skipped before (model.skip_nonfinite_steps="
                f"{self.skip_nonfinite_steps}). Lower the learning rate, check the data, or resume from the last "
                "checkpoint"
            )
        for parameter in parameters:  # optimizers leave parameters without a gradient untouched
            parameter.grad = None
        log.warning(
            f"lit_sft: step {step} skipped: non-finite loss or gradient (loss {loss_text}, gradient norm "
            f"{norm_text}); {self.skipped_steps} of {self.skip_nonfinite_steps} allowed"
        )

    def on_validation_epoch_start(self) -> None:
        # ``validate`` runs in inference mode and validation inside ``fit`` does not; metric states made in
        # the former cannot be updated in the latter, so every validation starts from fresh states.
        with torch.inference_mode(False):
            self.val_loss.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Accumulate the validation loss as a per-token mean over the whole validation set."""
        loss_sum, num_targets = self.compute_loss_sum(batch)
        self.val_loss.update(loss_sum / torch.clamp(num_targets, min=1), weight=num_targets)
        self.log("val/loss", self.val_loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)

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
        if _takes_unset_argument(self.lr_scheduler_factory, "total_steps"):
            kwargs["total_steps"] = int(self.trainer.estimated_stepping_batches)
        scheduler = self.lr_scheduler_factory(optimizer, **kwargs)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # --------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Add tokens seen and the RNG states (Python, NumPy, torch, CUDA) for exact resume."""
        checkpoint["lit_sft"] = {
            "module_class": f"{type(self).__module__}.{type(self).__qualname__}",
            "totals": dict(self._step.totals),
            "skipped_steps": self.skipped_steps,
            "lora": asdict(self.lora) if self.lora else None,
            "rng": self._all_rank_rng_states(),
        }

    def _all_rank_rng_states(self) -> list[dict[str, Any]]:
        """Every rank's RNG states (ranks may differ: dropout masks, for one), gathered for rank 0 to save."""
        states = _rng_states()
        if self._trainer is None or self.trainer.world_size == 1 or not torch.distributed.is_initialized():
            return [states]
        gathered: list[Any] = [None] * self.trainer.world_size
        torch.distributed.all_gather_object(gathered, states)
        return gathered

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("lit_sft", {})
        self._step.totals.update(state.get("totals", {}))
        self.skipped_steps = int(state.get("skipped_steps", 0))
        states = state.get("rng")
        if isinstance(states, dict):  # a single state
            states = [states]
        if states:
            rank = self.trainer.global_rank if self._trainer is not None else 0
            self._rng_to_restore = states[rank] if len(states) > rank else states[0]

    def on_train_start(self) -> None:
        # RNG states are restored here, after everything that set-up draws (model init, seeding), so that
        # dropout continues exactly as in the uninterrupted run.
        if self._rng_to_restore is not None:
            _set_rng_states(_from_plain_numpy_state(self._rng_to_restore))
            self._rng_to_restore = None


def load_module(ckpt: str) -> SFTModule:
    """The `SFTModule` (or subclass, e.g. `VisionSFTModule`) a ``lit-sft fit`` checkpoint was saved from,
    with its trained weights, on the CPU.

    Raises:
        ConfigError: When there is no checkpoint file, or it names a class that is not an `SFTModule`.
    """
    import os

    from lit_sft.model.hf import import_class

    if not os.path.isfile(ckpt):
        raise ConfigError(f"no checkpoint at {ckpt}")
    # A memory-mapped peek at the class name: the weights are read once, by load_from_checkpoint.
    peek = torch.load(ckpt, map_location="cpu", weights_only=True, mmap=True)
    name = peek.get("lit_sft", {}).get("module_class") or f"{__name__}.SFTModule"
    del peek
    cls = import_class(name)
    if not (cls is not None and issubclass(cls, SFTModule)):
        raise ConfigError(f"{ckpt}: saved from {name}, which is not an importable SFTModule")
    return cls.load_from_checkpoint(ckpt, map_location="cpu")
