"""Training throughput against TRL's SFTTrainer: the same model, rows, batch, optimizer and precision.

Each configuration trains in its own process (so that its peak memory is its own), configurations
alternate, and every run reports trained tokens/s (completion tokens the loss is taken on), real tokens/s
(no padding), median step time, peak memory (CPU RSS, or CUDA max allocated) and the loss at the last step.

CPU configuration (``--preset cpu``, the default): a Qwen2-style model (hidden 256, 4 layers) initialised
once and saved, GSM8K train rows with a BPE tokenizer built here (Qwen2.5's ChatML template), max_length
512, 8 rows per optimizer step (lit_sft packs them: about as many tokens per step), fused AdamW lr 1e-4
constant, fp32 (both tools).

GPU configurations (``--preset 0.5b`` / ``1.5b``): Qwen2.5-0.5B / 1.5B shapes with random weights (the
full 151,936-token vocabulary), bf16 autocast over fp32 weights for both tools, max_length 2048, 32 rows
per step, flash-attention 2 when installed (else SDPA); ``--gradient_checkpointing`` and ``--liger`` turn
those on for both tools (TRL: ``gradient_checkpointing``, ``use_liger_kernel``; lit_sft: its Liger kernels
and fused linear cross-entropy). On CUDA the table adds MFU: 6 x (non-embedding parameters) x real
tokens/s over the GPU's dense bf16 peak (``--peak_tflops``, default from the device name); attention FLOPs
are left out, so it is a lower bound.

    pip install -e ".[bench]"
    python benchmarks/train_vs_trl.py --steps 30 --repeats 2 --out docs/benchmarks/train_vs_trl
    python benchmarks/train_vs_trl.py --preset 1.5b --gradient_checkpointing --liger --out docs/benchmarks/train_vs_trl_1.5b
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
from common import GSM8K, build_bpe_tokenizer, fit_and_time, machine, read_jsonl

TRAIN = os.path.join(GSM8K, "train.jsonl")
PRESETS: dict[str, dict] = {
    "cpu": {
        "model": {
            "hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": False,
        },
        "max_length": 512, "rows_per_step": 8, "bf16": False,
        "label": "Qwen2-style model (hidden 256, 4 layers, BPE vocabulary 8,192, 7.4M parameters)",
    },
    "smoke": {  # a few seconds per run on CPU: every code path of the GPU check, not a measurement
        "model": {
            "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "max_position_embeddings": 4096, "tie_word_embeddings": True,
        },
        "max_length": 256, "rows_per_step": 4, "bf16": False,
        "label": "smoke-test model (hidden 64, 2 layers)",
    },
    "0.5b": {
        "model": {
            "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
            "num_key_value_heads": 2, "max_position_embeddings": 32768, "tie_word_embeddings": True,
            "vocab_size": 151936,
        },
        "max_length": 2048, "rows_per_step": 32, "bf16": True,
        "label": "Qwen2.5-0.5B shapes (random weights, vocabulary 151,936)",
    },
    "1.5b": {
        "model": {
            "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
            "num_key_value_heads": 2, "max_position_embeddings": 32768, "tie_word_embeddings": True,
            "vocab_size": 151936,
        },
        "max_length": 2048, "rows_per_step": 32, "bf16": True,
        "label": "Qwen2.5-1.5B shapes (random weights, vocabulary 151,936)",
    },
}  # fmt: skip
AVERAGE_ROW_TOKENS = 200  # GSM8K rows with this tokenizer: packs per step = rows_per_step * 200 / max_length
LR = 1e-4
#: Dense bf16 peak FLOP/s by device name (a substring of torch.cuda.get_device_name()).
PEAK_FLOPS = {"H200": 989.4e12, "H100": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}

CONFIGS = {
    "lit_sft, packed (max_length-token sequences)": ("lit_sft", {"packing": True}),
    "lit_sft, length-grouped padded": ("lit_sft", {"length_grouped": True}),
    "lit_sft, padded": ("lit_sft", {}),
    "lit_sft, packed, SDPA": ("lit_sft", {"packing": True, "attention": "sdpa"}),
    "lit_sft, packed, varlen": ("lit_sft", {"packing": True, "attention": "varlen"}),
    "lit_sft, packed, varlen + compile": (
        "lit_sft",
        {"packing": True, "attention": "varlen", "compile": True},
    ),
    "lit_sft, packed, varlen + Liger": ("lit_sft", {"packing": True, "attention": "varlen", "liger": True}),
    "lit_sft, packed, varlen + checkpointing": (
        "lit_sft",
        {"packing": True, "attention": "varlen", "gradient_checkpointing": True},
    ),
    "lit_sft, ideal: full-length rows, no padding": (
        "lit_sft",
        {"packing": True, "attention": "varlen", "ideal": True},
    ),
    "TRL SFTTrainer, default (padded)": ("trl", {}),
    "TRL SFTTrainer, group_by_length": ("trl", {"group_by_length": True}),
    "TRL SFTTrainer, packing (BFD, padding-free)": ("trl", {"packing": True}),
}

#: What a plain run compares (the GPU check, benchmarks/gpu_check.py, runs the others with --only).
DEFAULT_CONFIGS = [
    "lit_sft, packed (max_length-token sequences)",
    "lit_sft, length-grouped padded",
    "TRL SFTTrainer, default (padded)",
    "TRL SFTTrainer, group_by_length",
    "TRL SFTTrainer, packing (BFD, padding-free)",
]


def peak_memory_mb() -> float:
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def packs_per_step(preset: dict) -> int:
    return max(1, round(preset["rows_per_step"] * AVERAGE_ROW_TOKENS / preset["max_length"]))


def attention_implementation() -> str:
    """flash_attention_2 on a GPU with the flash-attn package, else sdpa (TRL's runs and lit_sft's by default)."""
    if torch.cuda.is_available():
        try:
            import flash_attn  # noqa: F401

            return "flash_attention_2"
        except ImportError:
            pass
    return "sdpa"


def non_embedding_parameters(model_dir: str) -> int:
    """Parameters that cost 6 FLOPs per token in training (the LM head counts; the embedding lookup not)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_dir))
    embedding = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    return total if tied else total - embedding


def peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def prepare(work: str, preset: dict) -> tuple[str, str]:
    """A tokenizer and a randomly initialised model, saved once and loaded by every run."""
    from transformers import AutoConfig, AutoModelForCausalLM

    rows = read_jsonl(TRAIN)
    tokenizer_dir, model_dir = os.path.join(work, "tokenizer"), os.path.join(work, "model")
    tokenizer = build_bpe_tokenizer(
        [r["question"] + "\n" + r["answer"] for r in rows], directory=tokenizer_dir
    )
    config = AutoConfig.for_model(
        "qwen2",
        **{"vocab_size": len(tokenizer), **preset["model"]},
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    # Initialised on the GPU where there is one: 1.5B fp32 weights take seconds there, far longer on CPU.
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(config)
    model.save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    return model_dir, tokenizer_dir


def full_length_rows(max_length: int) -> str:
    """GSM8K rows lengthened (answers of several questions one after another) and cut at ``max_length``:
    every row fills a pack alone, so the run has neither padding nor row boundaries (the ideal)."""
    rows = read_jsonl(TRAIN)
    path = os.path.join(tempfile.mkdtemp(prefix="lit_sft_ideal_"), "train.jsonl")
    with open(path, "w", encoding="utf-8") as handle:
        for start in range(0, len(rows), 16):
            group = rows[start : start + 16]
            answer = "\n\n".join(row["question"] + "\n" + row["answer"] for row in group) * 2
            handle.write(json.dumps({"question": group[0]["question"], "answer": answer}) + "\n")
    return path


def run_lit_sft(
    model_dir: str, options: dict, steps: int, warmup: int, preset: dict, args: argparse.Namespace
) -> dict:
    from functools import partial

    from lightning.pytorch import seed_everything

    from lit_sft import LossOptions, SFTDataModule, SFTModule, WarmupDecayLR

    seed_everything(0)
    liger = args.liger or bool(options.get("liger"))
    module = SFTModule(
        model_name_or_path=model_dir,
        attn_implementation=options.get("attention") or attention_implementation(),
        gradient_checkpointing=args.gradient_checkpointing or bool(options.get("gradient_checkpointing")),
        liger_kernels=liger,
        torch_compile=bool(options.get("compile")),
        loss=LossOptions(implementation="liger" if liger else "chunked"),
        optimizer=partial(torch.optim.AdamW, lr=LR, weight_decay=0.0, fused=True),
        lr_scheduler=partial(WarmupDecayLR, schedule="constant"),
    )
    max_length, rows = preset["max_length"], preset["rows_per_step"]
    data_options: dict = {"max_length": max_length, "truncation": "right", "shuffle": True}
    accumulate = 1
    if options.get("packing"):
        # 8 GSM8K rows are ~1,600 tokens: three 512-token packs per step carry about as many.
        data_options.update(packing=True, max_tokens_per_batch=max_length)
        accumulate = packs_per_step(preset)
    elif options.get("length_grouped"):
        data_options.update(max_tokens_per_batch=rows * AVERAGE_ROW_TOKENS)
    else:
        data_options.update(batch_size=rows)
    data = SFTDataModule(
        train_files=full_length_rows(max_length) if options.get("ideal") else TRAIN,
        tokenizer_name_or_path=model_dir,
        prompt_key="question",
        response_key="answer",
        **data_options,
    )
    return fit_and_time(
        module,
        data,
        steps,
        warmup,
        accelerator="auto",
        devices=1,
        accumulate_grad_batches=accumulate,
        precision="bf16-mixed" if preset["bf16"] else "32-true",
    )


def run_trl(
    model_dir: str, options: dict, steps: int, warmup: int, preset: dict, args: argparse.Namespace
) -> dict:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype=torch.float32, attn_implementation=attention_implementation()
    )
    raw = datasets.load_dataset("json", data_files=TRAIN, split="train")
    dataset = raw.map(
        lambda row: {
            "prompt": [{"role": "user", "content": row["question"]}],
            "completion": [{"role": "assistant", "content": row["answer"]}],
        },
        remove_columns=raw.column_names,
    )
    counts = {"trained": 0, "tokens": 0}

    def count(module, args, kwargs):
        if counts.get("active"):
            labels = kwargs["labels"]
            counts["trained"] += int((labels[:, 1:] != -100).sum())
            mask = kwargs.get("attention_mask")
            counts["tokens"] += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    model.register_forward_pre_hook(count, with_kwargs=True)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.seconds, self.loss = 0.0, [], None

        def on_step_begin(self, args, state, control, **kwargs) -> None:
            counts["active"] = state.global_step >= warmup
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            if state.global_step > warmup:
                self.seconds.append(time.perf_counter() - self.start)

        def on_log(self, args, state, control, logs=None, **kwargs) -> None:
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    packing = bool(options.get("packing"))
    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=steps + warmup,
        per_device_train_batch_size=packs_per_step(preset) if packing else preset["rows_per_step"],
        max_length=preset["max_length"],
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        optim="adamw_torch_fused",  # the same fused AdamW as lit_sft's runs
        completion_only_loss=True,
        packing=packing,
        train_sampling_strategy="group_by_length" if options.get("group_by_length") else "random",
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=not torch.cuda.is_available(),
        bf16=preset["bf16"],
        gradient_checkpointing=args.gradient_checkpointing,
        use_liger_kernel=args.liger,
        seed=0,
        dataloader_num_workers=0,
    )
    timer = Timer()
    trainer = SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    )
    trainer.train()
    seconds = sum(timer.seconds)
    return {
        "trained_tokens_per_second": counts["trained"] / seconds,
        "tokens_per_second": counts["tokens"] / seconds,
        "step_seconds": statistics.median(timer.seconds),
        "loss": timer.loss,
    }


def measure(
    name: str,
    model_dir: str,
    preset: str,
    steps: int,
    warmup: int,
    gradient_checkpointing: bool = False,
    liger: bool = False,
    peak_tflops: float | None = None,
) -> dict:
    """One configuration's run in this process: tokens/s, step time, loss, peak memory and (CUDA) MFU."""
    tool, options = CONFIGS[name]
    torch.set_num_threads(os.cpu_count() or 1)
    runner = run_lit_sft if tool == "lit_sft" else run_trl
    switches = argparse.Namespace(gradient_checkpointing=gradient_checkpointing, liger=liger)
    result = runner(model_dir, options, steps, warmup, PRESETS[preset], switches)
    result["peak_memory_mb"] = peak_memory_mb()
    peak = peak_flops(peak_tflops)
    if peak:
        flops = 6 * non_embedding_parameters(model_dir) * result["tokens_per_second"]
        result["mfu"] = flops / peak
    return result


def single(args: argparse.Namespace) -> None:
    result = measure(args.single, args.model_dir, args.preset, args.steps, args.warmup,
                     args.gradient_checkpointing, args.liger, args.peak_tflops)  # fmt: skip
    print("RESULT " + json.dumps(result))


def plot(results: dict[str, list[dict]], names: list[str], path: str, machine_name: str) -> None:
    """A bar chart of trained tokens/s per configuration (lit_sft in blue)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(8, 3.6))
    values = [statistics.median(run["trained_tokens_per_second"] for run in results[name]) for name in names]
    colors = ["tab:blue" if name.startswith("lit_sft") else "tab:gray" for name in names]
    axis.barh(names, values, color=colors)
    axis.invert_yaxis()
    axis.set_xlabel("trained (completion) tokens per second")
    axis.set_title(f"SFT throughput on GSM8K (higher is better)\n{machine_name}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu", help="model size and precision")
    parser.add_argument("--gradient_checkpointing", action="store_true", help="for both tools")
    parser.add_argument("--liger", action="store_true", help="Liger kernels and loss for both tools (CUDA)")
    parser.add_argument("--peak_tflops", type=float, help="the GPU's dense bf16 peak (default: by name)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="write OUT.md and OUT.png")
    parser.add_argument("--only", nargs="*", help="configuration names to run (default: all)")
    parser.add_argument("--replot", help="redraw OUT.png from OUT.json and exit")
    parser.add_argument("--single", help=argparse.SUPPRESS)
    parser.add_argument("--model_dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.single:
        single(args)
        return
    if args.replot:
        with open(args.replot + ".json", encoding="utf-8") as handle:
            saved = json.load(handle)
        plot(saved["results"], list(saved["results"]), args.replot + ".png", saved["machine"])
        return

    work = tempfile.mkdtemp(prefix="lit_sft_trl_")
    preset = PRESETS[args.preset]
    model_dir, _ = prepare(work, preset)
    names = args.only or DEFAULT_CONFIGS
    results: dict[str, list[dict]] = {name: [] for name in names}
    for _ in range(args.repeats):
        for name in names:  # alternate configurations, one process each
            command = [
                sys.executable,
                __file__,
                "--single",
                name,
                "--model_dir",
                model_dir,
                "--steps",
                str(args.steps),
                "--warmup",
                str(args.warmup),
                "--preset",
                args.preset,
                *(["--gradient_checkpointing"] if args.gradient_checkpointing else []),
                *(["--liger"] if args.liger else []),
                *(["--peak_tflops", str(args.peak_tflops)] if args.peak_tflops else []),
            ]
            done = subprocess.run(command, capture_output=True, text=True, cwd=os.path.dirname(__file__))
            lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
            if done.returncode or not lines:
                raise SystemExit(f"{name} failed:\n{done.stderr[-4000:]}")
            results[name].append(json.loads(lines[-1][len("RESULT ") :]))
            print(name, results[name][-1], flush=True)

    def median(name: str, key: str) -> float:
        return statistics.median(run[key] for run in results[name])

    trl_default = next((n for n in names if n.startswith("TRL") and "default" in n), None)
    with_mfu = all("mfu" in run for name in names for run in results[name])
    switches = "".join(
        [", gradient checkpointing" if args.gradient_checkpointing else "", ", Liger" if args.liger else ""]
    )
    lines = [
        f"GSM8K train, {preset['label']}, max_length {preset['max_length']}, {preset['rows_per_step']} rows per "
        f"step, fused AdamW {LR} constant, {'bf16 autocast' if preset['bf16'] else 'fp32'}{switches}; {machine()}; "
        f"{args.steps} steps after {args.warmup} warm-up steps, median of {args.repeats} alternating runs, one process per run.",
        "",
        "| configuration | trained tokens/s | real tokens/s | step time | peak memory | loss at last step | "
        f"trained tokens/s vs TRL default |{' MFU |' if with_mfu else ''}",
        f"| --- | ---: | ---: | ---: | ---: | ---: | ---: |{' ---: |' if with_mfu else ''}",
    ]
    for name in names:
        ratio = (
            f"{median(name, 'trained_tokens_per_second') / median(trl_default, 'trained_tokens_per_second'):.2f}x"
            if trl_default
            else "n/a"
        )
        lines.append(
            f"| {name} | {median(name, 'trained_tokens_per_second'):,.0f} | {median(name, 'tokens_per_second'):,.0f} | "
            f"{median(name, 'step_seconds') * 1000:.0f} ms | {median(name, 'peak_memory_mb'):,.0f} MB | "
            f"{median(name, 'loss'):.3f} | {ratio} |" + (f" {median(name, 'mfu'):.1%} |" if with_mfu else "")
        )
    table = "\n".join(lines)
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out + ".md", "w", encoding="utf-8") as handle:
            handle.write(table + "\n")
        with open(args.out + ".json", "w", encoding="utf-8") as handle:
            json.dump({"machine": machine(), "results": results}, handle, indent=2)
        plot(results, names, args.out + ".png", machine())


if __name__ == "__main__":
    main()
