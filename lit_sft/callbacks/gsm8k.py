"""`GSM8KEvaluation`: GSM8K accuracy measured by generation during ``fit`` and ``validate``."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lit_sft.errors import ConfigError
from lit_sft.gsm8k.evaluation import EvalSet, evaluate_items, load_eval_set, shard
from lit_sft.gsm8k.scoring import GSM8KAccuracy
from lit_sft.io import atomic_write

log = logging.getLogger("lit_sft")


class GSM8KEvaluation(Callback):
    """Generates answers to GSM8K-style questions and logs ``val/gsm8k_acc_strict`` and
    ``val/gsm8k_acc_flexible``, every ``every_n_validations`` validations, at the end of ``fit``, and on
    ``validate``.

    Generation is greedy and batched, with left padding, the KV cache and a stop at each sequence's
    end-of-turn token. The questions are split evenly across ranks (every rank runs the same number of
    batches, and sharded models keep stepping together), and each evaluation writes a jsonl of question,
    generation, extracted answers, gold answer and verdicts under ``output_dir``.

    Args:
        data_files: Question files (jsonl/parquet/Hub); default: the data module's ``val_files``.
        prompt_key: Column (or dotted path) of the question or prompt messages; default: the data module's.
        answer_key: Column (or dotted path) of the reference (a GSM8K solution or a number); default: the
            data module's ``response_key``.
        system_prompt: System message for prompts without one; default: the data module's.
        max_samples: Evaluate the first this many questions (all when None).
        batch_size: Questions per generation batch on each rank.
        max_new_tokens: Most tokens generated per answer.
        max_prompt_length: Longer prompts keep their last tokens (counted and logged).
        every_n_validations: Evaluate at every n-th validation during ``fit``.
        evaluate_at_fit_start: Also evaluate before the first training step (logged as step 0).
        evaluate_at_fit_end: Evaluate when ``fit`` ends, unless that step was just evaluated.
        output_dir: Where the jsonl files go (default: ``<log_dir>/gsm8k``).
    """

    def __init__(
        self,
        data_files: str | list[str] | None = None,
        prompt_key: str | None = None,
        answer_key: str | None = None,
        system_prompt: str | None = None,
        max_samples: int | None = None,
        batch_size: int = 32,
        max_new_tokens: int = 256,
        max_prompt_length: int | None = 1024,
        every_n_validations: int = 1,
        evaluate_at_fit_start: bool = False,
        evaluate_at_fit_end: bool = True,
        output_dir: str | None = None,
    ) -> None:
        if every_n_validations < 1:
            raise ConfigError("GSM8KEvaluation.every_n_validations must be at least 1")
        self.data_files, self.prompt_key, self.answer_key = data_files, prompt_key, answer_key
        self.system_prompt, self.max_samples = system_prompt, max_samples
        self.batch_size, self.max_new_tokens, self.max_prompt_length = (
            batch_size,
            max_new_tokens,
            max_prompt_length,
        )
        self.every_n_validations = every_n_validations
        self.evaluate_at_fit_start, self.evaluate_at_fit_end = evaluate_at_fit_start, evaluate_at_fit_end
        self.output_dir = output_dir
        self.validations = 0
        self.last_evaluated_step: int | None = None
        self.history: list[tuple[int, float, float]] = []
        self.eval_set: EvalSet | None = None

    @property
    def state_key(self) -> str:
        return self._generate_state_key(data_files=self.data_files, answer_key=self.answer_key)

    @override
    def setup(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if self.eval_set is not None:
            return
        datamodule = getattr(trainer, "datamodule", None)
        options = getattr(datamodule, "format_options", None)
        files = self.data_files or getattr(datamodule, "val_files", None)
        if not files:
            raise ConfigError(
                "GSM8KEvaluation needs data_files (the data module has no val_files to default to)"
            )
        self.eval_set = load_eval_set(
            # An SFTModule attribute; nn.Module.__getattr__ types an unknown attribute as Tensor | Module.
            pl_module.tokenizer,  # type: ignore[arg-type]
            files,
            prompt_key=self.prompt_key or (options.prompt_key if options else "question"),
            answer_key=self.answer_key or (options.response_key if options else "answer"),
            system_prompt=self.system_prompt
            if self.system_prompt is not None
            else getattr(options, "system_prompt", None),
            max_samples=self.max_samples,
            max_prompt_length=self.max_prompt_length,
            template_kwargs=getattr(datamodule, "template_kwargs", None),
        )
        if self.eval_set.num_truncated:
            log.info(
                f"gsm8k: {self.eval_set.num_truncated} of {len(self.eval_set)} prompts truncated from the left"
            )

    def evaluate(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, float]:
        """Run one evaluation on every rank; return the (rank-synced) accuracies."""
        assert self.eval_set is not None
        started = time.monotonic()
        indices = shard(len(self.eval_set), trainer.world_size, trainer.global_rank)
        was_training = pl_module.training
        pl_module.eval()
        generation_context = getattr(pl_module, "generation_context", contextlib.nullcontext)
        with torch.no_grad(), trainer.strategy.precision_plugin.forward_context(), generation_context():
            records = evaluate_items(
                pl_module.model,
                pl_module.tokenizer,  # type: ignore[arg-type]  # an SFTModule attribute (see setup)
                self.eval_set,
                indices,
                batch_size=self.batch_size,
                max_new_tokens=self.max_new_tokens,
                synced=trainer.world_size > 1,
            )
        pl_module.train(was_training)
        metric = GSM8KAccuracy().to(pl_module.device)
        metric.update([r["generation"] for r in records], [r["gold"] for r in records])
        accuracy = {name: float(value) for name, value in metric.compute().items()}
        self._write_records(trainer, records)
        self.last_evaluated_step = trainer.global_step
        self.history.append((trainer.global_step, accuracy["strict"], accuracy["flexible"]))
        rank_zero_only(log.info)(
            f"gsm8k (step {trainer.global_step}): strict {accuracy['strict']:.1%}, flexible {accuracy['flexible']:.1%}, "
            f"no '####' answer {accuracy['strict_invalid']:.1%}, {len(self.eval_set)} questions in "
            f"{time.monotonic() - started:.1f} s"
        )
        return accuracy

    def _records_dir(self, trainer: Trainer) -> str:
        """``output_dir``, else the run's own directory. Not ``trainer.log_dir``: it broadcasts (this runs on
        rank 0 only), and for loggers such as wandb it is their save_dir, shared by every run."""
        if self.output_dir:
            return self.output_dir
        logger = trainer.logger
        if isinstance(logger, CSVLogger | TensorBoardLogger):
            return os.path.join(logger.log_dir, "gsm8k")
        if logger is not None and logger.version is not None:
            return os.path.join(trainer.default_root_dir, "gsm8k", str(logger.version))
        return os.path.join(trainer.default_root_dir, "gsm8k")

    def _write_records(self, trainer: Trainer, records: list[dict[str, Any]]) -> None:
        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            gathered: list[Any] = [None] * trainer.world_size
            dist.all_gather_object(gathered, records)
            records = [record for part in gathered for record in part]
        if trainer.global_rank != 0:
            return
        directory = self._records_dir(trainer)
        prefix = "validate-" if trainer.state.fn == TrainerFn.VALIDATING else ""
        path = os.path.join(directory, f"{prefix}step-{trainer.global_step:06d}.jsonl")
        with atomic_write(path) as handle:
            for record in sorted(records, key=lambda r: r["index"]):
                handle.write(json.dumps(record, default=str) + "\n")

    def _log(self, pl_module: LightningModule, accuracy: dict[str, float]) -> None:
        pl_module.log("val/gsm8k_acc_strict", accuracy["strict"], prog_bar=True)
        pl_module.log("val/gsm8k_acc_flexible", accuracy["flexible"])

    @override
    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.sanity_checking:
            return
        if trainer.state.fn == TrainerFn.VALIDATING:
            self._log(pl_module, self.evaluate(trainer, pl_module))
            return
        self.validations += 1
        if self.validations % self.every_n_validations == 0:
            self._log(pl_module, self.evaluate(trainer, pl_module))

    def _log_outside_a_loop(self, trainer: Trainer, accuracy: dict[str, float]) -> None:
        """Log where ``LightningModule.log`` is not allowed (before and after training)."""
        metrics = {"val/gsm8k_acc_strict": accuracy["strict"], "val/gsm8k_acc_flexible": accuracy["flexible"]}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        trainer.callback_metrics.update({name: torch.tensor(value) for name, value in metrics.items()})

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.evaluate_at_fit_start and trainer.global_step == 0:
            self._log_outside_a_loop(trainer, self.evaluate(trainer, pl_module))

    @override
    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.evaluate_at_fit_end and self.last_evaluated_step != trainer.global_step:
            self._log_outside_a_loop(trainer, self.evaluate(trainer, pl_module))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"validations": self.validations, "history": self.history}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.validations = int(state_dict.get("validations", 0))
        self.history = [tuple(item) for item in state_dict.get("history", [])]
