"""Loss invariance across world size: 2 CPU processes (gloo) equal 1 process on the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.distributed import worker
from tests.helpers import arithmetic_rows, quiet_trainer, write_jsonl

WORKER = worker.__file__


def run_distributed(
    tmp_path,
    strategy: str,
    lora: bool,
    batch_size: int = 2,
    accumulate: int = 2,
    export: str | None = None,
    extra: tuple[str, ...] = (),
) -> dict:
    out = tmp_path / f"{strategy}-{lora}.pt"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", WORKER,
        "--data", str(tmp_path / "train.jsonl"), "--out", str(out), "--strategy", strategy,
        "--batch_size", str(batch_size), "--accumulate", str(accumulate),
    ] + (["--lora"] if lora else []) + (["--export", export] if export else []) + list(extra)  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.path.join(os.path.dirname(WORKER), "..", ".."),
    }
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=str(tmp_path))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    return torch.load(out)


def run_single(tmp_path, lora: bool, **options) -> dict:
    args = worker.argparse.Namespace(data=str(tmp_path / "train.jsonl"), batch_size=8, lora=lora, **options)
    module, data = worker.build(args)
    capture = worker.Capture()
    trainer = quiet_trainer(max_steps=1, callbacks=[capture])
    trainer.fit(module, datamodule=data)
    metrics = {name: float(trainer.callback_metrics[f"train/{name}"]) for name in worker.METRICS}
    return {**metrics, "grads": capture.grads, "module": module}


def assert_same_step(distributed: dict, single: dict) -> None:
    for name in worker.METRICS:
        assert distributed[name] == pytest.approx(single[name], rel=1e-5), name
    assert distributed["grads"].keys() == single["grads"].keys()
    for name, grad in single["grads"].items():
        scale = float(grad.abs().max())
        torch.testing.assert_close(distributed["grads"][name], grad, rtol=1e-4, atol=1e-5 * scale, msg=name)


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_ddp_on_two_processes_equals_one_process(tmp_path, lora: bool) -> None:
    """8 rows of different lengths per step: 2 ranks x 2 rows x 2 accumulation == 1 process x 8 rows."""
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8))
    assert_same_step(run_distributed(tmp_path, "ddp", lora), run_single(tmp_path, lora))


@pytest.mark.slow
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_fsdp2_on_two_processes_equals_one_process(tmp_path, lora: bool) -> None:
    """FSDP2 (fully_shard per decoder layer, gloo on CPU): the same loss and gradients as one process, and the
    Hugging Face export (gathered from the shards on rank 0) holds the same trained model."""
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8))
    export = str(tmp_path / "export")
    single = run_single(tmp_path, lora)
    assert_same_step(run_distributed(tmp_path, "fsdp2", lora, export=export), single)
    probe = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    exported = AutoModelForCausalLM.from_pretrained(f"{export}/final").eval()
    single["module"].eval()
    with torch.no_grad():
        torch.testing.assert_close(exported(probe).logits, single["module"](probe), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "attention"), [("ddp", "sdpa"), ("fsdp2", "eager"), ("ddp", "varlen")])
def test_sequence_parallel_equals_the_unsplit_sequence(tmp_path, strategy: str, attention: str) -> None:
    """Ulysses: one packed sequence of 8 rows split across 2 ranks (all-to-all attention) gives the loss and
    gradients of the whole sequence on one process."""
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(8))
    records = tmp_path / "gsm8k"
    options = ("--packing", "--sequence_parallel", "2", "--attention", attention, "--gsm8k", str(records))
    split = run_distributed(tmp_path, strategy, False, batch_size=8, accumulate=1, extra=options)
    whole = run_single(tmp_path, False, packing=True, attention=attention)
    assert_same_step(split, whole)
    # Generation switches back to unsplit attention: each rank decodes its own share of the questions.
    [path] = records.glob("step-*.jsonl")
    assert len(path.read_text().splitlines()) == 8


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "fsdp2"])
def test_a_rank_with_a_padding_micro_batch_does_not_stall_an_untied_head(tmp_path, strategy: str) -> None:
    """3 rows on 2 ranks: one rank's second micro-batch is padding (no targets). The untied LM head must
    still get a gradient there, or DDP's all-reduce waits forever and FSDP2's reduce-scatter fails."""
    write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(3))
    done = run_distributed(tmp_path, strategy, False, batch_size=1, accumulate=1, extra=("--max_steps", "2"))
    assert "model.lm_head.weight" in done["grads"]
