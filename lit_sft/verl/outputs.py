"""Where a translated verl run writes: its loggers (verl's ``trainer.logger``) and the checkpoint it resumes
from (``trainer.resume_mode``); the checkpoints themselves are `lit_sft.callbacks.GlobalStepCheckpoint`'s."""

from __future__ import annotations

import os
from typing import Any

from lit_sft.callbacks.global_step import checkpoint_in, find_latest
from lit_sft.errors import ConfigError
from lit_sft.verl.overrides import VerlConfig

_LOGGERS = ("console", "wandb", "tensorboard", "file")


def loggers(config: VerlConfig, logs: str, warnings: list[str] | None = None) -> list[dict[str, Any]] | bool:
    """verl's ``trainer.logger`` list as Lightning loggers (``False`` for none), with verl's names.

    Args:
        config: The verl configuration.
        logs: The folder of CSV and TensorBoard logs (and wandb's, without ``$WANDB_DIR``).
        warnings: Where a warning about a logger that lit_sft writes differently goes.
    """
    names = config.get("trainer.logger") or []
    names = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in names if name not in _LOGGERS]
    if unknown:
        raise ConfigError(f"verl trainer.logger {unknown}: lit-sft verl supports {', '.join(_LOGGERS)}")
    project, experiment = config.get("trainer.project_name"), config.get("trainer.experiment_name")
    chosen: list[dict[str, Any]] = []
    if "file" in names and warnings is not None:
        warnings.append(
            "verl trainer.logger 'file' (a JSON line per step in $VERL_FILE_LOGGER_PATH or "
            f"<project>/<experiment>.jsonl): lit_sft writes the metrics as CSV in {logs}/csv/metrics.csv"
        )
    if (
        "console" in names or "file" in names
    ):  # the progress bar prints the step's metrics; the CSV keeps them
        chosen.append({"class_path": "lightning.pytorch.loggers.CSVLogger",
                        "init_args": {"save_dir": logs, "name": "csv", "version": ""}})  # fmt: skip
    if "tensorboard" in names:  # verl: $TENSORBOARD_DIR, else tensorboard_log/<project>/<experiment>
        chosen.append({"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                        "init_args": {"save_dir": os.environ.get("TENSORBOARD_DIR", logs), "name": "tensorboard",
                                      "version": f"{project}/{experiment}"}})  # fmt: skip
    if "wandb" in names:  # wandb writes <save_dir>/wandb; WANDB_MODE=offline works as with verl
        chosen.append({"class_path": "lightning.pytorch.loggers.WandbLogger",
                        "init_args": {"project": project, "name": experiment,
                                      "save_dir": os.environ.get("WANDB_DIR", logs)}})  # fmt: skip
    return chosen or False


def resume_from(config: VerlConfig, dirpath: str) -> str | None:
    """The checkpoint verl's ``trainer.resume_mode``/``resume_from_path`` resume from, or None.

    Args:
        config: The verl configuration.
        dirpath: ``trainer.default_local_dir``, where ``auto`` looks for the newest ``global_step_N``.
    """
    mode = config.get("trainer.resume_mode", "auto")
    path = config.get("trainer.resume_from_path")
    if mode == "disable":
        return None
    if mode not in ("auto", "resume_path"):
        raise ConfigError(f"verl key trainer.resume_mode={mode!r}: expected auto, disable or resume_path")
    if path is not None:
        if "global_step_" not in str(path) and not str(path).endswith(".ckpt"):
            raise ConfigError(
                f"trainer.resume_from_path={path!r} must name a global_step_N folder (as in verl)"
            )
        return checkpoint_in(str(path))
    if mode == "resume_path":
        raise ConfigError("trainer.resume_mode=resume_path needs trainer.resume_from_path")
    return find_latest(dirpath)
