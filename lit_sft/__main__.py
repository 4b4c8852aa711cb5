"""``python -m lit_sft`` is ``lit-sft``."""

from lit_sft.commands.fit import entry_point

if __name__ == "__main__":
    entry_point()
