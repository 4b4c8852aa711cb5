"""The GPU check: one run on one H100/H200 without internet (about 9 minutes) that measures lit_sft there.

1. the environment (PyTorch, which packed-attention kernel it has, flash-attn, Liger, TRL);
2. training throughput (`train_vs_trl.py`, one process per configuration): lit_sft padded, length-grouped,
   packed with SDPA, packed with ``varlen`` (± compile, ± Liger, ± gradient checkpointing), the ideal (full
   rows, no padding), and TRL's SFTTrainer (default, group_by_length, packing) on the 0.5B and 1.5B presets
   at 2,048 tokens: trained tokens/s, real tokens/s, peak memory, MFU;
3. GSM8K evaluation speed: 1,319 questions, greedy, 256 new tokens, at the 0.5B shape;
4. the longest single sequence that trains (forward and backward) at the 1.5B shape with gradient
   checkpointing, without and with activation offloading to CPU (sequence parallelism proper splits a
   sequence across GPUs and needs two or more: not measurable on one);

and writes ``docs/benchmarks/gpu.md``, ``gpu.json`` and ``gpu.png`` (also into ``$OUT`` when set). Every step
has a time limit; what does not fit is reported as not run. ``benchmarks/gpu_check.sh`` installs the carried
wheels and runs ``pytest -m gpu`` before this.

    bash benchmarks/gpu_prepare.sh               # here, with internet: wheels + GSM8K into .gpu_carry/
    bash benchmarks/gpu_check.sh                 # on the GPU machine (carry .gpu_carry)
    python benchmarks/gpu_check.py --cpu-smoke   # every step above, tiny shapes, a few iterations, on CPU
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from gpu_report import chart, report  # noqa: E402

ROOT = os.path.dirname(HERE)

LIT_SFT_CONFIGS = [
    "lit_sft, padded",
    "lit_sft, length-grouped padded",
    "lit_sft, packed, SDPA",
    "lit_sft, packed, varlen",
    "lit_sft, packed, varlen + compile",
    "lit_sft, packed, varlen + Liger",
    "lit_sft, packed, varlen + checkpointing",
    "lit_sft, ideal: full-length rows, no padding",
]
TRL_CONFIGS = [
    "TRL SFTTrainer, default (padded)",
    "TRL SFTTrainer, group_by_length",
    "TRL SFTTrainer, packing (BFD, padding-free)",
]


def has(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def environment() -> dict[str, Any]:
    import torch
    import transformers

    from lit_sft.model.attention import has_varlen_kernel

    cuda = torch.cuda.is_available()
    return {
        "device": torch.cuda.get_device_name() if cuda else "CPU",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "varlen_attn": has_varlen_kernel(),
        "flash_attn": has("flash_attn"),
        "liger_kernel": has("liger_kernel"),
        "trl": has("trl"),
        "cuda": cuda,
    }


def skip_reason(name: str, env: dict[str, Any], smoke: bool) -> str | None:
    """Why a configuration cannot run here (None: it can)."""
    if name.startswith("TRL") and not env["trl"]:
        return "trl not installed"
    if "Liger" in name and not (env["cuda"] and env["liger_kernel"]):
        return "needs CUDA and liger-kernel"
    if "compile" in name and smoke:
        return "compiling takes minutes on CPU (tests/model/test_acceleration.py covers it)"
    return None


def run(command: list[str], timeout: float, env: dict[str, str] | None = None) -> tuple[dict | None, str]:
    """Run ``command``; its last ``RESULT {json}`` line, or None and why."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=max(timeout, 1), cwd=HERE, env=env
        )
    except subprocess.TimeoutExpired:
        return None, f"over its {timeout:.0f} s limit"
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return None, "failed: " + " | ".join(tail)[-400:]
    return json.loads(lines[-1][len("RESULT ") :]), ""


class Deadline:
    """The check's time budget, shared by its steps."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def throughput(preset: str, args: argparse.Namespace, env: dict, deadline: Deadline) -> dict[str, dict]:
    sys.path.insert(0, HERE)
    import train_vs_trl

    work = tempfile.mkdtemp(prefix=f"lit_sft_gpu_{preset}_")
    model_dir, _ = train_vs_trl.prepare(work, train_vs_trl.PRESETS[preset])
    results: dict[str, dict] = {}
    for name in LIT_SFT_CONFIGS + TRL_CONFIGS:
        reason = skip_reason(name, env, args.cpu_smoke)
        if reason is None and deadline.left() < args.min_run_seconds:
            reason = "out of time"
        if reason:
            results[name] = {"skipped": reason}
            continue
        command = [
            sys.executable,
            os.path.join(HERE, "train_vs_trl.py"),
            "--single",
            name,
            "--model_dir",
            model_dir,
        ]
        command += ["--preset", preset, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        result, why = run(command, min(args.run_timeout, deadline.left()))
        results[name] = result if result is not None else {"skipped": why}
        print(preset, name, results[name], flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return results


def gsm8k_speed(args: argparse.Namespace, deadline: Deadline) -> dict:
    out = os.path.join(tempfile.mkdtemp(), "gsm8k.json")
    data = os.path.join(os.environ.get("LIT_SFT_GSM8K", ""), "test.jsonl")
    command = [sys.executable, os.path.join(HERE, "gsm8k_eval_speed.py"), "--no-stop", "--json", out]
    if os.path.exists(data):
        command += ["--data", data]
    if args.cpu_smoke:
        command += ["--model", "tiny", "--questions", "8", "--max-new-tokens", "8", "--batch-size", "8"]
    else:
        command += ["--model", "qwen2.5-0.5b", "--questions", "1319", "--max-new-tokens", "256"]
        command += ["--batch-size", "256", "--dtype", "bfloat16"]
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=max(1, min(240, deadline.left()))
        )
    except subprocess.TimeoutExpired:
        return {"skipped": "out of time"}
    if done.returncode or not os.path.exists(out):
        return {"skipped": "failed: " + done.stderr.strip()[-400:]}
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def longest_sequence(preset: str, offload: bool, start: int, limit: int, seconds: float) -> dict:
    """In this process: double a single sequence's length from ``start`` until forward + backward fails
    (out of memory) or passes ``limit``; the longest that trained and its peak memory."""
    import torch

    sys.path.insert(0, HERE)
    import train_vs_trl

    from lit_sft import SFTModule
    from lit_sft.batch import row_offsets
    from lit_sft.model.acceleration import offload_activations

    shape = dict(train_vs_trl.PRESETS[preset]["model"])
    vocabulary = shape.pop("vocab_size", 8192)
    cuda = torch.cuda.is_available()
    module = SFTModule(
        model_config={
            "model_type": "qwen2",
            **shape,
            "vocab_size": vocabulary,
            "max_position_embeddings": 2 * limit,
        },
        tokenizer_name_or_path="builtin:byte-chatml",
        attn_implementation="varlen",
        gradient_checkpointing=True,
    )
    module.configure_model()
    device = torch.device("cuda" if cuda else "cpu")
    module.model.to(device)
    best, peak, length, end = 0, 0.0, start, time.monotonic() + seconds
    while length <= limit and time.monotonic() < end:
        ids = torch.randint(0, vocabulary, (1, length), device=device)
        batch = {
            "input_ids": ids,
            "labels": ids,
            "position_ids": torch.arange(length, device=device)[None],
            "cu_seq_lens": row_offsets([length]).to(device),
            "max_row_length": length,
        }
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with (
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda),
                offload_activations(offload),
            ):
                loss_sum, count = module.compute_loss_sum(batch)
            (loss_sum / count).backward()
            module.model.zero_grad(set_to_none=True)
            best, peak = length, (torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0)
        except torch.OutOfMemoryError:
            break
        finally:
            del batch
            if cuda:
                torch.cuda.empty_cache()
        length *= 2
    return {"longest_tokens": best, "peak_memory_gb": peak, "limit": limit, "offload": offload}


def longest(args: argparse.Namespace, deadline: Deadline) -> dict[str, dict]:
    results = {}
    preset = "smoke" if args.cpu_smoke else "1.5b"
    start, limit = (64, 256) if args.cpu_smoke else (16384, 1 << 20)
    for offload in (False, True):
        label = "gradient checkpointing" + (" + activation offloading" if offload else "")
        budget = min(120.0, deadline.left())
        if budget < 20:
            results[label] = {"skipped": "out of time"}
            continue
        command = [
            sys.executable,
            __file__,
            "--longest",
            preset,
            "--start",
            str(start),
            "--limit",
            str(limit),
        ]
        command += ["--offload"] if offload else []
        result, why = run([*command, "--seconds", str(budget - 15)], budget)
        results[label] = result if result is not None else {"skipped": why}
        print(label, results[label], flush=True)
    return results


def smoke_gsm8k() -> str:
    """A directory with the first 160 GSM8K train and 16 test rows (the smoke run tokenizes them many times)."""
    sys.path.insert(0, HERE)
    from common import GSM8K

    directory = tempfile.mkdtemp(prefix="lit_sft_gsm8k_")
    for name, count in (("train.jsonl", 160), ("test.jsonl", 16)):
        with open(os.path.join(GSM8K, name), encoding="utf-8") as source:
            lines = [next(source) for _ in range(count)]
        with open(os.path.join(directory, name), "w", encoding="utf-8") as target:
            target.writelines(lines)
    return directory


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="every step with tiny shapes on CPU")
    parser.add_argument("--budget", type=float, default=360, help="seconds for all steps together")
    parser.add_argument("--steps", type=int, default=8, help="timed optimizer steps per throughput run")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--run-timeout", type=float, default=90, help="seconds one throughput run may take")
    parser.add_argument("--min-run-seconds", type=float, default=25)
    parser.add_argument("--presets", nargs="*", default=["1.5b", "0.5b"])
    parser.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks", "gpu"))
    parser.add_argument("--longest", help=argparse.SUPPRESS)
    parser.add_argument("--offload", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--start", type=int, default=16384, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, default=1 << 20, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=100, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.longest:
        print(
            "RESULT "
            + json.dumps(longest_sequence(args.longest, args.offload, args.start, args.limit, args.seconds))
        )
        return
    if args.cpu_smoke:
        args.presets, args.steps, args.warmup = ["smoke"], 2, 1
        args.min_run_seconds, args.run_timeout = 1, 300
        args.budget = max(args.budget, 1800)
        os.environ["LIT_SFT_GSM8K"] = smoke_gsm8k()
    deadline = Deadline(args.budget)
    results: dict[str, Any] = {"environment": environment(), "throughput": {}}
    print(results["environment"], flush=True)
    # The goals first (1.5B throughput, GSM8K speed), then the rest, so that a short budget drops the rest.
    first, *others = args.presets
    results["throughput"][first] = throughput(first, args, results["environment"], deadline)
    results["gsm8k"] = gsm8k_speed(args, deadline)
    results["longest"] = longest(args, deadline)
    for preset in others:
        results["throughput"][preset] = throughput(preset, args, results["environment"], deadline)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out + ".json", "w", encoding="utf-8") as handle:
        json.dump(results, handle, indent=1)
    with open(args.out + ".md", "w", encoding="utf-8") as handle:
        handle.write(report(results, args.cpu_smoke))
    chart(results, args.out + ".png")
    print(report(results, args.cpu_smoke))
    if os.environ.get("OUT"):  # the device tool brings back what is written there
        for suffix in (".md", ".json", ".png"):
            shutil.copy(args.out + suffix, os.environ["OUT"])


if __name__ == "__main__":
    main()
