"""The ``lit-sft`` command: ``lit-sft fit --config …`` and ``lit-sft validate --config … --ckpt_path …``.

A `LightningCLI` over `SFTModule` and `SFTDataModule` (or subclasses named by ``class_path``). The
model's tokenizer settings are linked into the data module so that they always agree. ``main(args)``
runs it in-process (notebooks, tests); ``entry_point()`` is the console script: it dispatches the other
commands of `COMMANDS` (``lit-sft --help`` lists them all) and prints lit_sft's errors as one clear line
instead of a traceback.
"""

from __future__ import annotations

import importlib
import logging
import sys
from dataclasses import dataclass
from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from lit_sft.callbacks import RunSummary, TrainingThroughput
from lit_sft.callbacks.preemption import Preempted, Preemption
from lit_sft.callbacks.progress import with_step_progress_bar
from lit_sft.data import SFTDataModule
from lit_sft.errors import LitSFTError
from lit_sft.model import SFTModule
from lit_sft.training.preflight import preflight

log = logging.getLogger("lit_sft")


def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


@dataclass(frozen=True)
class ModelToDataLink:
    """A data module option that takes its value from the model's options (the first of them that is set).

    Attributes:
        model_options: Model ``init_args`` names, in order of preference.
        data_option: The data module ``init_args`` name they set.
    """

    model_options: tuple[str, ...]
    data_option: str

    def value(self, model_init_args: Any) -> Any:
        """The linked value from a parsed model ``init_args`` namespace."""
        return _first_set(*(model_init_args.get(name) for name in self.model_options))


#: The model's tokenizer settings, which the data module must share: ``lit-sft fit``/``validate`` link them
#: with ``parser.link_arguments``, ``lit-sft data check`` copies them the same way.
MODEL_TO_DATA_LINKS: tuple[ModelToDataLink, ...] = (
    ModelToDataLink(("tokenizer_name_or_path", "model_name_or_path"), "tokenizer_name_or_path"),
    ModelToDataLink(("chat_template",), "chat_template"),
    ModelToDataLink(("trust_remote_code",), "trust_remote_code"),
)


class SFTCLI(LightningCLI):
    """LightningCLI with the ``fit`` and ``validate`` subcommands and lit_sft's argument links."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = super().instantiate_trainer(**kwargs)
        # "step 12/800" instead of "Epoch 0/-2" under max_steps. Trainer.callbacks is set by a connector,
        # which mypy does not see.
        with_step_progress_bar(trainer.callbacks)  # type: ignore[attr-defined]
        return trainer

    def before_fit(self) -> None:
        preflight(self.trainer, self.model, self.datamodule)

    def before_validate(self) -> None:
        preflight(self.trainer, self.model, self.datamodule)

    def add_arguments_to_parser(self, parser: Any) -> None:
        for link in MODEL_TO_DATA_LINKS:
            sources = tuple(f"model.init_args.{name}" for name in link.model_options)
            target = f"data.init_args.{link.data_option}"
            if len(sources) == 1:
                parser.link_arguments(sources[0], target)
            else:
                parser.link_arguments(sources, target, compute_fn=_first_set)


def configure_logging(level: int = logging.INFO) -> None:
    """Send lit_sft's messages (split summaries, the run summary) to stderr, once."""
    if not any(getattr(handler, "_lit_sft", False) for handler in log.handlers):
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler._lit_sft = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False
    log.setLevel(level)


def main(args: ArgsType = None, run: bool = True) -> SFTCLI:
    """Build (and with ``run``, run) the CLI.

    Args:
        args: Command-line style arguments (``["fit", "--config", "configs/quickstart.yaml"]``) or a dict;
            ``sys.argv`` when None.
        run: Run the subcommand; with False only instantiate the model, data and trainer.
    """
    configure_logging()
    return SFTCLI(
        SFTModule,
        SFTDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        trainer_defaults={
            "callbacks": [RunSummary(), Preemption(), TrainingThroughput()],
            "logger": lazy_instance(CSVLogger, save_dir="runs", name="lit_sft"),
            "plugins": [{"class_path": "lit_sft.training.checkpoint_io.AtomicCheckpointIO"}],
        },
        save_config_kwargs={"overwrite": True},
        parser_kwargs={
            # ${trainer.default_root_dir} in configs follows --trainer.default_root_dir given on the command line
            "parser_mode": "omegaconf+",
            "prog": "lit-sft",
            "description": "Supervised fine-tuning of Hugging Face causal LMs on Lightning.",
        },
        args=args,
        run=run,
    )


@dataclass(frozen=True)
class Command:
    """One ``lit-sft`` command.

    Attributes:
        name: As typed (``data check``); its first word selects it.
        help: One line for ``lit-sft --help``.
        module: The module whose ``main(command, args)`` runs it (``command`` is the first word, ``args``
            the words after it); None for the LightningCLI subcommands of `SFTCLI`.
    """

    name: str
    help: str
    module: str | None = None

    @property
    def word(self) -> str:
        """The first word of the name, which selects the command."""
        return self.name.split()[0]


#: Every ``lit-sft`` command, in the order ``lit-sft --help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command("fit", "Train a model: lit-sft fit --config FILE [--config FILE ...] [--ckpt_path last.ckpt]."),
    Command("validate", "Validation loss of a checkpoint: lit-sft validate --config FILE --ckpt_path CKPT."),
    Command("evaluate", "GSM8K accuracy of a model by greedy generation.", "lit_sft.commands.evaluate"),
    Command(
        "generate", "Print a few generations next to their reference answers.", "lit_sft.commands.evaluate"
    ),
    Command(
        "prepare",
        "Convert raw datasets (GSM8K, ShareGPT/OpenAI chat) to training rows.",
        "lit_sft.commands.prepare",
    ),
    Command("data check", "Read the data as training would and report on it.", "lit_sft.commands.data_check"),
    Command("export", "Convert a checkpoint into a Hugging Face model directory.", "lit_sft.commands.export"),
    Command(
        "verl",
        "Run verl's SFT trainer command line (key=value overrides) with lit_sft.",
        "lit_sft.commands.verl",
    ),
)


def find_command(word: str) -> Command | None:
    """The command selected by ``word`` (the first word on the command line), if any."""
    return next((command for command in COMMANDS if command.word == word), None)


def commands_help() -> str:
    """``lit-sft --help``: the usage line and every command with its one line."""
    width = max(len(command.name) for command in COMMANDS)
    lines = ["usage: lit-sft COMMAND [options]   (lit-sft COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {command.name.ljust(width)}  {command.help}" for command in COMMANDS]
    return "\n".join(lines)


def close_process_group() -> None:
    """Leave the process group together before the interpreter exits.

    Lightning leaves the default process group alive after ``fit``. Under torchrun, a rank that reaches
    interpreter shutdown first closes its gloo/NCCL sockets while its peer's transport threads still
    read them, and the peer aborts (SIGABRT, exit code -6) although training finished. A barrier and an
    explicit ``destroy_process_group`` make every rank shut down its transport before any rank exits.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def entry_point(argv: list[str] | None = None) -> None:
    """The ``lit-sft`` console script: runs one of `COMMANDS`; without one (or with ``--help``) lists them."""
    words = sys.argv[1:] if argv is None else argv
    if not words or words[0] in ("-h", "--help"):
        print(commands_help())
        sys.exit(0 if words else 2)
    command = find_command(words[0])
    try:
        if command is not None and command.module is not None:
            configure_logging()
            importlib.import_module(command.module).main(command.word, words[1:])
        else:
            main(argv)
            close_process_group()
    except Preempted as stopped:
        print(f"lit-sft: stopped: {stopped}", file=sys.stderr)
        sys.exit(128 + int(stopped.signum))
    except Exception as error:  # only lit_sft's own errors (maybe wrapped) become one line; others re-raise
        ours = lit_sft_error_in(error)
        if ours is None:
            raise
        print(f"lit-sft: error: {ours}", file=sys.stderr)
        sys.exit(2)


def lit_sft_error_in(error: BaseException) -> LitSFTError | None:
    """``error`` itself or the lit_sft error it was raised from: jsonargparse wraps what a constructor raises
    (``model.loss_chunk_size must be positive``) in a ``ValueError`` about union subtypes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, LitSFTError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
