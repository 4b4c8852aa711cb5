"""FSDP2 through the real `lit-sft fit` under torchrun: sharded checkpoints resume exactly after a kill
(each rank's RNG state included: with dropout, ranks draw different masks)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from tests.faults.helpers import TOTAL_STEPS, config, fit, losses

FSDP2 = {"class_path": "lit_sft.training.strategies.FSDP2Strategy"}
EXPORT = {"class_path": "lit_sft.callbacks.HFExport"}
PROBE = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])


def exported_logits(root: str) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(f"{root}/hf/final").eval()
    with torch.no_grad():
        return model(PROBE).logits


@pytest.mark.slow
def test_fsdp2_sharded_checkpoint_resumes_exactly_and_exports_the_full_model(tmp_path) -> None:
    reference = str(tmp_path / "reference")
    done = fit(config(reference, 3, callbacks=[EXPORT], strategy=FSDP2), processes=2)
    assert done.returncode == 0, done.stderr[-4000:]
    assert (tmp_path / "reference" / "checkpoints" / "last.ckpt").is_dir()  # a sharded checkpoint

    root = str(tmp_path / "run")
    kill = {"class_path": "tests.faults.injectors.KillAt", "init_args": {"step": 5}}
    killed = fit(config(root, 3, callbacks=[EXPORT, kill], strategy=FSDP2), processes=2)
    assert killed.returncode != 0
    resumed = fit(config(root, 3, callbacks=[EXPORT], strategy=FSDP2), "--ckpt_path", "last", processes=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]

    expected, actual = losses(reference), losses(root)
    assert sorted(actual) == list(range(1, TOTAL_STEPS + 1))
    assert {step: actual[step] for step in range(4, TOTAL_STEPS + 1)} == {
        step: expected[step] for step in range(4, TOTAL_STEPS + 1)
    }
    torch.testing.assert_close(exported_logits(root), exported_logits(reference), rtol=0, atol=0)


@pytest.mark.slow
def test_a_kill_while_saving_a_sharded_checkpoint_keeps_the_previous_one(tmp_path) -> None:
    """Saves: step 3 (step=3, last), step 6 (step=6, then last: killed after the shards, before the metadata)."""
    reference = str(tmp_path / "reference")
    assert fit(config(reference, 3, strategy=FSDP2), processes=2).returncode == 0
    root = str(tmp_path / "run")
    kill = {"class_path": "tests.faults.injectors.KillInShardedSave", "init_args": {"nth": 4}}
    killed = fit(config(root, 3, callbacks=[kill], strategy=FSDP2), processes=2)
    assert killed.returncode != 0
    checkpoints = tmp_path / "run" / "checkpoints"
    assert (
        checkpoints / "last.ckpt.saving"
    ).is_dir()  # step 6's partial save sits beside last.ckpt, not in it
    assert torch.load(checkpoints / "last.ckpt" / "meta.pt", weights_only=False)["global_step"] == 3
    resumed = fit(config(root, 3, strategy=FSDP2), "--ckpt_path", "last", processes=2)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    expected, actual = losses(reference), losses(root)
    assert {step: actual[step] for step in range(4, TOTAL_STEPS + 1)} == {
        step: expected[step] for step in range(4, TOTAL_STEPS + 1)
    }
