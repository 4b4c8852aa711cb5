"""One optimizer step under a distributed strategy, launched by torchrun; rank 0 saves loss and gradients.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed/worker.py \
        --data train.jsonl --out result.pt --strategy ddp --batch_size 2 --accumulate 2 [--lora]
"""

from __future__ import annotations

import argparse
import os
import sys
from functools import partial

import torch
from lightning.pytorch import Callback, Trainer, seed_everything

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from lit_sft import SFTDataModule, SFTModule
from lit_sft.callbacks import GSM8KEvaluation, HFExport
from lit_sft.commands.fit import close_process_group
from lit_sft.model import LoraOptions
from lit_sft.training.strategies import FSDP2Strategy
from tests.helpers import arithmetic_data, tiny_model_config


class Capture(Callback):
    def __init__(self) -> None:
        self.grads: dict[str, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, parameter in pl_module.named_parameters():
            if parameter.grad is not None:
                grad = parameter.grad
                self.grads[name] = (
                    (grad.full_tensor() if hasattr(grad, "full_tensor") else grad).detach().clone()
                )


def build(args: argparse.Namespace) -> tuple[SFTModule, SFTDataModule]:
    seed_everything(0)
    module = SFTModule(
        model_config=tiny_model_config(initializer_range=0.3),
        tokenizer_name_or_path="builtin:byte-chatml",
        lora=LoraOptions(r=4, alpha=8) if args.lora else None,
        sequence_parallel_size=getattr(args, "sequence_parallel", 1),
        attn_implementation=getattr(args, "attention", "sdpa"),
        lr_scheduler=None,
        optimizer=partial(torch.optim.SGD, lr=0.1),
    )
    data = arithmetic_data(
        args.data,
        batch_size=args.batch_size,
        shuffle=False,
        **(
            {"packing": True, "max_tokens_per_batch": 1024, "max_length": 1024}
            if getattr(args, "packing", False)
            else {}
        ),
    )
    return module, data


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--accumulate", type=int, default=2)
    parser.add_argument("--lora", action="store_true")
    parser.add_argument("--export", help="also export the trained model here (gathered from the shards)")
    parser.add_argument("--packing", action="store_true")
    parser.add_argument("--sequence_parallel", type=int, default=1)
    parser.add_argument("--attention", default="sdpa")
    parser.add_argument("--max_steps", type=int, default=1)
    parser.add_argument("--gsm8k", help="also evaluate GSM8K-style accuracy at the end, writing records here")
    args = parser.parse_args()
    torch.set_num_threads(1)
    module, data = build(args)
    capture = Capture()
    strategy = FSDP2Strategy() if args.strategy == "fsdp2" else args.strategy
    trainer = Trainer(
        accelerator="cpu",
        devices=int(os.environ.get("WORLD_SIZE", "1")),
        strategy=strategy,
        max_steps=args.max_steps,
        accumulate_grad_batches=args.accumulate,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[capture]
        + ([HFExport(dirpath=args.export)] if args.export else [])
        + (
            [
                GSM8KEvaluation(
                    data_files=args.data,
                    prompt_key="question",
                    answer_key="answer",
                    max_new_tokens=4,
                    output_dir=args.gsm8k,
                )
            ]
            if args.gsm8k
            else []
        ),
    )
    trainer.fit(module, datamodule=data)
    if trainer.global_rank == 0:
        metrics = {name: float(trainer.callback_metrics[f"train/{name}"]) for name in METRICS}
        torch.save({**metrics, "grads": capture.grads}, args.out)
    # As `lit-sft` does: every rank leaves the process group together before the interpreter exits (a rank
    # that exits with gloo's transport threads alive aborts: "terminate called without an active exception").
    close_process_group()


#: The per-step values compared across world sizes (per-token means over the step, all ranks together).
METRICS = ("loss", "token_accuracy", "entropy")


if __name__ == "__main__":
    main()
