"""The ``README.md`` model card of every Hugging Face export.

The card opens with the metadata block the Hub reads (``base_model``, ``library_name``, ``tags``,
``datasets``, ``pipeline_tag``; written with ``huggingface_hub.ModelCardData``), then states what was
trained on what: the base model, each data source with its rows and tokens, the hyper-parameters, the
optimizer steps, the final train and validation loss and the GSM8K accuracy when it was measured, the
lit_sft version, and the command or configuration that reproduces the run.

Its facts come from a live run (`card_from_trainer`, used by `lit_sft.callbacks.HFExport`) or from a
checkpoint (`card_from_checkpoint`, used by ``lit-sft export``).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from lit_sft.data.sources import is_local_path

#: Trainer settings the card lists besides the model's and the data module's hyper-parameters.
TRAINER_SETTINGS = ("max_steps", "max_epochs", "accumulate_grad_batches", "gradient_clip_val", "precision")

#: Metric names the results table shows, in order, when present.
RESULTS = (
    ("train/loss", "train loss (last step)"),
    ("val/loss", "validation loss"),
    ("val/gsm8k_acc_strict", "GSM8K accuracy (strict)"),
    ("val/gsm8k_acc_flexible", "GSM8K accuracy (flexible)"),
)


@dataclass
class ModelCardInfo:
    """What a model card states.

    Attributes:
        base_model: The model fine-tuned from (a Hub id or a path); None when initialised from a config.
        sources: Per split and source: ``{split, name, rows, tokens, trained_tokens, rows_per_epoch}``.
        hyperparameters: Name -> value (model, data and trainer settings).
        steps: Optimizer steps trained.
        metrics: Final metric values by name (``train/loss``, ``val/loss``, ``val/gsm8k_acc_strict``...).
        tokens_seen: Tokens (and trained tokens) the run processed, when known.
        config: The YAML configuration of the run, when known.
        command: The command line of the run, when known.
    """

    base_model: str | None = None
    sources: list[dict[str, Any]] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    steps: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    tokens_seen: dict[str, int] = field(default_factory=dict)
    config: str | None = None
    command: str | None = None


def source_rows(summaries: dict[str, Any]) -> list[dict[str, Any]]:
    """Card rows from split summaries (`SplitSummary` objects or their ``asdict`` form), one per source."""
    rows = []
    for split, summary in summaries.items():
        summary = summary if isinstance(summary, dict) else asdict(summary)
        for source in (summary.get("sources") or {summary["split"]: summary}).values():
            rows.append(
                {
                    "split": split,
                    "name": source["split"],
                    "rows": source["kept"],
                    "tokens": source["tokens"],
                    "trained_tokens": source["trained_tokens"],
                    "rows_per_epoch": source.get("rows_per_epoch"),
                }
            )
    return rows


def _plain(value: Any) -> Any:
    """A value as the card prints it (JSON-like)."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _command() -> str | None:
    """``lit-sft …`` as typed, when this process is the ``lit-sft`` command (not a notebook or a test)."""
    program = os.path.basename(sys.argv[0]) if sys.argv else ""
    if program == "lit-sft" or (program == "__main__.py" and "lit_sft" in sys.argv[0]):
        return " ".join(["lit-sft", *sys.argv[1:]])
    return None


def card_from_trainer(trainer: Any, pl_module: Any) -> ModelCardInfo:
    """The card of a live run: data counts from ``trainer.datamodule``, metrics from
    ``trainer.callback_metrics``, the configuration from LightningCLI's ``SaveConfigCallback``."""
    from lightning.pytorch.cli import SaveConfigCallback

    datamodule = getattr(trainer, "datamodule", None)
    hyperparameters = {
        f"model.{key}": value for key, value in dict(getattr(pl_module, "hparams", {})).items()
    }
    hyperparameters.update(
        {f"data.{key}": value for key, value in dict(getattr(datamodule, "hparams", {}) or {}).items()}
    )
    for optimizer in getattr(trainer, "optimizers", [])[:1]:
        hyperparameters["optimizer"] = type(optimizer).__name__
        for key in ("lr", "weight_decay", "betas"):
            if key in optimizer.defaults:
                hyperparameters[f"optimizer.{key}"] = optimizer.defaults[key]
    hyperparameters.update({f"trainer.{key}": getattr(trainer, key, None) for key in TRAINER_SETTINGS})
    hyperparameters["trainer.world_size"] = trainer.world_size
    metrics = {name: float(value) for name, value in trainer.callback_metrics.items() if value.numel() == 1}
    tokens = {
        key: int(metrics.pop(f"train/{key}"))
        for key in ("tokens_seen", "trained_tokens_seen")
        if f"train/{key}" in metrics
    }
    config = None
    for callback in trainer.callbacks:
        if isinstance(callback, SaveConfigCallback):
            config = callback.parser.dump(callback.config, skip_none=False)
    return ModelCardInfo(
        base_model=getattr(pl_module, "model_name_or_path", None),
        sources=source_rows(getattr(datamodule, "summaries", {}) or {}),
        hyperparameters=hyperparameters,
        steps=trainer.global_step,
        metrics=metrics,
        tokens_seen=tokens,
        config=config,
        command=_command(),
    )


def card_from_checkpoint(checkpoint: dict[str, Any], base_model: str | None) -> ModelCardInfo:
    """The card of a ``lit-sft fit`` checkpoint: its hyper-parameters, data counts (saved by the data
    module), step, token totals and the last metrics `lit_sft.callbacks.RunSummary` recorded."""
    hyperparameters = {f"model.{key}": value for key, value in checkpoint.get("hyper_parameters", {}).items()}
    hyperparameters.update(
        {f"data.{key}": value for key, value in checkpoint.get("datamodule_hyper_parameters", {}).items()}
    )
    summaries: dict[str, Any] = {}
    for value in checkpoint.values():  # the data module's state, under its class name
        if isinstance(value, dict) and isinstance(value.get("summaries"), dict):
            summaries = value["summaries"]
    metrics: dict[str, float] = {}
    for key, state in checkpoint.get("callbacks", {}).items():
        if "RunSummary" in str(key):
            # train_history since token metrics were added; train_losses in checkpoints written before
            train = {"train/loss": state.get("train_losses", []), **state.get("train_history", {})}
            for name, points in {**train, **state.get("history", {})}.items():
                if points:
                    metrics[name] = float(points[-1][1])
    totals = checkpoint.get("lit_sft", {}).get("totals", {})
    return ModelCardInfo(
        base_model=base_model,
        sources=source_rows(summaries),
        hyperparameters=hyperparameters,
        steps=checkpoint.get("global_step"),
        metrics=metrics,
        tokens_seen={key: int(value) for key, value in totals.items() if "tokens" in key},
        command=_command(),
    )


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + [
        "| " + " | ".join("" if cell is None else str(cell) for cell in row) + " |" for row in rows
    ]


def render_card(info: ModelCardInfo, *, library_name: str = "transformers") -> str:
    """The ``README.md`` text: the Hub metadata block, then the card (see the module docstring)."""
    import lit_sft  # here: lit_sft's package imports this module's importers

    hub_base = info.base_model if info.base_model and not is_local_path(info.base_model) else None
    hub_datasets = sorted(
        {row["name"].partition(":")[0] for row in info.sources if not is_local_path(row["name"])}
    )
    metadata = ModelCardData(
        base_model=hub_base,
        library_name=library_name,
        pipeline_tag="text-generation",
        tags=["lit-sft", "sft", *(["lora", "peft"] if library_name == "peft" else [])],
        datasets=hub_datasets or None,
    )
    base = f"`{info.base_model}`" if info.base_model else "a model initialised from a configuration"
    title = (
        f"{os.path.basename(info.base_model.rstrip('/'))} fine-tuned"
        if info.base_model
        else "Fine-tuned model"
    )
    lines = [
        f"# {title}",
        "",
        f"Supervised fine-tuning of {base} with lit_sft {lit_sft.__version__}"
        + (" (a peft LoRA adapter)." if library_name == "peft" else "."),
        "",
        "## Training data",
        "",
    ]
    if info.sources:
        lines += _table(
            ["split", "source", "rows", "tokens", "trained tokens", "rows per epoch"],
            [
                [
                    row["split"],
                    row["name"],
                    row["rows"],
                    row["tokens"],
                    row["trained_tokens"],
                    row["rows_per_epoch"],
                ]
                for row in info.sources
            ],
        )
    else:
        lines.append("Not recorded.")
    lines += ["", "## Training", ""]
    if info.steps is not None:
        lines.append(f"- optimizer steps: {info.steps}")
    for key, value in info.tokens_seen.items():
        lines.append(f"- {key.replace('_', ' ')}: {value:,}")
    if info.hyperparameters:
        lines += ([""] if lines[-1] else []) + ["Hyper-parameters:", ""]
        lines += _table(
            ["name", "value"],
            [
                [name, json.dumps(_plain(value))]
                for name, value in sorted(info.hyperparameters.items())
                # Unset options are their documented defaults; `_class_path`... are LightningCLI's bookkeeping.
                if value is not None and not name.split(".")[-1].startswith("_")
            ],
        )
    lines += ["", "## Results", ""]
    results = [(label, info.metrics[name]) for name, label in RESULTS if name in info.metrics]
    if results:
        lines += _table(
            ["metric", "value"],
            [
                [label, f"{value:.2%}" if "acc" in label.lower() else f"{value:.4f}"]
                for label, value in results
            ],
        )
    else:
        lines.append("No metrics were recorded.")
    if info.command or info.config:
        lines += ["", "## Reproduce", ""]
        if info.command:
            lines += ["```bash", info.command, "```"]
        if info.config:
            lines += [""] if info.command else []
            lines += ["The run's configuration:", "", "```yaml", info.config.rstrip(), "```"]
    body = "\n".join(lines) + "\n"
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{body}")  # validates the metadata block
    return str(card)


def write_model_card(
    directory: str,
    info: ModelCardInfo | None,
    *,
    library_name: str = "transformers",
    base_model: str | None = None,
) -> str:
    """Write ``directory/README.md``; without ``info``, a card naming only the base model. Returns its path."""
    info = info or ModelCardInfo(base_model=base_model)
    if info.base_model is None:
        info.base_model = base_model
    path = os.path.join(directory, "README.md")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(render_card(info, library_name=library_name))
    return path
