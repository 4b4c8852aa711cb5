"""The GPU check: one command of at most 540 s on one H100/H200 without internet that measures lit_sft there
and cannot lose what it measured.

Every step runs in its own process under its own time limit and appends its results, one JSON line each, to
``gpu_results.jsonl`` (in ``$OUT`` when the device tool sets it, else ``docs/benchmarks/``) the moment they
exist; the report (``gpu_report.py``: ``gpu_report.md`` and ``gpu_report.png`` beside it) is derived from that
file alone, last, and its failure loses nothing. A step that fails or overruns is killed and named; a step that
would overrun the whole check is skipped and named. The steps, most valuable first (``plan``):

1. the probe (seconds): Python, the packages' versions, ``varlen_attn``'s signature, the CUDA device, a C
   compiler (Triton, compile and Liger need one);
2. GSM8K evaluation speed: 1,319 questions, greedy, 256 new tokens, a randomly initialised Qwen2.5-0.5B shape
   (``gsm8k_eval_speed.py``; the machine has no Hub);
3. training throughput at the 1.5B shape (``train_vs_trl.py``, seq 2,048, bf16): lit_sft packed-varlen and
   padded against TRL's SFTTrainer packed and padded, and the padding-free ideal;
4. the longest single sequence that trains at the 1.5B shape (each length recorded as it completes);
5. the same throughput comparison at the 0.5B shape;
6. the ``gpu`` tests without ``-x`` (each outcome recorded as it happens), the compile-heavy ones last.

    bash benchmarks/gpu_prepare.sh               # here, with internet: wheels + GSM8K into .gpu_carry/
    bash benchmarks/gpu_check.sh                 # on the GPU machine (carry .gpu_carry)
    python benchmarks/gpu_check.py --cpu-smoke   # every step, tiny shapes, on CPU (within the same 540 s)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
#: The whole check's limit: one device command may run 600 s; the rest is margin for installing and reporting.
TOTAL_BUDGET = 540.0
RESULTS_NAME = "gpu_results.jsonl"
#: The environment variable through which a step's process learns where to append its results.
RESULTS_VARIABLE = "GPU_CHECK_RESULTS"
PROBED_PACKAGES = ("torch", "transformers", "huggingface_hub", "lightning", "peft", "datasets", "pyarrow",
                   "triton", "accelerate", "jsonargparse", "trl", "liger-kernel", "flash-attn")  # fmt: skip

PACKED = "lit_sft, packed, varlen"
PADDED = "lit_sft, padded"
IDEAL = "lit_sft, ideal: full-length rows, no padding"
TRL_PACKED = "TRL SFTTrainer, packing (BFD, padding-free)"
TRL_PADDED = "TRL SFTTrainer, default (padded)"
#: The -k expression of the compile-heavy gpu tests (torch.compile, flex_attention's compile, Liger's Triton JIT).
COMPILE_TESTS = "compile or flex or liger"


@dataclass(frozen=True)
class Step:
    """One step of the check: a command run in its own process group, killed after ``budget`` seconds.

    Attributes:
        name: how the results and the report name it.
        budget: its time limit in seconds.
        command: the process it runs; it appends its results to the file named by ``$GPU_CHECK_RESULTS``.
        needs: a step that must have completed first (else this one is skipped, named).
        requires: a module its process imports that may be absent (then it is skipped, named, not run into
            an ImportError after its start-up).
    """

    name: str
    budget: float
    command: tuple[str, ...]
    needs: str | None = None
    requires: str | None = None


def append(path: str, record: dict[str, Any]) -> None:
    """Append one result as a JSON line and push it to the disk at once (a later crash cannot take it)."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, default=str) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_results(path: str) -> list[dict[str, Any]]:
    """The results in order; a line cut short by a killed process is left out."""
    records = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def record(kind: str, **fields: Any) -> None:
    """In a step's process: append a result of ``kind`` to the check's results file."""
    append(os.environ[RESULTS_VARIABLE], {"kind": kind, "step": os.environ.get("GPU_CHECK_STEP"), **fields})


def probe() -> dict[str, Any]:
    """What the machine has, each field on its own (one that cannot be read says why)."""

    def guarded(function: Any) -> Any:
        try:
            return function()
        except Exception as error:  # a probe reports, it does not stop
            return f"unreadable: {type(error).__name__}: {error}"

    def version(name: str) -> str | None:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return None

    def varlen_signature() -> str | None:
        import torch.nn.attention

        varlen = getattr(torch.nn.attention, "varlen", None)
        if varlen is None:
            try:
                import torch.nn.attention.varlen as varlen
            except ImportError:
                return None
        return f"varlen_attn{inspect.signature(varlen.varlen_attn)}"

    def cuda() -> dict[str, Any] | None:
        import torch

        if not torch.cuda.is_available():
            return None
        properties = torch.cuda.get_device_properties(0)
        return {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1),
                "capability": f"{properties.major}.{properties.minor}", "cuda": torch.version.cuda,
                "devices": torch.cuda.device_count()}  # fmt: skip

    def compiler() -> str | None:
        candidates = [os.environ.get("CC"), "cc", "gcc", "clang"]
        return next((shutil.which(c) for c in candidates if c and shutil.which(c)), None)

    return {
        "python": platform.python_version(),
        "libc": " ".join(platform.libc_ver()),
        "executable": sys.executable,
        "packages": {name: version(name) for name in PROBED_PACKAGES},
        "varlen_attn": guarded(varlen_signature),
        "cuda": guarded(cuda),
        "c_compiler": guarded(compiler),
        "nvcc": shutil.which("nvcc"),
        "cpu_count": os.cpu_count(),
    }


def plan(smoke: bool, work: str, steps: int = 6, warmup: int = 2) -> list[Step]:
    """The check's steps, most valuable first, with their budgets (together at most ``TOTAL_BUDGET``).

    ``smoke``: the same steps with tiny shapes on CPU (one throughput preset, ``smoke``), budgets for two cores.
    """
    this = (sys.executable, os.path.abspath(__file__))
    timing = ("--steps", str(steps), "--warmup", str(warmup), "--work", work)

    def step(
        name: str, gpu: float, cpu: float, needs: str | None = None, requires: str | None = None
    ) -> Step:
        command = (*this, "--step", name, *(("--cpu-smoke",) if smoke else ()), *timing)
        return Step(name, cpu if smoke else gpu, command, needs, requires)

    def throughput(preset: str, budgets: dict[str, tuple[float, float]]) -> list[Step]:
        prepare = f"prepare {preset}"
        steps = [step(prepare, *budgets["prepare"])]
        for config in (PACKED, TRL_PACKED, PADDED, TRL_PADDED, IDEAL):
            if config in budgets:
                requires = "trl" if config in (TRL_PACKED, TRL_PADDED) else None
                steps.append(step(f"throughput {preset}: {config}", *budgets[config], prepare, requires))
        return steps

    large = {"prepare": (35, 40), PACKED: (40, 50), TRL_PACKED: (40, 60), PADDED: (35, 50),
             TRL_PADDED: (35, 60), IDEAL: (35, 50)}  # fmt: skip
    small = {"prepare": (17, 0), PACKED: (22, 0), TRL_PACKED: (22, 0), PADDED: (22, 0), TRL_PADDED: (22, 0)}
    return [
        step("probe", 20, 30),
        step("gsm8k", 90, 60),
        *throughput("smoke" if smoke else "1.5b", large),
        step("longest", 40, 40),
        *([] if smoke else throughput("0.5b", small)),
        step("gpu tests", 30, 60),
        step("gpu tests: compile-heavy", 35, 20),
    ]


class Interrupted(Exception):
    """The check itself was told to stop (SIGTERM, SIGINT: an outer ``timeout``, the device tool, Ctrl-C)."""


def interrupt(signum: int, frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


class Deadline:
    """The check's time budget, shared by its steps."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


def run_plan(
    steps: Sequence[Step],
    results: str,
    total_budget: float = TOTAL_BUDGET,
    smoke: bool = False,
    log: str | None = None,
) -> None:
    """Run ``steps`` in order, each in its own process group killed at its budget; after each one append its
    status (``ok``, ``failed``, ``timed out``, ``skipped``) with the reason. Nothing here raises for a step."""
    deadline = Deadline(total_budget)
    append(results, {"kind": "plan", "total_budget": total_budget, "smoke": smoke,
                     "steps": [{"name": s.name, "budget": s.budget} for s in steps]})  # fmt: skip
    completed: set[str] = set()
    log = log or results[: -len(".jsonl")] + "_steps.log"
    # A step runs in its own session (so that its whole group can be killed): a signal to the check reaches it
    # only through here, which kills the running step's group and records it before the check stops.
    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        for step in steps:
            run_or_skip(step, results, log, deadline, completed)
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_or_skip(step: Step, results: str, log: str, deadline: Deadline, completed: set[str]) -> None:
    """One step of ``run_plan``: skipped (named) if it cannot or should not run, else run; its status appended."""
    status: dict[str, Any] = {"kind": "step", "step": step.name, "budget": step.budget}
    if step.needs and step.needs not in completed:
        status.update(status="skipped", reason=f"needs '{step.needs}', which did not complete")
    elif step.requires and importlib.util.find_spec(step.requires) is None:
        status.update(status="skipped", reason=f"needs the package '{step.requires}', which is not installed "
                                               "(benchmarks/gpu_prepare.sh carries it)")  # fmt: skip
    elif deadline.left() < step.budget:
        status.update(status="skipped", reason=f"would overrun the check: needs {step.budget:.0f} s, "
                                               f"{max(deadline.left(), 0):.0f} s left")  # fmt: skip
    else:
        started = time.monotonic()
        try:
            status.update(run_one(step, results, log))
        except Interrupted as signal_name:
            status.update(status="interrupted", seconds=round(time.monotonic() - started, 1),
                          reason=f"the check received {signal_name}")  # fmt: skip
            append(results, status)
            raise
    if status["status"] == "ok":
        completed.add(step.name)
    append(results, status)
    print(f"[{step.name}] {status['status']}"
          + (f" in {status['seconds']} s" if "seconds" in status else "")
          + (f": {status['reason']}" if status.get("reason") else ""), flush=True)  # fmt: skip


def run_one(step: Step, results: str, log: str) -> dict[str, Any]:
    """Run one step's process (its output appended to ``log``); its status, timing and, if it failed, why."""
    env = {**os.environ, RESULTS_VARIABLE: os.path.abspath(results), "GPU_CHECK_STEP": step.name,
           "PYTHONUNBUFFERED": "1"}  # fmt: skip
    started = time.monotonic()
    with open(log, "a", encoding="utf-8") as output:
        output.write(f"\n===== {step.name} (budget {step.budget:.0f} s)\n")
        output.flush()
        offset = output.tell()
        process = subprocess.Popen(step.command, stdout=output, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                   start_new_session=True)  # fmt: skip
        try:
            code = process.wait(timeout=step.budget)
        except subprocess.TimeoutExpired:
            code = None
        finally:
            kill_group(process)
    seconds = round(time.monotonic() - started, 1)
    if code == 0:
        return {"status": "ok", "seconds": seconds}
    with open(log, encoding="utf-8", errors="replace") as output:
        output.seek(offset)
        tail = [line.strip() for line in output.read().splitlines() if line.strip()][-3:]
    why = f"over its {step.budget:.0f} s budget" if code is None else f"exit code {code}"
    return {"status": "timed out" if code is None else "failed", "seconds": seconds,
            "reason": why + (": " + " | ".join(tail)[-400:] if tail else "")}  # fmt: skip


def kill_group(process: subprocess.Popen) -> None:
    """End the step's process and everything it started (a Trainer's workers, a compile's)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def derive_report(results: str, timeout: float = 60.0) -> bool:
    """Write the markdown and the chart from the results file, in another process; False if that failed
    (the results file is only read)."""
    command = [sys.executable, os.path.join(HERE, "gpu_report.py"), results]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        print(f"the report took over {timeout:.0f} s; the results are in {results}", flush=True)
        return False
    print(done.stdout[-6000:], flush=True)
    if done.returncode:
        print(f"the report failed (the results are in {results}):\n{done.stderr[-2000:]}", flush=True)
    return done.returncode == 0


# --- the steps, each run in its own process (``--step NAME``) --------------------------------------------------


def step_gsm8k(args: argparse.Namespace) -> None:
    import gsm8k_eval_speed
    from common import GSM8K

    options = ["--no-stop", "--data", os.path.join(GSM8K, "test.jsonl")]
    if args.cpu_smoke:
        options += ["--model", "tiny", "--questions", "8", "--max-new-tokens", "8", "--batch-size", "8"]
    else:
        options += ["--model", "qwen2.5-0.5b", "--questions", "1319", "--max-new-tokens", "256",
                    "--batch-size", "256", "--dtype", "bfloat16"]  # fmt: skip
    record("gsm8k", **gsm8k_eval_speed.main(options))


def model_dir(args: argparse.Namespace, preset: str) -> str:
    return os.path.join(args.work, preset, "model")


def step_prepare(args: argparse.Namespace, preset: str) -> None:
    import train_vs_trl

    directory = os.path.join(args.work, preset)
    shutil.rmtree(directory, ignore_errors=True)
    started = time.perf_counter()
    train_vs_trl.prepare(directory, train_vs_trl.PRESETS[preset])
    record("prepared", preset=preset, model_dir=model_dir(args, preset),
           seconds=round(time.perf_counter() - started, 1))  # fmt: skip


def step_throughput(args: argparse.Namespace, preset: str, config: str) -> None:
    import train_vs_trl

    result = train_vs_trl.measure(config, model_dir(args, preset), preset, args.steps, args.warmup)
    record("throughput", preset=preset, config=config, **result)


def step_longest(args: argparse.Namespace) -> None:
    """Double a single sequence's length until forward + backward runs out of memory or passes the limit,
    recording each length that trained as it completes."""
    import torch
    import train_vs_trl

    from lit_sft import SFTModule
    from lit_sft.batch import row_offsets

    preset, start, limit = ("smoke", 64, 256) if args.cpu_smoke else ("1.5b", 16384, 1 << 20)
    label = "gradient checkpointing"
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
    length = start
    while length <= limit:
        ids = torch.randint(0, vocabulary, (1, length), device=device)
        batch = {"input_ids": ids, "labels": ids, "position_ids": torch.arange(length, device=device)[None],
                 "cu_seq_lens": row_offsets([length]).to(device), "max_row_length": length}  # fmt: skip
        started = time.perf_counter()
        try:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss_sum, count = module.compute_loss_sum(batch)
            (loss_sum / count).backward()
            module.model.zero_grad(set_to_none=True)
        except torch.OutOfMemoryError:
            record("longest", label=label, stopped=f"out of memory at {length:,} tokens", limit=limit)
            return
        finally:
            del batch
            if cuda:
                torch.cuda.empty_cache()
        peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else 0.0
        record("longest", label=label, tokens=length, peak_memory_gb=round(peak, 2), limit=limit,
               seconds=round(time.perf_counter() - started, 2))  # fmt: skip
        length *= 2
    record("longest", label=label, stopped=f"reached the check's limit ({limit:,} tokens)", limit=limit)


def step_tests(args: argparse.Namespace, compile_heavy: bool) -> None:
    """``pytest -m gpu`` without ``-x``, each test's outcome recorded as it is known."""
    import pytest

    selection = COMPILE_TESTS if compile_heavy else f"not ({COMPILE_TESTS})"

    class Recorder:
        def pytest_runtest_logreport(self, report: Any) -> None:
            if report.when == "call" or report.outcome != "passed":
                message = str(report.longrepr).strip().splitlines()[-1][:300] if report.longrepr else None
                record("test", test=report.nodeid, phase=report.when, outcome=report.outcome,
                       seconds=round(report.duration, 2), message=message)  # fmt: skip

    code = pytest.main(["tests/gpu", "-m", "gpu", "-k", selection, "-q", "-p", "no:cacheprovider"],
                       plugins=[Recorder()])  # fmt: skip
    record("tests", selection=selection, exit_code=int(code))
    # 5: nothing selected; 1: some failed (recorded one by one): the step itself completed.
    if int(code) not in (0, 1, 5):
        raise SystemExit(int(code))


def dispatch(name: str) -> tuple[str, tuple[str, ...]]:
    """Which step function runs the step ``name``, and its arguments (a plan's names parse here)."""
    if name in ("probe", "gsm8k", "longest"):
        return name, ()
    if name.startswith("prepare "):
        return "prepare", (name.removeprefix("prepare "),)
    if name.startswith("throughput ") and ": " in name:
        preset, config = name.removeprefix("throughput ").split(": ", 1)
        return "throughput", (preset, config)
    if name in ("gpu tests", "gpu tests: compile-heavy"):
        return "tests", (name,)
    raise SystemExit(f"unknown step {name!r}")


def run_step(args: argparse.Namespace) -> None:
    """In a step's own process: run the step named ``args.step``."""
    sys.path.insert(0, HERE)
    function, arguments = dispatch(args.step)
    if function == "probe":
        record("probe", smoke=args.cpu_smoke, **probe())
    elif function == "gsm8k":
        step_gsm8k(args)
    elif function == "prepare":
        step_prepare(args, *arguments)
    elif function == "throughput":
        step_throughput(args, *arguments)
    elif function == "longest":
        step_longest(args)
    else:
        step_tests(args, compile_heavy=arguments[0].endswith("compile-heavy"))


def smoke_gsm8k() -> str:
    """A directory with the first 160 GSM8K train and 16 test rows (the smoke run tokenizes them many times)."""
    import tempfile

    sys.path.insert(0, HERE)
    from common import GSM8K

    directory = tempfile.mkdtemp(prefix="lit_sft_gsm8k_")
    for name, count in (("train.jsonl", 160), ("test.jsonl", 16)):
        with open(os.path.join(GSM8K, name), encoding="utf-8") as source:
            lines = [next(source) for _ in range(count)]
        with open(os.path.join(directory, name), "w", encoding="utf-8") as target:
            target.writelines(lines)
    return directory


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--cpu-smoke", action="store_true", help="every step with tiny shapes on CPU")
    parser.add_argument("--out", help="the folder for the results and the report (default: $OUT, else "
                        "docs/benchmarks)")  # fmt: skip
    parser.add_argument("--budget", type=float, default=TOTAL_BUDGET, help="seconds for all steps together")
    parser.add_argument("--steps", type=int, default=6, help="timed optimizer steps per throughput run")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--work", default=os.path.join("/tmp", "lit_sft_gpu_check"), help="models are saved here"
    )
    parser.add_argument("--step", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.step:
        run_step(args)
        return
    out = args.out or os.environ.get("OUT") or os.path.join(ROOT, "docs", "benchmarks")
    os.makedirs(out, exist_ok=True)
    results = os.path.join(out, RESULTS_NAME)
    if os.path.exists(results):
        os.replace(results, results + ".previous")
    if args.cpu_smoke:
        os.environ["LIT_SFT_GSM8K"] = smoke_gsm8k()
    steps = plan(args.cpu_smoke, args.work, args.steps, args.warmup)
    print(
        f"results: {results}; {len(steps)} steps, {sum(s.budget for s in steps):.0f} s of budgets", flush=True
    )
    try:
        run_plan(steps, results, args.budget, smoke=args.cpu_smoke)
    except Interrupted as signal_name:
        print(f"stopped by {signal_name}: the report from what was recorded", flush=True)
        derive_report(results, timeout=20)
        raise SystemExit(143) from None
    reported = derive_report(results)
    unfinished = [r["step"] for r in read_results(results) if r["kind"] == "step" and r["status"] != "ok"]
    if unfinished:  # the results and the report are written: the exit code only tells a rehearsal or a script
        print(
            f"{len(unfinished)} of {len(steps)} steps did not complete: {', '.join(unfinished)}", flush=True
        )
    if unfinished or not reported:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
