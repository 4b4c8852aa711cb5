"""The report of the GPU check (`gpu_check.py`), derived from its results file alone: the machine, the issue's
goals (met, missed or not measured), every step's status, the tables and the chart.

    python benchmarks/gpu_report.py OUT/gpu_results.jsonl     # writes OUT/gpu_report.md, then OUT/gpu_report.png

The results file is only read: a report that fails loses nothing, and can be rerun.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from gpu_check import IDEAL, PACKED, read_results


def fmt(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, int | float) else "n/a"


def collect(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The results file's records grouped by kind (the last of each wins where one is expected)."""
    collected: dict[str, Any] = {"plan": None, "probe": None, "steps": {}, "throughput": {}, "gsm8k": None,
                                 "longest": [], "tests": [], "test_runs": []}  # fmt: skip
    for item in records:
        kind = item.get("kind")
        if kind in ("plan", "probe", "gsm8k"):
            collected[kind] = item
        elif kind == "step":
            collected["steps"][item["step"]] = item
        elif kind == "throughput":
            collected["throughput"].setdefault(item["preset"], {})[item["config"]] = item
        elif kind == "longest":
            collected["longest"].append(item)
        elif kind == "test":
            collected["tests"].append(item)
        elif kind == "tests":
            collected["test_runs"].append(item)
    return collected


def goals(collected: dict[str, Any]) -> list[str]:
    """The issue's goals, each met, missed or not measured."""

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "missed")

    runs = collected["throughput"].get("1.5b", {})
    trl = [run for name, run in runs.items() if name.startswith("TRL")]
    best_trl = max(trl, key=lambda run: run["trained_tokens_per_second"], default=None)
    ours = [run for name, run in runs.items() if name.startswith("lit_sft") and name != IDEAL]
    fitting = [run for run in ours if best_trl and run["peak_memory_mb"] <= best_trl["peak_memory_mb"]]
    best = max(fitting, key=lambda run: run["trained_tokens_per_second"], default=None)
    speedup = (
        best["trained_tokens_per_second"] / best_trl["trained_tokens_per_second"]
        if best and best_trl
        else None
    )
    speed_ok = None if speedup is None else speedup >= 1.3
    if best_trl and ours and not fitting:
        speed_ok = False  # every lit_sft configuration needed more memory than TRL's best
    mfus = [run["mfu"] for run in ours if "mfu" in run]
    mfu = max(mfus) if mfus else None
    packed, ideal = runs.get(PACKED), runs.get(IDEAL)
    packed_ratio = packed["tokens_per_second"] / ideal["tokens_per_second"] if packed and ideal else None
    gsm8k = collected["gsm8k"] or {}
    full_gsm8k = gsm8k.get("questions") == 1319 and "seconds" in gsm8k
    return [
        f"- 1.5B: >= 1.3x TRL's best trained tokens/s at <= its peak memory: "
        f"{verdict(speed_ok)} ({fmt(speedup, '{:.2f}x')})",
        f"- 1.5B: MFU >= 40%: {verdict(None if mfu is None else mfu >= 0.4)} ({fmt(mfu, '{:.1%}')})",
        f"- packed varlen within 5% of the ideal (no padding) real tokens/s: "
        f"{verdict(None if packed_ratio is None else packed_ratio >= 0.95)} ({fmt(packed_ratio, '{:.1%}')})",
        f"- GSM8K 1,319 questions in < 60 s at the 0.5B shape: "
        f"{verdict(gsm8k['seconds'] < 60 if full_gsm8k else None)} ({fmt(gsm8k.get('seconds'), '{:.1f} s')})",
        "- GQA under varlen on torch 2.11 (key/value heads repeated per layer): not measured by this check",
    ]


def machine(probe: dict[str, Any] | None) -> list[str]:
    if probe is None:
        return ["The probe recorded nothing: the machine is unknown."]
    cuda = probe.get("cuda")
    device = (
        f"{cuda['name']} ({cuda['memory_gib']} GiB, capability {cuda['capability']}, CUDA {cuda['cuda']})"
        if isinstance(cuda, dict)
        else f"no CUDA device ({cuda})"
        if cuda
        else "no CUDA device"
    )
    packages = ", ".join(
        f"{name} {version or 'absent'}" for name, version in probe.get("packages", {}).items()
    )
    return [
        f"{device}; Python {probe.get('python')} ({probe.get('libc')}); {packages}.",
        "",
        f"`varlen_attn`: {probe.get('varlen_attn') or 'absent'}. C compiler: {probe.get('c_compiler') or 'none'}; "
        f"nvcc: {probe.get('nvcc') or 'none'}; {probe.get('cpu_count')} CPUs.",
    ]


def steps_table(collected: dict[str, Any]) -> list[str]:
    planned = collected["plan"]["steps"] if collected["plan"] else []
    names = [step["name"] for step in planned] + [
        n for n in collected["steps"] if n not in {s["name"] for s in planned}
    ]
    budgets = {step["name"]: step["budget"] for step in planned}
    lines = ["| step | budget | status | time | why |", "| --- | ---: | --- | ---: | --- |"]
    for name in names:
        status = collected["steps"].get(name, {"status": "not reached (the check stopped before it)"})
        reason = str(status.get("reason", "")).replace("|", "/")
        lines.append(f"| {name} | {fmt(budgets.get(name, status.get('budget')), '{:.0f} s')} | {status['status']} | "
                     f"{fmt(status.get('seconds'), '{:.1f} s')} | {reason} |")  # fmt: skip
    return lines


def throughput_tables(collected: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for preset, runs in collected["throughput"].items():
        trl = [run for name, run in runs.items() if name.startswith("TRL")]
        best_trl = max(trl, key=lambda run: run["trained_tokens_per_second"], default=None)
        lines += ["", f"## Training throughput, preset {preset}", "",
                  "| configuration | trained tokens/s | real tokens/s | step time | peak memory | MFU | vs TRL's best |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]  # fmt: skip
        for name, run in runs.items():
            ratio = (
                run["trained_tokens_per_second"] / best_trl["trained_tokens_per_second"] if best_trl else None
            )
            lines.append(
                f"| {name} | {run['trained_tokens_per_second']:,.0f} | {run['tokens_per_second']:,.0f} | "
                f"{run['step_seconds'] * 1000:.0f} ms | {run['peak_memory_mb'] / 1024:.1f} GiB | "
                f"{fmt(run.get('mfu'), '{:.1%}')} | {fmt(ratio, '{:.2f}x')} |"
            )
    return lines


def report(collected: dict[str, Any]) -> str:
    probe, plan = collected["probe"], collected["plan"] or {}
    smoke = bool((probe or {}).get("smoke") or plan.get("smoke"))
    lines = [
        "# lit_sft on a GPU" + (" (CPU smoke run: not a measurement)" if smoke else ""),
        "",
        *machine(probe),
        "",
        "Written by `benchmarks/gpu_report.py` from `gpu_results.jsonl` (`benchmarks/gpu_check.py`). MFU: 6 FLOPs "
        "per non-embedding weight and real token, attention scores excluded, over the device's dense bf16 peak.",
        "",
        "## Goals",
        "",
        *goals(collected),
        "",
        f"## Steps (budget {fmt(plan.get('total_budget'), '{:.0f} s')} in all)",
        "",
        *steps_table(collected),
        *throughput_tables(collected),
        "",
        "## GSM8K evaluation speed",
        "",
    ]
    gsm8k = collected["gsm8k"]
    lines.append("```\n" + json.dumps(gsm8k, indent=1) + "\n```" if gsm8k else "not measured")
    lines += ["", "## Longest single sequence that trains (varlen, gradient checkpointing)", ""]
    lines += ["| memory path | tokens | peak memory | time |", "| --- | ---: | ---: | ---: |"]
    for item in collected["longest"]:
        if "stopped" in item:
            lines.append(f"| {item['label']} | stopped: {item['stopped']} | | |")
        else:
            lines.append(f"| {item['label']} | {item['tokens']:,} | {item['peak_memory_gb']:.1f} GB | "
                         f"{fmt(item.get('seconds'), '{:.1f} s')} |")  # fmt: skip
    lines += [
        "",
        "Sequence parallelism (Ulysses) splits one sequence across GPUs: not measurable on one GPU.",
    ]
    lines += ["", "## GPU tests", ""]
    outcomes: dict[str, int] = {}
    for test in collected["tests"]:
        outcomes[test["outcome"]] = outcomes.get(test["outcome"], 0) + 1
    lines.append(
        ", ".join(f"{count} {outcome}" for outcome, count in sorted(outcomes.items())) or "none recorded"
    )
    for test in collected["tests"]:
        if test["outcome"] == "failed":
            lines.append(f"- failed: `{test['test']}` ({test['phase']}): {test.get('message')}")
    return "\n".join(lines) + "\n"


def chart(collected: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(collected["throughput"]) or ["none"]
    figure, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4), squeeze=False)
    device = (collected["probe"] or {}).get("cuda") or {"name": "CPU"}
    for axis, preset in zip(axes[0], presets, strict=True):
        runs = collected["throughput"].get(preset, {})
        axis.barh(list(runs), [r["trained_tokens_per_second"] for r in runs.values()],
                  color=["tab:blue" if n.startswith("lit_sft") else "tab:gray" for n in runs])  # fmt: skip
        axis.invert_yaxis()
        axis.set_xlabel("trained tokens per second")
        axis.set_title(
            f"{preset} ({device.get('name', 'CPU') if isinstance(device, dict) else device})", fontsize=9
        )
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("results", help="the check's gpu_results.jsonl")
    args = parser.parse_args(argv)
    collected = collect(read_results(args.results))
    folder = os.path.dirname(os.path.abspath(args.results))
    text = report(collected)
    with open(os.path.join(folder, "gpu_report.md"), "w", encoding="utf-8") as handle:
        handle.write(text)
    print(text)
    chart(
        collected, os.path.join(folder, "gpu_report.png")
    )  # last: the markdown is written whatever happens here


if __name__ == "__main__":
    main()
