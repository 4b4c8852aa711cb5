"""Padding waste on GSM8K, padded versus packed, and CPU training throughput of both.

Padding waste: the fraction of the tokens a micro-batch computes on that are padding, at max_length 1024
and 2048, for shuffled batches padded to their longest row, batches padded to max_length, and packed
sequences (padding-free). Throughput: the quickstart's tiny model trained on GSM8K rows (tokenized with a
BPE tokenizer built here) with padded micro-batches of 8 rows and with packed micro-batches of the same
number of tokens on average; trained and real (non-padding) tokens per second, measured over the steps
after a warm-up, alternating the two settings.

    python benchmarks/packing.py --markdown docs/benchmarks/packing.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from functools import partial

import numpy as np
import torch
from common import GSM8K, build_bpe_tokenizer, fit_and_time, machine, read_jsonl
from lightning.pytorch import seed_everything

from lit_sft import SFTDataModule, SFTModule
from lit_sft.data.grouping import fixed_size_batches, pack_best_fit_decreasing, padding_fraction

TINY = {
    "model_type": "qwen2",
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": True,
}


def train_throughput(tokenizer_dir: str, data_kwargs: dict, steps: int, warmup: int) -> dict[str, float]:
    seed_everything(0)
    module = SFTModule(
        model_config=TINY, tokenizer_name_or_path=tokenizer_dir, optimizer=partial(torch.optim.AdamW, lr=1e-3)
    )
    data = SFTDataModule(
        train_files=os.path.join(GSM8K, "train.jsonl"),
        tokenizer_name_or_path=tokenizer_dir,
        prompt_key="question",
        response_key="answer",
        **{"max_length": 1024, **data_kwargs},
    )
    return fit_and_time(module, data, steps, warmup, accelerator="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--markdown")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    rows = read_jsonl(os.path.join(GSM8K, "train.jsonl"))
    tokenizer_dir = os.path.join(tempfile.mkdtemp(prefix="lit_sft_bench_"), "tokenizer")
    build_bpe_tokenizer([r["question"] + "\n" + r["answer"] for r in rows], directory=tokenizer_dir)
    probe = SFTDataModule(
        train_files=os.path.join(GSM8K, "train.jsonl"),
        tokenizer_name_or_path=tokenizer_dir,
        prompt_key="question",
        response_key="answer",
        max_length=None,
    )
    probe.setup("fit")
    lengths = np.asarray(probe.train_dataset.with_format("numpy")[:]["num_tokens"])
    order = np.random.default_rng(0).permutation(len(lengths))

    lines = [
        f"GSM8K train ({len(lengths)} rows; tokens per row: mean {lengths.mean():.0f}, max {lengths.max()}), {machine()}.",
        "",
        "| max_length | padded to the longest row (8 rows/batch) | padded to max_length | packed (padding-free) | packed sequences filled |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for max_length in (1024, 2048):
        batches = fixed_size_batches(order, 8)
        dynamic = padding_fraction(lengths, batches)
        static = 1 - lengths.sum() / (len(lengths) * max_length)
        packs = pack_best_fit_decreasing(lengths, max_length)
        fill = lengths.sum() / (len(packs) * max_length)
        lines.append(f"| {max_length} | {dynamic:.1%} | {static:.1%} | 0.0% | {fill:.1%} |")

    budget = int(8 * lengths.mean())
    settings = {
        "padded, 8 rows per micro-batch": {"batch_size": 8},
        f"packed, {budget}-token sequences (8 rows on average)": {
            "packing": True,
            "max_tokens_per_batch": budget,
        },
        "packed, 512-token sequences": {"packing": True, "max_tokens_per_batch": 512, "max_length": 512},
        f"length-grouped padded batches of <= {budget} tokens": {"max_tokens_per_batch": budget},
    }
    results: dict[str, list[dict]] = {name: [] for name in settings}
    for _ in range(args.repeats):
        for name, kwargs in settings.items():
            results[name].append(train_throughput(tokenizer_dir, kwargs, args.steps, args.warmup))
    lines += [
        "",
        f"Training the quickstart's 0.8M-parameter model on it (max_length 1024, fp32, {args.steps} steps after "
        f"{args.warmup} warm-up steps, median of {args.repeats} alternating runs):",
        "",
        "| micro-batches | real tokens/s | trained tokens/s | step time |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        tokens = statistics.median(r["tokens_per_second"] for r in runs)
        trained = statistics.median(r["trained_tokens_per_second"] for r in runs)
        step = statistics.median(r["step_seconds"] for r in runs)
        lines.append(f"| {name} | {tokens:,.0f} | {trained:,.0f} | {step * 1000:.0f} ms |")
    print("\n".join(lines))
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
