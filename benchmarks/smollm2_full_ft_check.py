"""Full fine-tuning of SmolLM2-135M-Instruct (GGUF) by lit_sft against a plain PyTorch loop on the same batches.

(a) lit_sft: SFTModule + SFTDataModule + Lightning Trainer, the recipe's settings (fp32, SFTAdamW, the
default warmup/cosine schedule, gradient clipping at 1.0). (b) A plain loop written here: the model loaded
with transformers' ``gguf_file=``, ``model.train()``, loss = summed token cross-entropy over labels != -100
divided by their count, the norm-1.0 clip, torch AdamW with the same settings, the same lr per step. Both
see the very batches (a) trained on (recorded by a callback). Printed: per-step loss and gradient norms,
weight differences after the steps, the export's logits against the in-memory model, and the greedy answer
to "What is the capital of France?" from (a)'s export and from (b).

    python benchmarks/smollm2_full_ft_check.py --steps 3 --lr 5e-5
"""

from __future__ import annotations

import argparse
import glob
import math
import os
import tempfile
from typing import Any

import torch

PARAMS = (
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.15.mlp.down_proj.weight",
    "model.layers.29.mlp.down_proj.weight",
    "model.norm.weight",
)
QUESTION = "What is the capital of France?"


def answer(model: Any, tokenizer: Any) -> str:
    """The greedy answer (20 new tokens) to QUESTION."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    model.eval()
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=20, do_sample=False)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)


def first_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    """The model's logits on the QUESTION prompt (eval mode)."""
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": QUESTION}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    model.eval()
    with torch.no_grad():
        return model(**inputs).logits


def first_tokens(model: Any, tokenizer: Any) -> list[tuple[str, float]]:
    """The three most likely first answer tokens to QUESTION, with their probabilities."""
    probs = first_logits(model, tokenizer)[0, -1].softmax(-1).topk(3)
    return [
        (tokenizer.decode([int(i)]), round(float(p), 4))
        for p, i in zip(probs.values, probs.indices, strict=True)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--clip", type=float, default=1.0)
    parser.add_argument(
        "--gsm8k", default=os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "gsm8k")
    )
    parser.add_argument("--out", default=None, help="working directory (default: a temporary one)")
    args = parser.parse_args()

    import lightning.pytorch as pl
    from transformers import AutoModelForCausalLM

    from lit_sft import SFTDataModule, SFTModule
    from lit_sft.commands import prepare
    from lit_sft.gguf import load_gguf_tokenizer
    from lit_sft.inference.export import export_checkpoint
    from lit_sft.model.scheduler import SFTAdamW
    from tests.real_vocab import smollm2_gguf

    torch.manual_seed(0)
    gguf = str(smollm2_gguf())
    work = args.out or tempfile.mkdtemp(prefix="smollm2_full_ft_")
    prepare.gsm8k(os.path.abspath(args.gsm8k), os.path.join(work, "gsm8k"), splits=["train"])
    tokenizer = load_gguf_tokenizer(gguf)

    # ------------------------------------------------------------------------------ (a) lit_sft
    batches: list[dict[str, torch.Tensor]] = []
    grads_a: list[dict[str, float]] = []
    losses_a: list[float] = []

    class Record(pl.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
            batches.append({k: v.clone() for k, v in batch.items() if isinstance(v, torch.Tensor)})

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            loss = outputs["loss"] if isinstance(outputs, dict) else outputs
            losses_a.append(float(loss))

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            named = dict(module.model.named_parameters())
            norms = {name: float(named[name].grad.norm()) for name in PARAMS if name in named}
            norms["total"] = float(
                torch.linalg.vector_norm(
                    torch.stack([p.grad.norm() for p in module.model.parameters() if p.grad is not None])
                )
            )
            grads_a.append(norms)

    pl.seed_everything(42)
    data = SFTDataModule(
        train_files=os.path.join(work, "gsm8k", "train.parquet"),
        prompt_key="prompt",
        response_key="extra_info.answer",
        max_length=512,
        truncation="error",
        batch_size=args.rows,
        max_train_samples=args.rows,
        tokenizer_name_or_path=gguf,
    )
    module = SFTModule(
        model_name_or_path=gguf,
        dtype="float32",
        attn_implementation="sdpa",
        optimizer=lambda params: SFTAdamW(params, lr=args.lr),
    )
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=1,
        precision="32-true",
        max_steps=args.steps,
        gradient_clip_val=args.clip,
        limit_val_batches=0,
        logger=False,
        callbacks=[
            Record(),
            pl.callbacks.ModelCheckpoint(dirpath=os.path.join(work, "ckpt"), save_last=True),
        ],
        enable_progress_bar=False,
        default_root_dir=work,
    )
    trainer.fit(module, datamodule=data)
    lrs = [group["lr"] for group in trainer.optimizers[0].param_groups]
    print(f"(a) final lr {lrs}, dropout config: attention_dropout={module.model.config.attention_dropout}")
    model_a = module.model

    # ------------------------------------------------------------------------------ (b) plain loop
    directory, filename = os.path.split(gguf)
    model_b = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=torch.float32, attn_implementation="sdpa"
    )
    model_b.hf_quantizer = None  # transformers' mark; the weights are plain float32 tensors
    print(
        f"tie_word_embeddings={model_b.config.tie_word_embeddings}, lm_head is embed_tokens: "
        f"{model_b.lm_head.weight is model_b.model.embed_tokens.weight}; (a): "
        f"{model_a.lm_head.weight is model_a.model.embed_tokens.weight}"
    )
    model_b.train()
    optimizer = torch.optim.AdamW(
        model_b.parameters(), lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0
    )
    losses_b: list[float] = []
    grads_b: list[dict[str, float]] = []
    for step, batch in enumerate(batches):
        # The recipe's schedule written out: warmup int(0.05 * steps) steps, then cosine to 0.
        warmup = int(0.05 * args.steps)
        if step < warmup:
            factor = (step + 1) / (warmup + 1)
        else:
            factor = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))
        for group in optimizer.param_groups:
            group["lr"] = args.lr * factor
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
        logits = model_b(**inputs, use_cache=False).logits.float()
        labels = batch["labels"]
        shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
        mask = shift_labels != -100
        loss = (
            torch.nn.functional.cross_entropy(shift_logits[mask], shift_labels[mask], reduction="sum")
            / mask.sum()
        )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        named = dict(model_b.named_parameters())
        norms = {name: float(named[name].grad.norm()) for name in PARAMS if name in named}
        norms["total"] = float(torch.nn.utils.clip_grad_norm_(model_b.parameters(), args.clip))
        grads_b.append(norms)
        optimizer.step()
        losses_b.append(loss.item())
        print(f"step {step}: lr {args.lr * factor:.3g}, targets {int(mask.sum())}, keys {sorted(batch)}")

    for step in range(len(batches)):
        print(
            f"step {step}: loss (a) {losses_a[step]:.6f} (b) {losses_b[step]:.6f} "
            f"rel {abs(losses_a[step] - losses_b[step]) / losses_b[step]:.2e}"
        )
        for name in grads_b[step]:
            a, b = grads_a[step][name], grads_b[step][name]
            print(f"    grad norm {name}: (a) {a:.6g} (b) {b:.6g} rel {abs(a - b) / max(b, 1e-12):.2e}")

    state_a, state_b = model_a.state_dict(), model_b.state_dict()
    initial = AutoModelForCausalLM.from_pretrained(
        directory, gguf_file=filename, dtype=torch.float32
    ).state_dict()
    worst = max(state_b, key=lambda n: float((state_a[n] - state_b[n]).abs().max()))
    moved = max(float((state_b[n] - initial[n]).abs().max()) for n in state_b)
    print(
        f"weights: max |a - b| {float((state_a[worst] - state_b[worst]).abs().max()):.3g} ({worst}); "
        f"max |b - initial| {moved:.3g}"
    )

    # --------------------------------------------------------------------------- export and answers
    [ckpt] = glob.glob(os.path.join(work, "ckpt", "last.ckpt"))
    out = os.path.join(work, "hf")
    export_checkpoint(ckpt, out)
    exported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    print(
        f"export: tie_word_embeddings={exported.config.tie_word_embeddings}, lm_head is embed_tokens: "
        f"{exported.lm_head.weight is exported.model.embed_tokens.weight}"
    )
    la, le, lb = (first_logits(m, tokenizer) for m in (model_a, exported, model_b))
    print(
        f"logits: max |export - (a)| {float((le - la).abs().max()):.3g}; max |(a) - (b)| {float((la - lb).abs().max()):.3g}"
    )
    original = AutoModelForCausalLM.from_pretrained(directory, gguf_file=filename, dtype=torch.float32)
    print(
        f"first answer token before training: {first_tokens(original, tokenizer)}; after (a): "
        f"{first_tokens(exported, tokenizer)}"
    )
    print(f"answer before training: {answer(original, tokenizer)!r}")
    print(f"answer (a) export:      {answer(exported, tokenizer)!r}")
    print(f"answer (a) in memory:   {answer(model_a, tokenizer)!r}")
    print(f"answer (b) plain loop:  {answer(model_b, tokenizer)!r}")


if __name__ == "__main__":
    main()
