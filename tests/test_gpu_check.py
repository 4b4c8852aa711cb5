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
