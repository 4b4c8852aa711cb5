"""``lit-sft export --ckpt … --out …``: a Lightning checkpoint of ``lit-sft fit`` as a Hugging Face model
directory (`lit_sft.inference.export.export_checkpoint`); ``lit-sft export --model … --out …``: a ``.gguf``
file (dequantized) or model directory as one (`lit_sft.inference.export.export_model`)."""

from __future__ import annotations

from lit_sft.inference.export import export_checkpoint, export_model


def main(command: str, args: list[str]) -> None:
    """``lit-sft export --ckpt … --out …`` or ``--model … --out …`` through jsonargparse (options and help
    from the signatures)."""
    from jsonargparse import CLI

    function = export_model if any(arg.split("=")[0] == "--model" for arg in args) else export_checkpoint
    CLI(function, args=args, prog="lit-sft export", as_positional=False)
