"""``lit-sft export --ckpt … --out …``: a Lightning checkpoint of ``lit-sft fit`` as a Hugging Face model
directory (`lit_sft.inference.export.export_checkpoint`)."""

from __future__ import annotations

from lit_sft.inference.export import export_checkpoint


def main(command: str, args: list[str]) -> None:
    """``lit-sft export --ckpt … --out …`` through jsonargparse (options and help from the signature)."""
    from jsonargparse import CLI

    CLI(export_checkpoint, args=args, prog="lit-sft export", as_positional=False)
