"""Compatibility: the CLI moved to `lit_sft.commands.fit`; configs, notebooks and scripts that name
``lit_sft.cli`` keep working."""

from lit_sft.commands.fit import SFTCLI, entry_point, main

__all__ = ["SFTCLI", "entry_point", "main"]
