"""The GPU check (benchmarks/gpu_check.py): its report from results, and its --cpu-smoke run end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)

import gpu_check  # noqa: E402

ENVIRONMENT = {"device": "NVIDIA H200", "torch": "2.11.0", "transformers": "5.17.0", "varlen_attn": True,
               "flash_attn": False, "liger_kernel": True, "trl": True, "cuda": True}  # fmt: skip


def run(trained: float, memory_mb: float = 2048.0, mfu: float | None = 0.42) -> dict:
    return {"trained_tokens_per_second": trained, "tokens_per_second": 2 * trained, "step_seconds": 0.5,
            "peak_memory_mb": memory_mb, "loss": 9.0, **({"mfu": mfu} if mfu else {})}  # fmt: skip


def test_the_report_compares_with_trls_best_and_says_what_did_not_run() -> None:
    results = {
        "environment": ENVIRONMENT,
        "throughput": {
            "1.5b": {
                "lit_sft, packed, varlen": run(26000.0),
                "lit_sft, packed, varlen + compile": {"skipped": "out of time"},
                "TRL SFTTrainer, default (padded)": run(10000.0),
                "TRL SFTTrainer, packing (BFD, padding-free)": run(20000.0),
            }
        },
        "gsm8k": {"questions": 1319, "seconds": 41.0},
        "longest": {
            "gradient checkpointing": {"longest_tokens": 131072, "peak_memory_gb": 60.5, "limit": 1 << 20}
        },
    }
    text = gpu_check.report(results, smoke=False)
    assert "| lit_sft, packed, varlen | 26,000 | 52,000 | 500 ms | 2.0 GiB | 42.0% | 1.30x |" in text
    assert "| lit_sft, packed, varlen + compile | not run: out of time |" in text
    assert "| gradient checkpointing | 131,072 tokens | 60.5 GB |" in text
    assert "packed-attention kernel: torch varlen_attn" in text and "flash-attn absent" in text
    assert "TRL's best trained tokens/s at <= its peak memory: met (1.30x)" in text
    assert "MFU >= 40%: met (42.0%)" in text
    assert "of the ideal (no padding) real tokens/s: not measured" in text
    assert "in < 60 s at the 0.5B shape: met (41.0 s)" in text
    results["throughput"]["1.5b"]["lit_sft, packed, varlen"] = run(26000.0, memory_mb=4096.0)  # more memory
    assert "at <= its peak memory: missed (n/a)" in gpu_check.report(results, smoke=False)


def test_what_cannot_run_here_is_named() -> None:
    cpu = {**ENVIRONMENT, "cuda": False, "trl": False, "liger_kernel": False}
    assert gpu_check.skip_reason("TRL SFTTrainer, default (padded)", cpu, smoke=True) == "trl not installed"
    assert "CUDA" in gpu_check.skip_reason("lit_sft, packed, varlen + Liger", cpu, smoke=True)
    assert gpu_check.skip_reason("lit_sft, packed, varlen + compile", cpu, smoke=True)
    assert gpu_check.skip_reason("lit_sft, packed, varlen + compile", ENVIRONMENT, smoke=False) is None
    assert gpu_check.skip_reason("lit_sft, packed, varlen", cpu, smoke=True) is None


@pytest.mark.slow
def test_the_cpu_smoke_run_goes_through_every_step(tmp_path) -> None:
    """Minutes on two cores: every throughput configuration that can run on CPU, GSM8K generation and the
    longest-sequence search, with tiny shapes, and the report."""
    out = str(tmp_path / "gpu")
    env = {**os.environ, "PYTHONPATH": os.path.abspath(os.path.join(BENCHMARKS, ".."))}
    done = subprocess.run(
        [sys.executable, os.path.join(BENCHMARKS, "gpu_check.py"), "--cpu-smoke", "--out", out],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    with open(out + ".json", encoding="utf-8") as handle:
        results = json.load(handle)
    runs = results["throughput"]["smoke"]
    assert set(runs) == set(gpu_check.LIT_SFT_CONFIGS + gpu_check.TRL_CONFIGS)
    for name, result in runs.items():
        expected_skip = gpu_check.skip_reason(name, results["environment"], smoke=True)
        assert ("skipped" in result) == (expected_skip is not None), (name, result)
        if expected_skip is None:
            assert result["trained_tokens_per_second"] > 0 and result["tokens_per_second"] > 0, name
    assert results["gsm8k"].get("questions") == 8, results["gsm8k"]
    for label, result in results["longest"].items():
        assert result["longest_tokens"] >= 64, label
    assert os.path.getsize(out + ".png") > 0
    with open(out + ".md", encoding="utf-8") as handle:
        assert "CPU smoke run: not a measurement" in handle.read()


# --- benchmarks/gpu_prepare.sh and its pins (benchmarks/gpu_carry.txt) ---------------------------------------

ROOT = os.path.abspath(os.path.join(BENCHMARKS, ".."))
FAKE_PYTHON = """#!/usr/bin/env bash
# A python3 that has pip but none of the carried packages: 'pip show' finds nothing; 'pip download' records the
# pin it was asked for and writes an empty wheel, or fails for the pin named in NO_WHEEL.
[ "$1 $2" = "-m pip" ] || exit 3
case "$3" in
  --version) echo "pip 0.0 (fake)";;
  show) exit 1;;
  download)
    pin="${@: -1}"; dest=""; previous=""
    for arg in "$@"; do [ "$previous" = "-d" ] && dest=$arg; previous=$arg; done
    echo "$pin" >>"$DOWNLOADS"
    [ "$pin" = "${NO_WHEEL:-}" ] && { echo "ERROR: No matching distribution found for $pin" >&2; exit 1; }
    touch "$dest/${pin%%==*}-${pin##*==}-py3-none-any.whl";;
  *) exit 3;;
esac
"""


def carry_pins() -> list[str]:
    with open(os.path.join(BENCHMARKS, "gpu_carry.txt"), encoding="utf-8") as handle:
        lines = (line.split("#", 1)[0].strip() for line in handle)
        return [line for line in lines if line]


def run_prepare(
    tmp_path, gsm8k_files=("train.jsonl", "test.jsonl"), **env: str
) -> subprocess.CompletedProcess:
    bin_dir, gsm8k = tmp_path / "bin", tmp_path / "gsm8k"
    bin_dir.mkdir()
    gsm8k.mkdir()
    (bin_dir / "python3").write_text(FAKE_PYTHON)
    (bin_dir / "python3").chmod(0o755)
    for name in gsm8k_files:
        (gsm8k / name).write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    environment = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOWNLOADS": str(tmp_path / "asked"),
                   "GPU_CARRY": str(tmp_path / "carry"), "LIT_SFT_GSM8K": str(gsm8k), **env}  # fmt: skip
    return subprocess.run(["bash", os.path.join(BENCHMARKS, "gpu_prepare.sh")], capture_output=True, text=True,
                          env=environment, timeout=60)  # fmt: skip


def test_prepare_takes_its_pins_from_the_committed_list_not_from_the_python_running_it(tmp_path) -> None:
    done = run_prepare(tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "asked").read_text().split() == carry_pins()
    assert len(os.listdir(tmp_path / "carry" / "wheels")) == len(carry_pins())
    assert sorted(os.listdir(tmp_path / "carry" / "gsm8k")) == ["test.jsonl", "train.jsonl"]


def test_prepare_says_which_pin_has_no_wheel_and_which_file_is_missing(tmp_path) -> None:
    done = run_prepare(tmp_path, NO_WHEEL="trl==1.16.0")
    assert done.returncode != 0
    assert "no wheel of trl==1.16.0 for Python 3.12" in done.stderr
    assert "No matching distribution found for trl==1.16.0" in done.stderr
    (tmp_path / "again").mkdir()
    done = run_prepare(tmp_path / "again", gsm8k_files=("train.jsonl",))
    assert done.returncode != 0 and "test.jsonl is missing" in done.stderr, done.stderr


def test_the_carried_pins_are_exact_and_the_tested_versions_unless_a_reason_is_given() -> None:
    with open(os.path.join(ROOT, "requirements", "tested.txt"), encoding="utf-8") as handle:
        tested = {}
        for line in handle:
            if "==" in line and not line.startswith("#"):
                name, version = line.split("#", 1)[0].strip().split("==")
                tested[name.lower().replace("_", "-")] = version
    with open(os.path.join(BENCHMARKS, "gpu_carry.txt"), encoding="utf-8") as handle:
        lines = [line for line in handle if line.split("#", 1)[0].strip()]
    names = []
    for line in lines:
        pin, _, reason = line.partition("#")
        name, version = pin.strip().split("==")
        names.append(name.lower().replace("_", "-"))
        if tested.get(names[-1]) != version:
            assert "tested:" in reason, f"{pin.strip()} differs from requirements/tested.txt without a reason"
    assert len(set(names)) == len(names), "one version of each: two stop the device's whole install"
    # What the device lacks and lit_sft or the check imports.
    assert {"datasets", "jsonargparse", "omegaconf", "dill", "multiprocess", "trl"} <= set(names)
