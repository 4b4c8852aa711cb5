"""``lit-sft verl [OVERRIDES...]``: verl's SFT command line, run by lit_sft.

The same ``key=value`` overrides as ``python -m verl.trainer.fsdp_sft_trainer`` (legacy keys) or
``python -m verl.trainer.sft_trainer`` (engine keys), ``+key=value``, ``~key``, and ``--config-path DIR
--config-name NAME`` for a verl ``sft_trainer.yaml``, on top of verl's defaults. The configuration is
translated into a native LightningCLI config and run by ``lit-sft fit``; ``--print-lightning-config``
prints that config instead, and ``lit-sft fit --config`` runs the printed file identically. Several
processes: ``torchrun --nproc_per_node N -m lit_sft verl ...``.

Flags of its own: ``--log-dir DIR`` (CSV/TensorBoard logs, and wandb without ``$WANDB_DIR``; default
``<trainer.default_local_dir>/logs``).
"""

from __future__ import annotations

import logging
import os
import sys

import yaml

from lit_sft.verl.overrides import load, read_config_file, split_command_line
from lit_sft.verl.translate import Launch, Translation, translate

log = logging.getLogger("lit_sft")


def build(words: list[str], launch: Launch | None = None) -> Translation:
    """The native config of a ``lit-sft verl`` command line (without running it).

    Args:
        words: The words after ``lit-sft verl``.
        launch: The process layout; detected from torchrun's environment when None.
    """
    line = split_command_line(words)
    config = load(line.overrides, read_config_file(line.config_path, line.config_name))
    return translate(config, launch or Launch.detect(), line.log_dir)


def lightning_yaml(translation: Translation) -> str:
    """The native config as YAML text, headed by the command that runs it."""
    header = "# lit-sft fit --config THIS_FILE   (written by lit-sft verl --print-lightning-config)\n"
    return header + yaml.safe_dump(translation.config, sort_keys=False)


USAGE = (
    "usage: lit-sft verl [KEY=VALUE | +KEY=VALUE | ~KEY ...] [--config-path DIR --config-name NAME] "
    "[--print-lightning-config] [--log-dir DIR]"
)


def main(name: str, words: list[str]) -> None:
    """Run (or with ``--print-lightning-config``, print) a verl SFT command line.

    Args:
        name: The command name (``verl``).
        words: verl's overrides and the flags above.
    """
    if words and words[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + (__doc__ or ""))
        raise SystemExit(0)
    translation = build(words)
    if os.environ.get("RANK", "0") == "0":
        for warning in translation.warnings:
            log.warning(f"lit-sft verl: warning: {warning}")
        for note in translation.notes:
            log.info(f"lit-sft verl: {note}")
    if "--print-lightning-config" in words:
        sys.stdout.write(lightning_yaml(translation))
        return
    from lit_sft.commands import fit

    # The YAML text goes in as --config, exactly as `lit-sft fit --config printed.yaml` reads it; sys.argv
    # holds verl's words, which LightningCLI would otherwise warn about next to ``args``.
    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        fit.main(["fit", "--config", lightning_yaml(translation)])
    finally:
        sys.argv = argv
    fit.close_process_group()


__all__ = ["build", "lightning_yaml", "main"]
