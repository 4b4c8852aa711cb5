"""``python -m lit_sft`` is ``lit-sft``."""

from lit_sft.cli import entry_point

if __name__ == "__main__":
    entry_point()
