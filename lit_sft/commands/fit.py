"""The ``lit-sft`` command: ``lit-sft fit --config …`` and ``lit-sft validate --config … --ckpt_path …``.

A `LightningCLI` over `SFTModule` and `SFTDataModule` (or subclasses named by ``class_path``). The
model's tokenizer settings are linked into the data module so that they always agree. ``main(args)``
runs it in-process (notebooks, tests); ``entry_point()`` is the console script, which prints lit_sft's
errors as one clear line instead of a traceback.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from jsonargparse import lazy_instance
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.loggers import CSVLogger

from lit_sft.callbacks import RunSummary
from lit_sft.callbacks.preemption import Preempted, Preemption
from lit_sft.data import SFTDataModule
from lit_sft.errors import LitSFTError
from lit_sft.model import SFTModule
from lit_sft.training.preflight import preflight

log = logging.getLogger("lit_sft")


def _first_set(*values: Any) -> Any:
    return next((value for value in values if value is not None), None)


class SFTCLI(LightningCLI):
    """LightningCLI with the ``fit`` and ``validate`` subcommands and lit_sft's argument links."""

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {
            "fit": {"model", "train_dataloaders", "val_dataloaders", "datamodule"},
            "validate": {"model", "dataloaders", "datamodule"},
        }

    def before_fit(self) -> None:
        preflight(self.trainer, self.model, self.datamodule)

    def before_validate(self) -> None:
        preflight(self.trainer, self.model, self.datamodule)

    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.link_arguments(
            ("model.init_args.tokenizer_name_or_path", "model.init_args.model_name_or_path"),
            "data.init_args.tokenizer_name_or_path",
            compute_fn=_first_set,
        )
        parser.link_arguments("model.init_args.chat_template", "data.init_args.chat_template")
        parser.link_arguments("model.init_args.trust_remote_code", "data.init_args.trust_remote_code")


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
            "callbacks": [RunSummary(), Preemption()],
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


#: Commands besides LightningCLI's fit/validate: name -> (module, function taking the remaining args).
COMMANDS = {
    "evaluate": "lit_sft.commands.evaluate",
    "generate": "lit_sft.commands.evaluate",
    "prepare": "lit_sft.commands.prepare",
    "data": "lit_sft.commands.data_check",
    "export": "lit_sft.inference.export",
    "verl": "lit_sft.commands.verl",
}


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
    """The ``lit-sft`` console script: ``fit``/``validate`` (LightningCLI), ``evaluate``, ``generate``."""
    words = sys.argv[1:] if argv is None else argv
    try:
        if words and words[0] in COMMANDS:
            configure_logging()
            import importlib

            importlib.import_module(COMMANDS[words[0]]).main(words[0], words[1:])
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
