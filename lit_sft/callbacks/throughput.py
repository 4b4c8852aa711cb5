"""`TrainingThroughput`: tokens/s, trained tokens/s, MFU and peak GPU memory of every run."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
from lightning.fabric.utilities.throughput import get_available_flops
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.trainer.states import TrainerFn
from typing_extensions import override

from lit_sft.errors import ConfigError
from lit_sft.model.hf import base_model
from lit_sft.model.quantization import weight_count

if TYPE_CHECKING:
    from transformers import PreTrainedModel

#: Dense (no sparsity) bf16/fp16 tensor-core peaks by device name, most specific first; Lightning's table
#: (`get_available_flops`) covers other devices and dtypes but not every H200/H100 name CUDA reports.
DENSE_BF16_PEAK_FLOPS = (
    ("h200", 989.4e12),
    ("h100 pcie", 756.0e12),
    ("h100 nvl", 835.0e12),
    ("h100", 989.4e12),
    ("a100", 312.0e12),
)


def peak_flops(device: torch.device, precision: str, peak_tflops: float | None = None) -> float | None:
    """The device's peak FLOP/s for the run's precision: ``peak_tflops`` when given, the table above for
    bf16/fp16 on known GPUs, else Lightning's table (None when unknown, e.g. on CPU)."""
    if peak_tflops is not None:
        return peak_tflops * 1e12
    if device.type != "cuda":
        return None
    half = "bf16" in precision or precision.startswith("16")
    name = torch.cuda.get_device_name(device).lower()
    if half:
        found = next((flops for key, flops in DENSE_BF16_PEAK_FLOPS if key in name), None)
        if found is not None:
            return found
    dtype = torch.bfloat16 if "bf16" in precision else torch.float16 if half else torch.float32
    available = get_available_flops(device, dtype)
    return float(available) if available else None


@dataclass(frozen=True)
class TrainingFlops:
    """Model FLOPs of training one token (forward and backward; recomputation by gradient checkpointing not
    counted, as MFU has it; a 4-bit weight counts as one, not as its packed bytes): 2 per weight in the forward pass, 2 for the input gradient, and 2 more for the
    weight gradient of trainable weights. Attention scores (QKᵀ and the weighted sum, which grow with the row
    length) are left out: for rows of a few hundred tokens they are a few percent of the total, and MFU is
    then a slight underestimate.

    Attributes:
        per_token: FLOPs of the decoder (every weight but the embedding lookup and the LM head) per token.
        per_head_token: FLOPs of the LM head per position it runs on.
        head_on_targets: The loss runs the LM head on trained positions only (the chunked and Liger losses).
    """

    per_token: float
    per_head_token: float
    head_on_targets: bool

    def step(self, tokens: int, trained_tokens: int) -> float:
        """FLOPs of an optimizer step of ``tokens`` tokens, ``trained_tokens`` of them trained."""
        return self.per_token * tokens + self.per_head_token * (
            trained_tokens if self.head_on_targets else tokens
        )

    @classmethod
    def of(cls, module: LightningModule) -> TrainingFlops:
        """The FLOPs of `SFTModule` ``module``'s model (after ``configure_model``)."""
        from lit_sft.model.loss import ChunkedLoss, LigerLoss, SequenceParallelLoss

        model = cast("PreTrainedModel", module.model)
        inner = base_model(model)
        embedding, head = inner.get_input_embeddings(), inner.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        embedding_ids = {id(p) for p in embedding.parameters()} - head_ids

        def flops(parameters: list[torch.nn.Parameter]) -> float:
            return float(sum((6 if p.requires_grad else 4) * weight_count(p) for p in parameters))

        seen: set[int] = set()
        decoder, head_parameters = [], []
        for parameter in model.parameters():  # tied weights once
            if id(parameter) in seen:
                continue
            seen.add(id(parameter))
            if id(parameter) in head_ids:
                head_parameters.append(parameter)
            elif id(parameter) not in embedding_ids:
                decoder.append(parameter)
        loss = getattr(module, "token_loss", None)
        loss = loss.inner if isinstance(loss, SequenceParallelLoss) else loss
        return cls(flops(decoder), flops(head_parameters), isinstance(loss, ChunkedLoss | LigerLoss))


class TrainingThroughput(Callback):
    """Logs, every optimizer step, the run's speed over the last ``window_size`` steps and its GPU memory:

    * ``train/tokens_per_s``: tokens of the whole step (every rank; padding excluded) per second;
    * ``train/trained_tokens_per_s``: the trained (target) tokens among them per second;
    * ``train/mfu``: model FLOPs utilisation, the step's model FLOPs (`TrainingFlops`: attention scores left
      out) per second over the peak of all devices; where the peak is known (A100, H100, H200, or
      ``peak_tflops``);
    * ``train/peak_memory_gb``: the most GPU memory allocated so far on this rank, in GB (10⁹ bytes; CUDA).

    The closing run summary (`lit_sft.callbacks.RunSummary`) prints the whole run's figures, the first step
    (compilation, warm-up) and validation left out. Token counts come from the batches' step totals (plain
    ints), so measuring adds no device sync; a window spans several steps, which evens out the GPU running
    behind the host.

    Args:
        window_size: Optimizer steps the logged rates are averaged over.
        peak_tflops: The device's peak TFLOP/s for MFU (default: known from the device name for A100, H100,
            H200 in bf16/fp16, else Lightning's table).
    """

    def __init__(self, window_size: int = 10, peak_tflops: float | None = None) -> None:
        if window_size < 1 or (peak_tflops is not None and peak_tflops <= 0):
            raise ConfigError("TrainingThroughput: window_size must be at least 1 and peak_tflops positive")
        self.window_size = window_size
        self.peak_tflops = peak_tflops
        self.flops: TrainingFlops | None = None
        self.peak: float | None = None
        #: (time, cumulative tokens, trained tokens, FLOPs) at the end of recent steps.
        self._points: deque[tuple[float, int, int, float]] = deque(maxlen=window_size + 1)
        self._totals = [0, 0, 0.0]
        self._step = -1
        self._steps = 0
        self._validation_start = 0.0
        #: The whole run after its first step: seconds, tokens, trained tokens, FLOPs.
        self.measured = [0.0, 0, 0, 0.0]

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.flops = TrainingFlops.of(pl_module) if getattr(pl_module, "model", None) is not None else None
        self.peak = peak_flops(trainer.strategy.root_device, str(trainer.precision), self.peak_tflops)
        self._points.clear()
        self._points.append(
            (time.perf_counter(), int(self._totals[0]), int(self._totals[1]), self._totals[2])
        )
        self._step = trainer.global_step
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(trainer.strategy.root_device)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self._step or "step_tokens" not in batch:
            return  # inside gradient accumulation
        self._step = trainer.global_step
        tokens, trained = int(batch["step_tokens"]), int(batch["step_trained_tokens"])
        step_flops = self.flops.step(tokens, trained) if self.flops is not None else 0.0
        now = time.perf_counter()
        self._steps += 1
        if self._steps > 1:  # the first step compiles and warms up
            for index, value in enumerate((now - self._points[-1][0], tokens, trained, step_flops)):
                self.measured[index] += value
        self._totals = [self._totals[0] + tokens, self._totals[1] + trained, self._totals[2] + step_flops]
        self._points.append((now, int(self._totals[0]), int(self._totals[1]), self._totals[2]))
        metrics = self.rates(self._points[0], self._points[-1], trainer.world_size)
        if trainer.strategy.root_device.type == "cuda":
            metrics["train/peak_memory_gb"] = (
                torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 1e9
            )
        for name, value in metrics.items():
            pl_module.log(name, value, on_step=True, on_epoch=False, batch_size=1)

    def rates(self, first: tuple, last: tuple, world_size: int) -> dict[str, float]:
        """Rates between two points ``(time, tokens, trained tokens, FLOPs)``."""
        seconds = last[0] - first[0]
        if seconds <= 0:
            return {}
        rates = {
            "train/tokens_per_s": (last[1] - first[1]) / seconds,
            "train/trained_tokens_per_s": (last[2] - first[2]) / seconds,
        }
        if self.peak and self.flops is not None:
            rates["train/mfu"] = (last[3] - first[3]) / seconds / (self.peak * world_size)
        return rates

    @override
    def on_validation_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._validation_start = time.perf_counter()

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking or not self._points:
            return
        # Validation is not training time: shift the window's points by its duration.
        pause = time.perf_counter() - self._validation_start
        self._points = deque(
            ((point[0] + pause, *point[1:]) for point in self._points), maxlen=self.window_size + 1
        )

    def summary(self, trainer: Trainer) -> str | None:
        """One line for the run summary: the whole run's rates after its first step, and peak memory."""
        seconds, tokens, trained, flops = self.measured
        if seconds <= 0:
            return None
        line = f"throughput: {tokens / seconds:,.0f} tokens/s ({trained / seconds:,.0f} trained tokens/s)"
        if self.peak and self.flops is not None:
            line += f", MFU {flops / seconds / (self.peak * trainer.world_size):.1%}"
        if trainer.strategy.root_device.type == "cuda":
            line += (
                f", peak memory {torch.cuda.max_memory_allocated(trainer.strategy.root_device) / 1e9:.1f} GB"
            )
        return line + f" (after the first step, {self._steps - 1} steps)"
