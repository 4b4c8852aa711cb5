"""The GPU check (benchmarks/gpu_check.*): the probe first, steps that cannot lose what was measured, budgets
that fit one device command, the report from the results file alone, the carried wheels, the --cpu-smoke run."""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import signal
import subprocess
import sys
import time

import pytest

BENCHMARKS = os.path.join(os.path.dirname(__file__), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)

import gpu_check  # noqa: E402

PYTHON = sys.executable


def write(results: str, record: dict) -> str:
    """A step's command that appends ``record`` to the check's results file (as gpu_check.record does)."""
    return (
        f"import json, os; open(os.environ['GPU_CHECK_RESULTS'], 'a').write(json.dumps({record!r}) + '\\n')"
    )


def statuses(results: str) -> dict[str, dict]:
    return {r["step"]: r for r in gpu_check.read_results(results) if r["kind"] == "step"}


def test_the_probe_is_recorded_before_any_step_runs(tmp_path) -> None:
    results = str(tmp_path / "gpu_results.jsonl")
    for smoke in (False, True):
        assert gpu_check.plan(smoke, str(tmp_path))[0].name == "probe"
    probe = gpu_check.plan(False, str(tmp_path))[0]
    crash = gpu_check.Step("crash", 30, (PYTHON, "-c", "raise SystemExit(3)"))
    gpu_check.run_plan([probe, crash], results)
    kinds = [(r["kind"], r.get("step")) for r in gpu_check.read_results(results)]
    assert kinds == [("plan", None), ("probe", "probe"), ("step", "probe"), ("step", "crash")]
    found = gpu_check.read_results(results)[1]
    import torch

    assert found["python"] == platform.python_version() and found["libc"] == " ".join(platform.libc_ver())
    assert found["packages"]["torch"] == importlib.metadata.version("torch")
    assert found["cuda"] is None and not torch.cuda.is_available()
    assert set(found["packages"]) >= {"torch", "transformers", "huggingface_hub", "lightning", "peft", "datasets",
                                      "pyarrow", "triton"}  # fmt: skip
    has_varlen = importlib.util.find_spec("torch.nn.attention.varlen") is not None
    assert str(found["varlen_attn"]).startswith("varlen_attn(") == has_varlen, found["varlen_attn"]
    assert "c_compiler" in found and "nvcc" in found


def test_a_step_that_raises_or_overruns_is_killed_named_and_loses_nothing(tmp_path) -> None:
    results = str(tmp_path / "gpu_results.jsonl")
    steps = [
        gpu_check.Step("first", 30, (PYTHON, "-c", write(results, {"kind": "gsm8k", "seconds": 41.0}))),
        gpu_check.Step("raises", 30, (PYTHON, "-c", "raise ValueError('boom in the step')")),
        gpu_check.Step("after it", 30, (PYTHON, "-c", "pass"), needs="raises"),
        gpu_check.Step("hangs", 2, (PYTHON, "-c", write(results, {"kind": "longest", "label": "x", "tokens": 64,
                                                          "peak_memory_gb": 1.0}) + "; import time; time.sleep(60)")),
        gpu_check.Step("last", 30, (PYTHON, "-c", write(results, {"kind": "gsm8k", "seconds": 40.0}))),
    ]  # fmt: skip
    gpu_check.run_plan(steps, results)
    found = statuses(results)
    assert found["first"]["status"] == "ok" and found["last"]["status"] == "ok"
    assert found["raises"]["status"] == "failed"
    assert "ValueError: boom in the step" in found["raises"]["reason"]
    assert found["after it"] == {**found["after it"], "status": "skipped",
                                 "reason": "needs 'raises', which did not complete"}  # fmt: skip
    assert found["hangs"]["status"] == "timed out" and "over its 2 s budget" in found["hangs"]["reason"]
    assert found["hangs"]["seconds"] < 30  # killed at its budget, not waited for
    records = gpu_check.read_results(results)
    assert [r["seconds"] for r in records if r["kind"] == "gsm8k"] == [41.0, 40.0]
    assert [r["tokens"] for r in records if r["kind"] == "longest"] == [
        64
    ]  # what the killed step recorded stays


def test_a_signal_to_the_check_kills_the_running_step_and_is_recorded(tmp_path) -> None:
    """Steps run in their own sessions: without the check passing a SIGTERM on, a step would outlive it."""
    results = str(tmp_path / "gpu_results.jsonl")
    sleeper = write(results, {"kind": "pid"}).replace(
        "{'kind': 'pid'}", "{'kind': 'pid', 'pid': os.getpid()}"
    )
    command = (PYTHON, "-c", sleeper + "; import time; time.sleep(120)")
    check = subprocess.Popen(
        [
            PYTHON,
            "-c",
            f"import sys; sys.path.insert(0, {BENCHMARKS!r}); import gpu_check; "
            f"gpu_check.run_plan([gpu_check.Step('sleeps', 120, {command!r})], {results!r})",
        ]
    )

    def recorded() -> bool:
        return os.path.exists(results) and any(r["kind"] == "pid" for r in gpu_check.read_results(results))

    deadline = time.monotonic() + 60
    while not recorded():
        assert time.monotonic() < deadline and check.poll() is None
        time.sleep(0.2)
    pid = next(r["pid"] for r in gpu_check.read_results(results) if r["kind"] == "pid")
    check.send_signal(signal.SIGTERM)
    try:
        assert check.wait(timeout=30) != 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the step's process is gone
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)  # a failing run leaves no sleeper behind
    found = statuses(results)["sleeps"]
    assert found["status"] == "interrupted" and found["reason"] == "the check received SIGTERM"


def test_a_step_that_would_overrun_the_whole_check_is_skipped_and_named(tmp_path) -> None:
    results = str(tmp_path / "gpu_results.jsonl")
    steps = [gpu_check.Step("quick", 1, (PYTHON, "-c", "pass")),
             gpu_check.Step("long", 100, (PYTHON, "-c", "pass"))]  # fmt: skip
    gpu_check.run_plan(steps, results, total_budget=20)
    found = statuses(results)
    assert found["quick"]["status"] == "ok"
    assert (
        found["long"]["status"] == "skipped"
        and "would overrun the check: needs 100 s" in found["long"]["reason"]
    )


def test_a_step_whose_package_is_missing_is_skipped_and_named_not_run(tmp_path) -> None:
    results = str(tmp_path / "gpu_results.jsonl")
    ran = tmp_path / "ran"
    steps = [
        gpu_check.Step("trl", 5, (PYTHON, "-c", f"open({str(ran)!r}, 'w')"), requires="no_such_package_x")
    ]
    gpu_check.run_plan(steps, results, total_budget=20)
    found = statuses(results)["trl"]
    assert found["status"] == "skipped" and "'no_such_package_x', which is not installed" in found["reason"]
    assert not ran.exists()
    smoke = {s.name: s for s in gpu_check.plan(True, str(tmp_path))}
    assert smoke[f"throughput smoke: {gpu_check.TRL_PACKED}"].requires == "trl"
    assert smoke[f"throughput smoke: {gpu_check.PACKED}"].requires is None


def test_the_steps_fit_one_device_command_most_valuable_first(tmp_path) -> None:
    for smoke in (False, True):
        steps = gpu_check.plan(smoke, str(tmp_path))
        names = [step.name for step in steps]
        assert sum(step.budget for step in steps) <= gpu_check.TOTAL_BUDGET <= 540, smoke
        assert all(step.budget > 0 for step in steps) and len(set(names)) == len(names)
        assert names[:2] == ["probe", "gsm8k"] and names[-1] == "gpu tests: compile-heavy"
        assert names.index("longest") < names.index("gpu tests")
        assert all(step.needs in names[: names.index(step.name)] for step in steps if step.needs)
    names = [step.name for step in gpu_check.plan(False, str(tmp_path))]
    for preset in ("1.5b", "0.5b"):
        for config in (gpu_check.PACKED, gpu_check.PADDED, gpu_check.TRL_PACKED, gpu_check.TRL_PADDED):
            assert f"throughput {preset}: {config}" in names
    assert (
        names.index(f"throughput 1.5b: {gpu_check.IDEAL}")
        < names.index("longest")
        < names.index("prepare 0.5b")
    )


def test_every_planned_step_names_a_step_the_check_can_run(tmp_path) -> None:
    import train_vs_trl

    for smoke in (False, True):
        for step in gpu_check.plan(smoke, str(tmp_path)):
            assert step.command[step.command.index("--step") + 1] == step.name
            function, arguments = gpu_check.dispatch(step.name)
            if function in ("prepare", "throughput"):
                assert arguments[0] in train_vs_trl.PRESETS, step.name
            if function == "throughput":
                assert arguments[1] in train_vs_trl.CONFIGS, step.name
    with pytest.raises(SystemExit, match=r"unknown step .throughput 1\.5b."):
        gpu_check.dispatch("throughput 1.5b")


def throughput(config: str, trained: float, memory_mb: float = 2048.0, mfu: float | None = 0.42) -> dict:
    return {"kind": "throughput", "preset": "1.5b", "config": config, "trained_tokens_per_second": trained,
            "tokens_per_second": 2 * trained, "step_seconds": 0.5, "peak_memory_mb": memory_mb, "loss": 9.0,
            **({"mfu": mfu} if mfu else {})}  # fmt: skip


RECORDS = [
    {"kind": "plan", "total_budget": 540, "smoke": False,
     "steps": [{"name": n, "budget": 30} for n in ("probe", "gsm8k", "throughput", "longest", "gpu tests")]},
    {"kind": "probe", "python": "3.12.3", "libc": "glibc 2.39", "packages": {"torch": "2.11.0+cu130", "datasets": None},
     "varlen_attn": "varlen_attn(query, key, value, cu_seq_q)", "c_compiler": "/usr/bin/cc", "nvcc": None,
     "cpu_count": 16, "cuda": {"name": "NVIDIA H200", "memory_gib": 139.8, "capability": "9.0", "cuda": "13.0"}},
    {"kind": "step", "step": "probe", "status": "ok", "seconds": 4.0},
    {"kind": "gsm8k", "questions": 1319, "seconds": 41.0},
    {"kind": "step", "step": "gsm8k", "status": "ok", "seconds": 70.0},
    throughput(gpu_check.PACKED, 26000.0),
    throughput(gpu_check.TRL_PADDED, 10000.0),
    throughput(gpu_check.TRL_PACKED, 20000.0),
    {"kind": "step", "step": "throughput", "status": "timed out", "seconds": 30.0, "reason": "over its 30 s budget"},
    {"kind": "longest", "label": "gradient checkpointing", "tokens": 131072, "peak_memory_gb": 60.5, "seconds": 3},
]  # fmt: skip


def test_the_report_is_derived_from_the_results_file_alone(tmp_path) -> None:
    import gpu_report

    results = tmp_path / "gpu_results.jsonl"
    results.write_text(
        "".join(json.dumps(r) + "\n" for r in RECORDS) + '{"kind": "longest", "lab'
    )  # cut short
    gpu_report.main([str(results)])
    text = (tmp_path / "gpu_report.md").read_text()
    assert (tmp_path / "gpu_report.png").stat().st_size > 0
    assert (
        "NVIDIA H200 (139.8 GiB, capability 9.0, CUDA 13.0); Python 3.12.3 (glibc 2.39); torch 2.11.0+cu130, datasets absent"
        in text
    )
    assert "`varlen_attn`: varlen_attn(query, key, value, cu_seq_q). C compiler: /usr/bin/cc" in text
    assert "| lit_sft, packed, varlen | 26,000 | 52,000 | 500 ms | 2.0 GiB | 42.0% | 1.30x |" in text
    assert "TRL's best trained tokens/s at <= its peak memory: met (1.30x)" in text
    assert "MFU >= 40%: met (42.0%)" in text
    assert "of the ideal (no padding) real tokens/s: not measured" in text
    assert "in < 60 s at the 0.5B shape: met (41.0 s)" in text
    assert "| throughput | 30 s | timed out | 30.0 s | over its 30 s budget |" in text
    assert "| longest | 30 s | not reached (the check stopped before it) |" in text
    assert "| gradient checkpointing | 131,072 | 60.5 GB | 3.0 s |" in text
    more_memory = [throughput(gpu_check.PACKED, 26000.0, memory_mb=4096.0) if r.get("config") == gpu_check.PACKED
                   else r for r in RECORDS]  # fmt: skip
    assert "at <= its peak memory: missed (n/a)" in gpu_report.report(gpu_report.collect(more_memory))


def test_a_report_that_fails_leaves_the_results_intact(tmp_path, monkeypatch) -> None:
    import gpu_report

    results = tmp_path / "gpu_results.jsonl"
    broken = {
        "kind": "throughput",
        "preset": "1.5b",
        "config": gpu_check.PACKED,
    }  # no figures: the report raises
    results.write_text("".join(json.dumps(r) + "\n" for r in [*RECORDS, broken]))
    before = results.read_bytes()
    assert gpu_check.derive_report(str(results)) is False
    assert results.read_bytes() == before
    # The chart is drawn after the markdown is written: its failure leaves the markdown.
    results.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    monkeypatch.setattr(gpu_report, "chart", lambda *_: (_ for _ in ()).throw(RuntimeError("no matplotlib")))
    with pytest.raises(RuntimeError):
        gpu_report.main([str(results)])
    assert "## Goals" in (tmp_path / "gpu_report.md").read_text()


@pytest.mark.slow
def test_the_cpu_smoke_run_goes_through_every_step(tmp_path) -> None:
    """Minutes on two cores: every step with tiny shapes (what cannot run on a CPU is named), and the report."""
    root, paths = os.path.abspath(os.path.join(BENCHMARKS, "..")), os.environ.get("PYTHONPATH")
    env = {**os.environ, "PYTHONPATH": root + (os.pathsep + paths if paths else "")}  # keep carried packages
    env.pop("OUT", None)
    done = subprocess.run(
        [PYTHON, os.path.join(BENCHMARKS, "gpu_check.py"), "--cpu-smoke", "--out", str(tmp_path),
         "--work", str(tmp_path / "work")],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    records = gpu_check.read_results(str(tmp_path / "gpu_results.jsonl"))
    found = {r["step"]: r for r in records if r["kind"] == "step"}
    # Without TRL (`pip install -e ".[test]"`; CI's ".[dev]" has it) its two steps are skipped and named.
    missing = {
        s.name for s in gpu_check.plan(True, "") if s.requires and not importlib.util.find_spec(s.requires)
    }
    assert done.returncode == (1 if missing else 0), (done.stdout + done.stderr)[-3000:]
    assert {name for name, r in found.items() if r["status"] != "ok"} == missing
    assert all("which is not installed" in found[name]["reason"] for name in missing)
    assert [s["name"] for s in records[0]["steps"]] == list(found)  # every planned step has a status
    for name in ("probe", "gsm8k", "prepare smoke", f"throughput smoke: {gpu_check.PACKED}", "longest"):
        assert found[name]["status"] == "ok", found[name]
    runs = [r for r in records if r["kind"] == "throughput"]
    assert all(r["trained_tokens_per_second"] > 0 for r in runs) and runs
    assert [r["tokens"] for r in records if r["kind"] == "longest" and "tokens" in r] == [64, 128, 256]
    assert next(r for r in records if r["kind"] == "gsm8k")["questions"] == 8
    assert (tmp_path / "gpu_report.png").stat().st_size > 0
    assert "CPU smoke run: not a measurement" in (tmp_path / "gpu_report.md").read_text()


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
