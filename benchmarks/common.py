"""Shared pieces of the benchmarks: the GSM8K files, a realistic tokenizer built on the spot, the machine."""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
#: The GSM8K files (train.jsonl, test.jsonl); LIT_SFT_GSM8K points elsewhere (the GPU check carries them).
GSM8K = os.environ.get("LIT_SFT_GSM8K") or os.path.join(HERE, "..", "..", "shared", "data", "gsm8k")

# Qwen2.5's ChatML template without tools: an implicit default system prompt, <|im_end|> closing turns.
CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}{%- for message in messages %}{%- if not (message.role == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def read_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def build_bpe_tokenizer(texts: list[str], vocab_size: int = 8192, directory: str | None = None):
    """A byte-level BPE tokenizer trained on ``texts`` with Qwen's special tokens and ChatML template.

    GSM8K rows come out at about 1.3x the length they have with Qwen2.5's 151k-token vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    if directory:
        tokenizer.save_pretrained(directory)
    return tokenizer


def machine() -> str:
    """The machine, in words, for result tables."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_name()
    return f"CPU ({platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads)"


def median_time(function: Callable[[], float], repeats: int) -> tuple[float, list[float]]:
    """Run ``function`` (which returns seconds) ``repeats`` times; the median and all the runs."""
    runs = [function() for _ in range(repeats)]
    return statistics.median(runs), runs


def fit_and_time(module: Any, data: Any, steps: int, warmup: int, **trainer_kwargs: Any) -> dict[str, float]:
    """Train ``module`` on ``data`` for ``warmup + steps`` optimizer steps with Lightning and report the last
    ``steps``: real and trained tokens/s, median step time and the last step's loss.

    A step is timed from its first micro-batch to its last (gradient accumulation included); its tokens
    are counted when it completes (real tokens: the attention mask, or every position of a packed batch;
    trained tokens: labels that are targets).
    """
    from lightning.pytorch import Callback, Trainer

    class StepTimer(Callback):
        def __init__(self) -> None:
            self.seconds: list[float] = []
            self.tokens = self.trained = 0
            self.loss = float("nan")
            self._start, self._pending = 0.0, (0, 0)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx % trainer.accumulate_grad_batches == 0:
                self._start, self._pending = time.perf_counter(), (0, 0)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            mask = batch.get("attention_mask")
            tokens = int(mask.sum()) if mask is not None else batch["input_ids"].numel()
            trained = int((batch["labels"][:, 1:] != -100).sum())
            self._pending = (self._pending[0] + tokens, self._pending[1] + trained)
            if (batch_idx + 1) % trainer.accumulate_grad_batches:
                return  # inside gradient accumulation
            self.loss = float(trainer.callback_metrics.get("train/loss", float("nan")))
            if trainer.global_step > warmup:
                self.seconds.append(time.perf_counter() - self._start)
                self.tokens += self._pending[0]
                self.trained += self._pending[1]

    timer = StepTimer()
    trainer = Trainer(
        max_steps=steps + warmup,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
        **trainer_kwargs,
    )
    trainer.fit(module, datamodule=data)
    seconds = sum(timer.seconds)
    return {
        "tokens_per_second": timer.tokens / seconds,
        "trained_tokens_per_second": timer.trained / seconds,
        "step_seconds": statistics.median(timer.seconds),
        "loss": timer.loss,
    }
