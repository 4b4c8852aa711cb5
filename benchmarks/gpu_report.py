"""The report of the GPU check (`gpu_check.py`): the tables, the issue's goals (met, missed or not measured)
and the chart, from the check's results."""

from __future__ import annotations

import json
from typing import Any


def fmt(value: Any, pattern: str) -> str:
    return pattern.format(value) if isinstance(value, int | float) else "n/a"


def goals(results: dict[str, Any]) -> list[str]:
    """The issue's goals, each met, missed or not measured."""

    def verdict(ok: bool | None) -> str:
        return "not measured" if ok is None else ("met" if ok else "missed")

    runs = results["throughput"].get("1.5b", {})
    measured = {name: run for name, run in runs.items() if "trained_tokens_per_second" in run}
    trl = [run for name, run in measured.items() if name.startswith("TRL")]
    best_trl = max(trl, key=lambda run: run["trained_tokens_per_second"], default=None)
    ours = [run for name, run in measured.items() if name.startswith("lit_sft") and "ideal" not in name]
    fitting = [run for run in ours if best_trl and run["peak_memory_mb"] <= best_trl["peak_memory_mb"]]
    best = max(fitting, key=lambda run: run["trained_tokens_per_second"], default=None)
    speedup = (
        best["trained_tokens_per_second"] / best_trl["trained_tokens_per_second"]
        if best and best_trl
        else None
    )
    mfu = max((run.get("mfu", 0.0) for run in ours), default=None) if ours else None
    packed, ideal = (
        measured.get("lit_sft, packed, varlen"),
        measured.get("lit_sft, ideal: full-length rows, no padding"),
    )
    packed_ratio = packed["tokens_per_second"] / ideal["tokens_per_second"] if packed and ideal else None
    gsm8k = results.get("gsm8k", {})
    full_gsm8k = gsm8k.get("questions") == 1319 and "seconds" in gsm8k
    speed_ok = None if speedup is None else speedup >= 1.3
    if best_trl and ours and not fitting:
        speed_ok = False  # every lit_sft configuration needed more memory than TRL's best
    return [
        f"- 1.5B: >= 1.3x TRL's best trained tokens/s at <= its peak memory: "
        f"{verdict(speed_ok)} ({fmt(speedup, '{:.2f}x')})",
        f"- 1.5B: MFU >= 40%: {verdict(None if mfu is None else mfu >= 0.4)} ({fmt(mfu, '{:.1%}')})",
        f"- packed varlen within 5% of the ideal (no padding) real tokens/s: "
        f"{verdict(None if packed_ratio is None else packed_ratio >= 0.95)} ({fmt(packed_ratio, '{:.1%}')})",
        f"- GSM8K 1,319 questions in < 60 s at the 0.5B shape: "
        f"{verdict(gsm8k['seconds'] < 60 if full_gsm8k else None)} ({fmt(gsm8k.get('seconds'), '{:.1f} s')})",
    ]


def report(results: dict[str, Any], smoke: bool) -> str:
    env = results["environment"]
    lines = [
        "# lit_sft on a GPU" + (" (CPU smoke run: not a measurement)" if smoke else ""),
        "",
        f"{env['device']}, torch {env['torch']}, transformers {env['transformers']}; packed-attention kernel: "
        f"{'torch varlen_attn' if env['varlen_attn'] else 'flex_attention'}; flash-attn "
        f"{'installed' if env['flash_attn'] else 'absent'}; Liger {'installed' if env['liger_kernel'] else 'absent'}; "
        f"TRL {'installed' if env['trl'] else 'absent'}. Written by `benchmarks/gpu_check.py`.",
        "",
        "MFU: model FLOPs (6 per trained weight and token, 4 per frozen one; the LM head on the positions it runs "
        "on), attention scores excluded, over the device's dense bf16 peak.",
        "",
        "## Goals",
        "",
        *goals(results),
    ]
    for preset, runs in results["throughput"].items():
        best_trl = max(
            (
                run
                for name, run in runs.items()
                if name.startswith("TRL") and "trained_tokens_per_second" in run
            ),
            key=lambda run: run["trained_tokens_per_second"],
            default=None,
        )
        lines += [
            "",
            f"## Training throughput, preset {preset}",
            "",
            "| configuration | trained tokens/s | real tokens/s | step time | peak memory | MFU | vs TRL's best |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for name, run in runs.items():
            if "skipped" in run:
                lines.append(f"| {name} | not run: {run['skipped']} | | | | | |")
                continue
            ratio = (
                run["trained_tokens_per_second"] / best_trl["trained_tokens_per_second"] if best_trl else None
            )
            lines.append(
                f"| {name} | {run['trained_tokens_per_second']:,.0f} | {run['tokens_per_second']:,.0f} | "
                f"{run['step_seconds'] * 1000:.0f} ms | {run['peak_memory_mb'] / 1024:.1f} GiB | "
                f"{fmt(run.get('mfu'), '{:.1%}')} | {fmt(ratio, '{:.2f}x')} |"
            )
    gsm8k = results["gsm8k"]
    lines += ["", "## GSM8K evaluation speed", ""]
    if "skipped" in gsm8k:
        lines.append(f"not run: {gsm8k['skipped']}")
    else:
        lines.append("```\n" + json.dumps(gsm8k, indent=1) + "\n```")
    shape = "smoke-test shape, fp32" if smoke else "1.5B shape, bf16 autocast"
    lines += ["", f"## Longest single sequence that trains (varlen, {shape})", ""]
    lines += ["| memory path | longest sequence | peak memory |", "| --- | ---: | ---: |"]
    for label, run in results["longest"].items():
        if "skipped" in run:
            lines.append(f"| {label} | not run: {run['skipped']} | |")
        else:
            capped = " (the check's limit)" if run["longest_tokens"] >= run["limit"] else ""
            lines.append(
                f"| {label} | {run['longest_tokens']:,} tokens{capped} | {run['peak_memory_gb']:.1f} GB |"
            )
    lines += [
        "",
        "Sequence parallelism (Ulysses) splits one sequence across GPUs: not measurable on one GPU.",
    ]
    return "\n".join(lines) + "\n"


def chart(results: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    presets = list(results["throughput"])
    figure, axes = plt.subplots(1, len(presets), figsize=(6 * len(presets), 4), squeeze=False)
    for axis, preset in zip(axes[0], presets, strict=True):
        runs = {n: r for n, r in results["throughput"][preset].items() if "trained_tokens_per_second" in r}
        axis.barh(
            list(runs),
            [r["trained_tokens_per_second"] for r in runs.values()],
            color=["tab:blue" if n.startswith("lit_sft") else "tab:gray" for n in runs],
        )
        axis.invert_yaxis()
        axis.set_xlabel("trained tokens per second")
        axis.set_title(f"{preset} ({results['environment']['device']})", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
