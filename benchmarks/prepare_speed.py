"""Dataset preparation throughput on GSM8K train (7,473 rows): lit_sft against TRL's SFTTrainer.

Both start from the same jsonl file and the same tokenizer (a byte-level BPE trained here on GSM8K, with
Qwen2.5's special tokens and ChatML template) and end with token ids and a completion-only mask; each
cold run gets a fresh ``datasets`` cache, and runs alternate. lit_sft is also timed a second time on a
warm cache (it must not tokenize again). TRL is an optional dependency: ``pip install -e ".[bench]"``.

    python benchmarks/prepare_speed.py --repeats 3 --markdown docs/benchmarks/prepare.md
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from common import GSM8K, build_bpe_tokenizer, machine, median_time, read_jsonl

from lit_sft.data import SFTDataModule

TRAIN = os.path.join(GSM8K, "train.jsonl")


def arrow_files(directory: str) -> dict[str, int]:
    """Every Arrow file under ``directory`` with its modification time: a run that reads the cache writes none."""
    return {str(path): path.stat().st_mtime_ns for path in Path(directory).rglob("*.arrow")}


def lit_sft_run(tokenizer_dir: str, cache_dir: str) -> tuple[float, int]:
    started = time.perf_counter()
    dm = SFTDataModule(
        train_files=TRAIN,
        tokenizer_name_or_path=tokenizer_dir,
        prompt_key="question",
        response_key="answer",
        max_length=None,
        cache_dir=cache_dir,
    )
    dm.setup("fit")
    return time.perf_counter() - started, dm.summaries["train"].trained_tokens


def trl_run(tokenizer, cache_dir: str) -> tuple[float, int]:
    import datasets
    from trl import SFTConfig, SFTTrainer

    started = time.perf_counter()
    raw = datasets.load_dataset("json", data_files=TRAIN, split="train", cache_dir=cache_dir)
    conversational = raw.map(
        lambda row: {
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}],
        },
        remove_columns=raw.column_names,
    )
    # The preparation SFTTrainer.__init__ runs, on an instance that only carries what it reads.
    trainer = SFTTrainer.__new__(SFTTrainer)
    trainer._tokenizer, trainer.chat_template, trainer.completion_only_loss = tokenizer, None, True
    args = SFTConfig(
        output_dir=cache_dir,
        max_length=None,
        completion_only_loss=True,
        report_to=[],
        use_cpu=True,
        bf16=False,
    )
    prepared = trainer._prepare_dataset(conversational, tokenizer, args, False, None, "train")
    seconds = time.perf_counter() - started
    trained = sum(sum(1 for label in labels[1:] if label != -100) for labels in prepared["labels"])
    return seconds, trained


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--markdown", help="write the result table here")
    parser.add_argument("--json", help="write the raw results here")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    rows = read_jsonl(TRAIN)
    work = tempfile.mkdtemp(prefix="lit_sft_bench_")
    tokenizer_dir = os.path.join(work, "tokenizer")
    tokenizer = build_bpe_tokenizer(
        [r["question"] + "\n" + r["answer"] for r in rows], directory=tokenizer_dir
    )

    counter = iter(range(10**6))
    results: dict[str, list[float]] = {"lit_sft": [], "lit_sft_warm": [], "trl": []}
    trained: dict[str, int] = {}
    for _ in range(args.repeats):  # alternate the tools, each cold run with a fresh cache
        cache = os.path.join(work, f"cache-{next(counter)}")
        seconds, trained["lit_sft"] = lit_sft_run(tokenizer_dir, cache)
        results["lit_sft"].append(seconds)
        written = arrow_files(cache)
        seconds, _ = lit_sft_run(tokenizer_dir, cache)
        assert arrow_files(cache) == written, "the warm run tokenized again"
        results["lit_sft_warm"].append(seconds)
        seconds, trained["trl"] = trl_run(tokenizer, os.path.join(work, f"cache-{next(counter)}"))
        results["trl"].append(seconds)

    median = {name: median_time(iter(runs).__next__, len(runs))[0] for name, runs in results.items()}
    rows_per_second = {name: len(rows) / seconds for name, seconds in median.items()}
    summary = {
        "machine": machine(),
        "rows": len(rows),
        "repeats": args.repeats,
        "seconds": results,
        "median_seconds": median,
        "rows_per_second": rows_per_second,
        "speedup_vs_trl": median["trl"] / median["lit_sft"],
        "trained_tokens": trained,
    }
    table = [
        f"GSM8K train ({len(rows)} rows), {machine()}, median of {args.repeats} alternating runs, from jsonl to masked token ids:",
        "",
        "| preparation | seconds | rows/s | trained tokens |",
        "| --- | ---: | ---: | ---: |",
        f"| lit_sft (cold cache) | {median['lit_sft']:.2f} | {rows_per_second['lit_sft']:,.0f} | {trained['lit_sft']:,} |",
        f"| lit_sft (warm cache: nothing tokenized) | {median['lit_sft_warm']:.2f} | {rows_per_second['lit_sft_warm']:,.0f} | {trained['lit_sft']:,} |",
        f"| TRL {__import__('trl').__version__} SFTTrainer, completion-only | {median['trl']:.2f} | {rows_per_second['trl']:,.0f} | {trained['trl']:,} |",
        "",
        f"lit_sft cold is {summary['speedup_vs_trl']:.1f}x TRL. TRL also trains the newline after each `<|im_end|>`"
        " (everything after the prompt), hence its larger trained-token count.",
    ]
    print("\n".join(table))
    if args.markdown:
        os.makedirs(os.path.dirname(os.path.abspath(args.markdown)), exist_ok=True)
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write("\n".join(table) + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(summary, handle, indent=2)


if __name__ == "__main__":
    main()
