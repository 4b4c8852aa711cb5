"""`SFTDataModule`: files or Hub datasets in, masked and batched token ids out."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import datasets
import numpy as np
from lightning.pytorch import LightningDataModule
from lightning.pytorch.utilities import rank_zero_only

from lit_sft.batch import TextBatch
from lit_sft.data.collate import PackedCollator, PaddingCollator
from lit_sft.data.conversation import AssistantTurns, FormatOptions, RowFormat
from lit_sft.data.dataloader import MicroBatchDataset, ResumableDataLoader, processed_in_epoch
from lit_sft.data.mixture import (
    MixturePlan,
    SourceSpec,
    as_plain,
    data_sources,
    load_data_sources,
    plan_mixture,
)
from lit_sft.data.render import RewrittenTurns
from lit_sft.data.row_tokenizer import RowTokenizer
from lit_sft.data.sampler import MicroBatchSampler
from lit_sft.data.sources import Source, expand_specs, load_sources, missing_local_files
from lit_sft.data.splits import (
    SplitSummary,
    check_columns,
    choose_positions,
    column,
    tokenize_split,
)
from lit_sft.data.steps import accumulation_for, token_budget, token_step_accumulation
from lit_sft.data.tokenize import TokenizeOptions, Truncation
from lit_sft.errors import ConfigError
from lit_sft.hub import TokenizerOwner
from lit_sft.training.distributed import data_parallel_layout

log = logging.getLogger("lit_sft")


#: Data module options that the model owns and the CLI links in; left out of the data module's hparams.
MODEL_OWNED = ("tokenizer_name_or_path", "chat_template", "trust_remote_code")


class SFTDataModule(TokenizerOwner, LightningDataModule):
    """Supervised fine-tuning data: prompt/response or multi-turn chat rows, masked so that only assistant
    tokens are trained.

    Rows are rendered with the model's chat template; the assistant content and its end-of-turn token are
    the training targets (labels), everything else is masked with -100. Tokenization runs through
    ``datasets.map`` and is cached: a second run on the same data and tokenizer does not tokenize again.

    Args:
        train_files: Training data: parquet/jsonl/json/csv files (globs allowed), a dataset directory, or
            a Hub dataset id (``openai/gsm8k``, optionally with a split: ``openai/gsm8k:train``); or a list
            of sources, each a path or a mapping with the keys of `lit_sft.data.DataSource` (a `DataSource`
            from Python): ``files``; ``name``; ``weight``, the source's share of each epoch's rows relative to
            the other sources' weights (give every source a weight, or none); ``replacement``, draw that
            share with replacement instead of whole passes plus a random subset; ``max_samples``, its first
            rows only; and its own ``format``, ``prompt_key``, ``response_key``, ``messages_key``,
            ``tools_key``, ``assistant_turns``, ``system_prompt`` (unset: this module's). See
            `lit_sft.data.mixture` for how rows are drawn. Each source is counted in the split summary.
        val_files: Validation data, in the same forms. When absent, ``val_ratio`` of the training rows are
            held out.
        tokenizer_name_or_path: The tokenizer (a Hub id, a local directory, or ``builtin:byte-chatml``).
            The CLI links it to the model's.
        chat_template: A Jinja chat template (text or ``.jinja`` file) replacing the tokenizer's own.
        format: Row format: ``prompt_response``, ``messages``, or ``auto`` (``messages`` when the messages
            column exists).
        prompt_key: Column of the prompt, or a dotted path into nested columns (``extra_info.question``).
            The prompt is a string or a list of chat messages.
        response_key: Column (or dotted path) of the response string.
        messages_key: Column (or dotted path) of the list of ``{role, content}`` messages.
        tools_key: Column of tool schemas (a list, or a JSON string), passed to the chat template.
        assistant_turns: In ``messages`` rows, train ``all`` assistant turns or the ``last`` only.
        system_prompt: A system message added to conversations that have none.
        template_kwargs: Extra variables for the chat template (e.g. ``{enable_thinking: false}``).
        max_length: Longest sequence in tokens; longer ones are handled per ``truncation``.
        max_prompt_length: Longest prompt (tokens before the first trained token); longer prompts lose
            their oldest tokens (or the row is rejected under ``truncation: error``).
        max_response_length: Longest response; longer responses lose their end (or are rejected).
        truncation: ``left`` (keep the end), ``right`` (keep the start) or ``error`` (reject the row,
            naming it and its length). Rows left with no trained token are dropped and counted.
        rewritten_turns: For chat templates that render an assistant turn differently once later messages
            follow (Qwen3 strips earlier ``<think>`` blocks): ``split`` trains each such turn in a row that
            ends with it, as the model writes it at inference (history repeated; the summary counts the
            extra rows and tokens); ``error`` refuses the conversation.
        strict_template: Refuse rows whose rendered text lacks content the data has (a tool call, reasoning
            or content the template does not write) instead of keeping and counting them.
        val_ratio: Fraction of training rows held out for validation when there are no ``val_files``.
        max_train_samples: Use at most this many training rows (the first ones).
        max_val_samples: Use at most this many validation rows.
        skip_invalid_rows: Drop malformed rows and count them instead of stopping with an error.
        dataset_config_name: Configuration name of Hub datasets (``main`` for ``openai/gsm8k``).
        batch_size: Rows per micro-batch on each device (when ``max_tokens_per_batch`` is not set).
        global_batch_size: Rows per optimizer step over all data-parallel ranks (verl's
            ``data.train_batch_size``). The gradient accumulation is derived from it: global_batch_size /
            (batch_size x data-parallel size), an error when that does not divide or when
            ``trainer.accumulate_grad_batches`` says otherwise. With ``packing``, each micro-batch packs
            its ``batch_size`` rows into one sequence (no ``max_tokens_per_batch``). With
            ``max_tokens_per_batch`` (verl's ``use_dynamic_bsz``), each rank splits its share of a step's
            rows into micro-batches under that budget, and the accumulation is the most micro-batches any
            step needs (measured on the data; steps needing fewer get one-row fillers that train nothing).
        drop_last: Drop each epoch's last optimizer step when its rows do not fill it (as verl does);
            fixed-size micro-batches only.
        val_batch_size: Rows per validation batch (default: ``batch_size``).
        max_tokens_per_batch: A token budget per micro-batch instead of a row count: with ``packing``, the
            length of each packed sequence (default: ``max_length``); without, length-grouped padded
            batches of at most this many tokens, padding included.
        packing: Padding-free packing: rows are packed best-fit-decreasing into sequences of
            ``max_tokens_per_batch`` tokens whose ``position_ids`` restart at 0 for every row, so no row
            attends to another (SDPA, eager and flex attention on CPU or GPU, flash-attention on GPU).
        pad_to_multiple_of: Round padded lengths up to a multiple of this.
        shuffle: Shuffle training rows every epoch.
        seed: Seed of the shuffle and of the ``val_ratio`` split.
        num_workers: DataLoader worker processes.
        num_proc: Processes for tokenization (``datasets.map``); default: every core (shared among this
            node's ranks, at most 16) for 20,000 rows or more, one below.
        cache_dir: ``datasets`` cache directory.
        trust_remote_code: Passed to ``AutoTokenizer.from_pretrained``.
    """

    _no_tokenizer_path = "data.tokenizer_name_or_path is not set (the CLI links it to the model's)"

    def __init__(
        self,
        train_files: str | list[str | SourceSpec],
        val_files: str | list[str] | None = None,
        tokenizer_name_or_path: str | None = None,
        chat_template: str | None = None,
        format: RowFormat = "auto",
        prompt_key: str = "prompt",
        response_key: str = "response",
        messages_key: str = "messages",
        tools_key: str = "tools",
        assistant_turns: AssistantTurns = "all",
        system_prompt: str | None = None,
        template_kwargs: dict[str, Any] | None = None,
        max_length: int | None = 2048,
        max_prompt_length: int | None = None,
        max_response_length: int | None = None,
        truncation: Truncation = "error",
        rewritten_turns: RewrittenTurns = "split",
        strict_template: bool = False,
        val_ratio: float = 0.0,
        max_train_samples: int | None = None,
        max_val_samples: int | None = None,
        skip_invalid_rows: bool = False,
        dataset_config_name: str | None = None,
        batch_size: int = 8,
        global_batch_size: int | None = None,
        drop_last: bool = False,
        val_batch_size: int | None = None,
        max_tokens_per_batch: int | None = None,
        packing: bool = False,
        pad_to_multiple_of: int | None = None,
        shuffle: bool = True,
        seed: int = 42,
        num_workers: int = 0,
        num_proc: int | None = None,
        cache_dir: str | None = None,
        trust_remote_code: bool = False,
    ) -> None:
        super().__init__()
        # The tokenizer settings belong to the model (the CLI links them here, resolved): Lightning stops a
        # run whose model and data module log the same key with different values (None vs the model path).
        self.save_hyperparameters(ignore=list(MODEL_OWNED))
        self.data_sources = data_sources(train_files)
        if not isinstance(train_files, str) and any(
            not isinstance(entry, str) for entry in train_files or []
        ):
            # Plain dicts in the checkpoint: Lightning loads checkpoints with ``weights_only``.
            self.hparams["train_files"] = as_plain(self.data_sources)
        if not 0.0 <= val_ratio < 1.0:
            raise ConfigError(f"data.val_ratio must be in [0, 1), got {val_ratio}")
        max_tokens_per_batch = token_budget(
            batch_size, global_batch_size, drop_last, max_tokens_per_batch, packing, max_length
        )
        self.train_files = train_files
        self.val_files = val_files
        self.tokenizer_name_or_path = tokenizer_name_or_path
        self.chat_template = chat_template
        self.format_options = FormatOptions(
            format=format,
            prompt_key=prompt_key,
            response_key=response_key,
            messages_key=messages_key,
            tools_key=tools_key,
            assistant_turns=assistant_turns,
            system_prompt=system_prompt,
        )
        self.tokenize_options = TokenizeOptions(
            max_length=max_length,
            max_prompt_length=max_prompt_length,
            max_response_length=max_response_length,
            truncation=truncation,
            rewritten_turns=rewritten_turns,
            strict_template=strict_template,
        )
        self.template_kwargs = template_kwargs or {}
        self.val_ratio = val_ratio
        self.max_train_samples, self.max_val_samples = max_train_samples, max_val_samples
        self.skip_invalid_rows = skip_invalid_rows
        self.dataset_config_name = dataset_config_name
        self.batch_size = batch_size
        self.global_batch_size, self.drop_last = global_batch_size, drop_last
        self.val_batch_size = val_batch_size or batch_size
        self.max_tokens_per_batch, self.packing = max_tokens_per_batch, packing
        self.pad_to_multiple_of = pad_to_multiple_of
        self.shuffle, self.seed = shuffle, seed
        self.num_workers, self.num_proc = num_workers, num_proc
        self.cache_dir = cache_dir
        self.trust_remote_code = trust_remote_code
        self.train_dataset: datasets.Dataset | None = None
        self.val_dataset: datasets.Dataset | None = None
        self.summaries: dict[str, SplitSummary] = {}
        #: Which training rows each epoch uses, for a weighted mixture (after `setup`).
        self.mixture: MixturePlan | None = None

    def preflight_problems(self) -> list[str]:
        """Problems visible before reading any data: local data files that do not exist."""
        groups = [("train_files", source.files) for source in self.data_sources]
        return missing_local_files([*groups, ("val_files", self.val_files)])

    def _load_one(self, spec: str, default_split: str) -> list[Source]:
        return load_sources(
            spec, config_name=self.dataset_config_name, cache_dir=self.cache_dir, default_split=default_split
        )

    def row_tokenizer(self, source: Source, tokenize_options: TokenizeOptions | None = None) -> RowTokenizer:
        """The ``datasets.map`` function for ``source`` (its format resolved and its columns checked)."""
        format_options = getattr(source, "format_options", None) or self.format_options  # a mixture's source
        row_format = check_columns(source, format_options)
        options = tokenize_options or self.tokenize_options
        format_options = replace(format_options, struct_nulls=source.typed)
        return RowTokenizer(self.tokenizer, row_format, format_options, options, self.template_kwargs)

    def plan_splits(self) -> dict[str, tuple[list[Source], np.ndarray]]:
        """Load the sources and choose each split's rows: ``{split: (sources, row positions)}``.

        Positions index the concatenation of the split's sources; the split by ``val_ratio`` is seeded
        and ``max_*_samples`` (each source's, then the split's) keep the first rows.
        """
        if not self.data_sources:
            raise ConfigError("data.train_files is not set")
        _ = self.tokenizer  # configuration mistakes first, before any data is read
        labeled, ranges = load_data_sources(
            self.data_sources, self.format_options, lambda spec: self._load_one(spec, "train")
        )
        train_sources: list[Source] = list(labeled)  # the same LabeledSource objects, as plain sources
        val_sources = None
        if self.val_files:
            val_sources = [
                source for spec in expand_specs(self.val_files) for source in self._load_one(spec, "test")
            ]
        return choose_positions(
            train_sources,
            val_sources,
            self.val_ratio,
            self.seed,
            ranges,
            [source.max_samples for source in self.data_sources],
            self.max_train_samples,
            self.max_val_samples,
        )

    def _build(self) -> None:
        options: dict[str, Any] = {"skip_invalid_rows": self.skip_invalid_rows, "num_proc": self.num_proc}
        splits = self.plan_splits()
        self.train_dataset, train_summary = tokenize_split(
            "train", *splits["train"], self.row_tokenizer, **options
        )
        self.summaries = {"train": train_summary}
        if self.train_dataset is None:
            raise ConfigError(f"no training rows left: {train_summary.line()}")
        per_source = [train_summary.sources[source.label] for source in self.data_sources]
        self.mixture = plan_mixture(self.data_sources, [source.kept for source in per_source], self.seed)
        if self.mixture is not None:
            for source, count in zip(per_source, self.mixture.counts, strict=True):
                source.rows_per_epoch = count
            train_summary.rows_per_epoch = sum(self.mixture.counts)
        if "val" in splits:
            self.val_dataset, self.summaries["val"] = tokenize_split(
                "val", *splits["val"], self.row_tokenizer, **options
            )

    def prepare_data(self) -> None:
        """Load and tokenize once on the main process, filling the ``datasets`` cache for `setup`."""
        self._build()

    def setup(self, stage: str | None = None) -> None:
        """Load the tokenized splits (from the cache after `prepare_data`) and print one line per split.

        With ``global_batch_size``, also set the trainer's ``accumulate_grad_batches`` (before any step).
        """
        trainer = getattr(self, "trainer", None)
        token_steps = self.global_batch_size is not None and self.max_tokens_per_batch is not None
        if self.global_batch_size is not None and trainer is not None and not token_steps:
            data_parallel_size, _ = data_parallel_layout(trainer)
            trainer.accumulate_grad_batches = accumulation_for(
                self.global_batch_size, self.batch_size, data_parallel_size, trainer.accumulate_grad_batches
            )
        self._build()
        if token_steps and trainer is not None and self.train_dataset is not None:
            trainer.accumulate_grad_batches = self._token_step_accumulation(trainer)
        self._log_summaries()

    def _token_step_accumulation(self, trainer: Any) -> int:
        """Micro-batches per step under ``max_tokens_per_batch``: the most any step of the run needs."""
        assert self.global_batch_size is not None and self.train_dataset is not None  # token steps only
        sampler = self._sampler(
            self.train_dataset, self.batch_size, self.shuffle, 1, step_rows=self.global_batch_size
        )
        return token_step_accumulation(sampler, trainer)

    @rank_zero_only
    def _log_summaries(self) -> None:
        for summary in self.summaries.values():
            log.info("\n".join(summary.lines()))

    def state_dict(self) -> dict[str, Any]:
        """The split summaries (rows and tokens per split and source), saved in checkpoints for model cards."""
        return {"summaries": {split: asdict(summary) for split, summary in self.summaries.items()}}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore: `setup` counts the data again (the data position lives in the dataloader)."""

    def _trainer_layout(self) -> tuple[int, int, int]:
        """(data-parallel size, data-parallel rank, accumulation) from the attached trainer, or a single process."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0, 1
        return (*data_parallel_layout(trainer), trainer.accumulate_grad_batches)

    def _collator(self) -> Callable[..., TextBatch]:
        if self.packing:
            return PackedCollator()
        return PaddingCollator(self.tokenizer.pad_token_id, self.pad_to_multiple_of)

    def _sampler(
        self,
        dataset: datasets.Dataset,
        batch_size: int,
        shuffle: bool,
        accumulate: int,
        mixture: MixturePlan | None = None,
        step_rows: int | None = None,
    ) -> MicroBatchSampler:
        world_size, rank, _ = self._trainer_layout()
        return MicroBatchSampler(
            column(dataset, "num_tokens"),
            column(dataset, "num_trained"),
            batch_size,
            max_tokens_per_batch=self.max_tokens_per_batch,
            packing=self.packing and self.max_tokens_per_batch is not None,
            shuffle=shuffle,
            seed=self.seed,
            num_replicas=world_size,
            rank=rank,
            accumulate_grad_batches=accumulate,
            drop_last=self.drop_last and shuffle and self.max_tokens_per_batch is None,
            epoch_rows=mixture.rows if mixture is not None else None,
            step_rows=step_rows,
        )

    def _loader(self, dataset: datasets.Dataset, sampler: MicroBatchSampler) -> ResumableDataLoader:
        return ResumableDataLoader(
            MicroBatchDataset(dataset, self._collator()),
            sampler,
            consumed=lambda: processed_in_epoch(getattr(self, "trainer", None)),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> ResumableDataLoader:
        """Training micro-batches; each carries the token counts of its whole optimizer step.

        Its ``state_dict`` (saved by Lightning in checkpoints) resumes at the exact next micro-batch.
        """
        if self.train_dataset is None:
            self.setup("fit")
        _, _, accumulate = self._trainer_layout()
        step_rows = self.global_batch_size if self.max_tokens_per_batch is not None else None
        sampler = self._sampler(
            self.train_dataset, self.batch_size, self.shuffle, accumulate, self.mixture, step_rows
        )
        return self._loader(self.train_dataset, sampler)

    def val_dataloader(self) -> ResumableDataLoader | list:
        """Validation batches, in order, the same number on every rank."""
        if self.val_dataset is None:
            return []
        return self._loader(self.val_dataset, self._sampler(self.val_dataset, self.val_batch_size, False, 1))
