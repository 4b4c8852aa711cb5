"""GSM8K evaluation speed: questions per second of lit_sft's batched greedy generation.

Random weights are fine for speed. With ``--no-stop`` every answer runs to ``--max-new-tokens`` (no early
stop), which is the worst case and independent of what the model would say.

    python benchmarks/gsm8k_eval_speed.py --model tiny --questions 200            # CPU
    python benchmarks/gsm8k_eval_speed.py --model qwen2.5-0.5b --questions 1319 \\
        --max-new-tokens 256 --batch-size 256 --dtype bfloat16 --no-stop          # GPU (the issue's goal: < 60 s)

The questions are the GSM8K test set (``--data``, default ``../shared/data/gsm8k/test.jsonl``), rendered
with the built-in byte-level ChatML tokenizer (no download needed; its prompts are about 4x longer in
tokens than a BPE tokenizer's, which makes prefill slower than with the real Qwen tokenizer).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from transformers import AutoConfig, AutoModelForCausalLM

from lit_sft.gsm8k.evaluation import evaluate_items, load_eval_set
from lit_sft.hub import load_tokenizer

SIZES = {
    # Qwen2.5-0.5B's shape (vocabulary shrunk to the byte tokenizer's; the LM head is a small part of it).
    "qwen2.5-0.5b": dict(
        hidden_size=896,
        intermediate_size=4864,
        num_hidden_layers=24,
        num_attention_heads=14,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
    # The quickstart's model.
    "tiny": dict(
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
    ),
}


def main(argv: list[str] | None = None) -> dict:
    """Measure; the result (also printed, and written to ``--json``)."""
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=sorted(SIZES), default="tiny")
    parser.add_argument(
        "--data", default=os.path.join(here, "..", "..", "shared", "data", "gsm8k", "test.jsonl")
    )
    parser.add_argument("--questions", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--no-stop", action="store_true", help="generate max-new-tokens for every question")
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args(argv)

    tokenizer = load_tokenizer("builtin:byte-chatml")
    config = AutoConfig.for_model(
        "qwen2", vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id, **SIZES[args.model]
    )
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, args.dtype)).to(args.device).eval()
    eval_set = load_eval_set(tokenizer, args.data, max_samples=args.questions, max_prompt_length=2048)
    kwargs = dict(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, stop_early=not args.no_stop)
    # Warm up (allocator, kernels) on one batch, then time the whole set.
    evaluate_items(model, tokenizer, eval_set, list(range(min(args.batch_size, len(eval_set)))), **kwargs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    started = time.perf_counter()
    records = evaluate_items(model, tokenizer, eval_set, list(range(len(eval_set))), **kwargs)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    generated = sum(len(tokenizer(r["generation"], add_special_tokens=False)["input_ids"]) for r in records)
    device = (
        torch.cuda.get_device_name()
        if args.device.startswith("cuda")
        else f"{platform.processor() or 'cpu'} x{torch.get_num_threads()} threads"
    )
    result = {
        "model": args.model,
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": device,
        "dtype": args.dtype,
        "questions": len(records),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "stop_early": not args.no_stop,
        "seconds": round(seconds, 2),
        "questions_per_second": round(len(records) / seconds, 2),
        "generated_tokens_per_second": round(generated / seconds, 1),
    }
    print(json.dumps(result, indent=2))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
