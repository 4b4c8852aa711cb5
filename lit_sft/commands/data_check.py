"""``lit-sft data check --config …``: read the data exactly as training would, and report on it.

For each split: rows (and, with several sources, each source's rows, duplicates, malformed rows, tokens
and, for a weighted mixture, its weight and rows per epoch), exact duplicates, malformed rows with their reasons, token-length percentiles
(prompt, response, total) before truncation, how many rows ``max_length`` would truncate or drop, the
padding a padded batch would waste against packing, one example rendered with its trained tokens marked,
and, for GSM8K-format data, the rows whose final answer cannot be extracted. ``--clean FILE`` writes the
training rows without duplicates and malformed rows. The seed's advice (dedupe, drop malformed rows,
check answers, inspect lengths) as one command.
"""

from __future__ import annotations

import re
import sys
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from lit_sft.batch import IGNORE_INDEX
from lit_sft.commands.fit import MODEL_TO_DATA_LINKS
from lit_sft.data.datamodule import SFTDataModule
from lit_sft.data.grouping import pack_best_fit_decreasing, padding_fraction
from lit_sft.data.mixture import plan_mixture
from lit_sft.data.row_tokenizer import NO_TRAINED_TOKENS, OK
from lit_sft.data.sampler import MicroBatchSampler
from lit_sft.data.splits import TokenizedSource, tokenize_sources
from lit_sft.data.tokenize import truncate
from lit_sft.errors import ConfigError, InvalidRow
from lit_sft.gsm8k.scoring import extract_strict
from lit_sft.io import write_rows

PERCENTILES = (50, 90, 99, 100)


@dataclass
class SourceCheck:
    """One source's share of a `SplitCheck`: its rows, what would be removed, and its tokens.

    Attributes:
        name: The source's name (its ``data.train_files`` entry).
        rows: Rows selected from it.
        duplicates: Exact duplicates (of any earlier row of the split).
        malformed: Malformed rows.
        tokens: Tokens of its valid rows, before truncation.
        weight: Its mixture weight, if any.
        rows_per_epoch: Its rows in each epoch of a weighted mixture, drawn from its well-formed rows (rows
            that `max_length` would drop still count here; training counts after them).
    """

    name: str
    rows: int = 0
    duplicates: int = 0
    malformed: int = 0
    tokens: int = 0
    weight: float | None = None
    rows_per_epoch: int | None = None

    def line(self) -> str:
        """The source's line of the report."""
        mixture = f", weight {self.weight:g}" if self.weight is not None else ""
        if self.rows_per_epoch is not None:
            mixture += f" -> {self.rows_per_epoch} rows per epoch"
        return (
            f"{self.name}: {self.rows} rows, {self.duplicates} duplicates, {self.malformed} malformed, "
            f"{self.tokens} tokens{mixture}"
        )


@dataclass
class SplitCheck:
    """What `check_split` found in one split (see the module docstring)."""

    split: str
    rows: int = 0
    duplicates: int = 0
    malformed: Counter = field(default_factory=Counter)
    malformed_examples: list[str] = field(default_factory=list)
    lengths: dict[str, np.ndarray] = field(default_factory=dict)
    would_truncate: int = 0
    would_drop: Counter = field(default_factory=Counter)
    padding_waste: dict[str, float] = field(default_factory=dict)
    packed_fill: float = 0.0
    example: str = ""
    gsm8k_unextractable: list[str] | None = None
    split_rows: int = 0
    template_losses: Counter = field(default_factory=Counter)
    template_loss_examples: list[str] = field(default_factory=list)
    keep: list[tuple[TokenizedSource, np.ndarray]] = field(default_factory=list)
    sources: dict[str, SourceCheck] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The report as printable lines."""
        out = [f"== {self.split}: {self.rows} rows"]
        if len(self.sources) > 1 or any(source.weight is not None for source in self.sources.values()):
            out.extend(f"source {source.line()}" for source in self.sources.values())
        out.append(f"exact duplicates: {self.duplicates}")
        reasons = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.malformed.items()))
        out.append(f"malformed rows: {sum(self.malformed.values())}" + (f" ({reasons})" if reasons else ""))
        out.extend(f"  {example}" for example in self.malformed_examples)
        if self.split_rows:
            out.append(
                f"rows added by splitting conversations whose chat template rewrites history: {self.split_rows}"
            )
        kinds = ", ".join(f"{kind}: {count}" for kind, count in sorted(self.template_losses.items()))
        out.append(
            f"rows whose chat template drops content: {sum(self.template_losses.values())}"
            + (f" ({kinds}; data.strict_template=true refuses them)" if kinds else "")
        )
        out.extend(f"  {example}" for example in self.template_loss_examples)
        for name, values in self.lengths.items():
            if len(values):
                stats = ", ".join(f"p{p} {int(np.percentile(values, p))}" for p in PERCENTILES)
                out.append(f"{name} tokens: {stats} (mean {values.mean():.0f})")
        drops = ", ".join(f"{reason}: {count}" for reason, count in sorted(self.would_drop.items()))
        out.append(
            f"max_length would truncate {self.would_truncate} rows and drop {sum(self.would_drop.values())}"
            + (f" ({drops})" if drops else "")
        )
        if self.padding_waste:
            parts = ", ".join(f"{name} {value:.1%}" for name, value in self.padding_waste.items())
            out.append(f"padding waste: {parts}; (packed sequences are filled to {self.packed_fill:.1%})")
        if self.gsm8k_unextractable is not None:
            out.append(
                f"GSM8K-format responses without an extractable '#### <number>': {len(self.gsm8k_unextractable)}"
            )
            out.extend(f"  {where}" for where in self.gsm8k_unextractable[:10])
        if self.example:
            out.append("example (trained tokens between [[ and ]]):")
            out.extend(f"  | {line}" for line in self.example.splitlines())
        return out


def mark_trained(tokenizer: Any, input_ids: list[int], labels: list[int]) -> str:
    """Decode a row with every run of trained tokens wrapped in ``[[`` and ``]]``."""
    pieces: list[str] = []
    run: list[int] = []
    trained = False
    for token, label in [*zip(input_ids, labels, strict=True), (None, None)]:
        is_trained = label is not None and label != IGNORE_INDEX
        if token is None or is_trained != trained:
            if run:
                text = tokenizer.decode(run)
                pieces.append(f"[[{text}]]" if trained else text)
            run, trained = [], is_trained
        if token is not None:
            run.append(token)
    return "".join(pieces)


def check_split(
    dm: SFTDataModule, split: str, sources: list, positions: np.ndarray, max_examples: int = 5
) -> SplitCheck:
    """Tokenize a split without length limits (to see true lengths) and apply the configured limits to it."""
    report = SplitCheck(split=split, rows=len(positions))
    unlimited = replace(
        dm.tokenize_options, max_length=None, max_prompt_length=None, max_response_length=None
    )
    tokenizer = dm.tokenizer
    seen: set[int] = set()
    totals, prompts, responses, kept_lengths, gsm8k_hits = [], [], [], [], 0
    unextractable: list[str] = []
    for part in tokenize_sources(
        sources, positions, lambda source: dm.row_tokenizer(source, unlimited), dm.num_proc
    ):
        label = getattr(part.source, "label", "") or part.source.name
        source = report.sources.setdefault(label, SourceCheck(label))
        source.rows += len(part.rows)
        source.malformed += len(part.invalid())
        for position in part.invalid():
            error = part.row_error(position)
            report.malformed[part.status(position)] += 1
            if len(report.malformed_examples) < max_examples:
                report.malformed_examples.append(
                    f"{error.file}, row {error.row}, field '{error.field}': {error.reason}"
                )
        valid = np.flatnonzero(part.status_in(OK, NO_TRAINED_TOKENS))
        source_rows = part.source_rows
        report.split_rows += len(valid) - len(np.unique(source_rows[valid]))
        for position, lost in part.lost(valid).items():
            fields = lost.split(", ")
            report.template_losses.update(
                {re.sub(r"\[\d+\]$", "", name.rsplit(".", 1)[-1]) for name in fields}
            )
            if len(report.template_loss_examples) < max_examples:
                report.template_loss_examples.append(
                    f"{part.source.name}, row {part.file_row(int(position))}: the template does not render "
                    + ", ".join(f"'{name}'" for name in fields)
                )
        keep = []
        columns = part.tokenized.select_columns(
            ["input_ids", "labels", "num_tokens", "prompt_length", "num_trained"]
        )
        for position in valid:
            row = columns[int(position)]
            digest = hash(tuple(row["input_ids"]))
            if digest in seen:
                report.duplicates += 1
                source.duplicates += 1
                continue
            seen.add(digest)
            keep.append(position)
            totals.append(row["num_tokens"])
            source.tokens += row["num_tokens"]
            prompts.append(row["prompt_length"])
            responses.append(row["num_tokens"] - row["prompt_length"])
            try:  # the configured limits, applied exactly as training applies them
                limited = truncate(list(row["input_ids"]), list(row["labels"]), dm.tokenize_options, "")
            except InvalidRow as error:
                report.would_drop[error.kind] += 1
            else:
                if limited.num_trained == 0:
                    report.would_drop[NO_TRAINED_TOKENS] += 1
                else:
                    report.would_truncate += limited.truncated
                    kept_lengths.append(len(limited.input_ids))
            response = tokenizer.decode(
                [t for t in row["labels"] if t != IGNORE_INDEX], skip_special_tokens=True
            )
            if "####" in response:
                gsm8k_hits += 1
            if extract_strict(response) is None:
                unextractable.append(f"{part.source.name}, row {part.file_row(int(position))}")
            if not report.example and row["num_trained"]:
                report.example = mark_trained(tokenizer, row["input_ids"], row["labels"])
        report.keep.append((part, np.asarray(keep, dtype=np.int64)))
    report.lengths = {
        "prompt": np.asarray(prompts),
        "response": np.asarray(responses),
        "total": np.asarray(totals),
    }
    if gsm8k_hits * 2 >= max(len(totals), 1):  # most responses end in '#### N': GSM8K format
        report.gsm8k_unextractable = unextractable
    if kept_lengths:
        report.padding_waste, report.packed_fill = _padding_waste(np.asarray(kept_lengths), dm)
    return report


def _padding_waste(lengths: np.ndarray, dm: SFTDataModule) -> tuple[dict[str, float], float]:
    """Fraction of computed tokens that are padding (shuffled padded batches, length-grouped, packed), and
    how full packed sequences of the token budget are."""
    ones = np.ones_like(lengths)
    budget = max(dm.max_tokens_per_batch or dm.tokenize_options.max_length or 0, int(lengths.max()))
    padded = MicroBatchSampler(lengths, ones, dm.batch_size, seed=dm.seed).micro_batches(0)
    grouped = MicroBatchSampler(lengths, ones, max_tokens_per_batch=budget).micro_batches(0)
    packs = pack_best_fit_decreasing(lengths, budget)
    waste = {
        f"padded batches of {dm.batch_size} rows": padding_fraction(lengths, padded),
        f"length-grouped batches of <= {budget} tokens": padding_fraction(lengths, grouped),
        # Packed rows are concatenated into one sequence of their own length (PackedCollator): no padding.
        f"packed into {budget}-token sequences": 0.0,
    }
    return waste, 1.0 - padding_fraction(lengths, packs, budget=budget)


def _mixture_shares(dm: SFTDataModule, report: SplitCheck) -> None:
    """Each weighted source's weight and rows per epoch, as training would draw them from the rows left."""
    kept = []
    for data_source in dm.data_sources:
        source = report.sources.setdefault(data_source.label, SourceCheck(data_source.label))
        source.weight = data_source.weight
        kept.append(source.rows - source.malformed)
    if dm.data_sources and dm.data_sources[0].weight is not None and all(kept):
        plan = plan_mixture(dm.data_sources, kept, dm.seed)
        assert plan is not None  # the sources have weights
        for data_source, count in zip(dm.data_sources, plan.counts, strict=True):
            report.sources[data_source.label].rows_per_epoch = count


def write_clean(path: str, report: SplitCheck) -> int:
    """Write the split's rows minus duplicates and malformed rows (the source rows, unchanged)."""
    rows: list[dict[str, Any]] = []
    for part, keep in report.keep:
        inputs = np.unique(part.source_rows[keep])  # a split conversation is one source row
        selected = part.source.dataset.select(part.rows[inputs]) if len(keep) else []
        rows.extend(selected)
    write_rows(path, rows)
    return len(rows)


def check(dm: SFTDataModule, clean: str | None = None, out: Any = None) -> dict[str, SplitCheck]:
    """Run the checks on every split of ``dm``; print the reports; optionally write the cleaned train split."""
    out = out or sys.stdout
    reports = {}
    for split, (sources, positions) in dm.plan_splits().items():
        reports[split] = report = check_split(dm, split, sources, positions)
        if split == "train":
            _mixture_shares(dm, report)
        print("\n".join(report.lines()), file=out)
    if clean:
        train = reports["train"]
        written = write_clean(clean, train)
        removed = train.rows - written
        print(
            f"cleaned train split: {written} rows written to {clean}, {removed} removed "
            f"({train.duplicates} duplicates, {sum(train.malformed.values())} malformed)",
            file=out,
        )
    return reports


def build_datamodule(args: list[str]) -> tuple[SFTDataModule, str | None]:
    """Parse ``--config`` files (as for ``lit-sft fit``) and overrides; build the data module only."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    from lit_sft.model import SFTModule

    parser = ArgumentParser(prog="lit-sft data check", description=__doc__)
    parser.add_argument(
        "-c", "--config", action=ActionConfigFile, help="A lit-sft fit config (several compose)."
    )
    parser.add_argument(
        "--clean",
        type=str | None,
        default=None,
        help="Write the cleaned training rows here (.jsonl/.parquet).",
    )
    parser.add_argument("--seed_everything", type=bool | int, default=True)
    parser.add_argument("--trainer", type=dict[str, Any] | None, default=None)
    parser.add_argument("--ckpt_path", type=str | None, default=None)
    parser.add_subclass_arguments(SFTDataModule, "data")
    parser.add_subclass_arguments(SFTModule, "model", required=False)
    config = parser.parse_args(args)
    model = config.get("model")
    if model is not None:  # the same links as lit-sft fit: the model's tokenizer settings
        for link in MODEL_TO_DATA_LINKS:
            config.data.init_args[link.data_option] = link.value(model.init_args)
    objects = parser.instantiate_classes(config)
    if not isinstance(objects.data, SFTDataModule):
        raise ConfigError("data check needs an SFTDataModule")
    return objects.data, config.clean


def main(command: str, args: list[str]) -> None:
    """``lit-sft data check --config …``."""
    if not args or args[0] != "check":
        raise ConfigError(
            "usage: lit-sft data check --config CONFIG [--clean FILE] [--data.init_args.KEY VALUE ...]"
        )
    dm, clean = build_datamodule(args[1:])
    check(dm, clean)
