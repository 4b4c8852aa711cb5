"""The user-facing errors of lit_sft.

One exception type per kind of user mistake. Each message says what is wrong, where (file, row, field
when there is one) and what to do. The ``lit-sft`` entry point prints these without a traceback.
"""

from __future__ import annotations


class LitSFTError(Exception):
    """Base class of every error caused by the user's input or configuration."""


class ConfigError(LitSFTError):
    """An option, or a combination of options, that cannot work."""


class DataFileError(LitSFTError):
    """A data file (or Hub dataset) that cannot be read, or lacks a column the format needs."""


class RowError(LitSFTError):
    """One row of a data file is malformed.

    Args:
        file: The file (or Hub dataset) the row comes from.
        row: The row's index in that file, counting from 0.
        field: The field inside the row, e.g. ``messages[2].content``.
        reason: What is wrong with it.
        hint: What to do about it.
    """

    def __init__(self, file: str, row: int, field: str, reason: str, hint: str = "") -> None:
        self.file, self.row, self.field, self.reason, self.hint = file, row, field, reason, hint
        message = f"{file}, row {row}, field '{field}': {reason}"
        super().__init__(f"{message}. {hint}" if hint else message)


class InvalidRow(Exception):
    """Raised by the pure per-row transforms; the caller adds the file and row to make a `RowError`.

    Args:
        field: The field inside the row.
        reason: What is wrong with it.
        kind: A short, stable name for the summary's drop counts (``invalid_content``, ``too_long``...).
    """

    def __init__(self, field: str, reason: str, kind: str = "invalid") -> None:
        self.field, self.reason, self.kind = field, reason, kind
        super().__init__(f"field '{field}': {reason}")


class TrainingError(LitSFTError):
    """Training cannot go on (for example a non-finite loss past the allowed number of skipped steps)."""
