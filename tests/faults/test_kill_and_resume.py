"""Kill, preempt and resume real `lit-sft fit` processes; the finished run must equal an uninterrupted one."""

from __future__ import annotations

import glob
import signal

import pytest
import torch

from tests.faults.helpers import TOTAL_STEPS, config, fit, losses, weights


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    root = str(tmp_path_factory.mktemp("faults") / "uninterrupted")
    result = fit(config(root, every=3))
    assert result.returncode == 0, result.stderr[-3000:]
    assert sorted(losses(root)) == list(range(1, TOTAL_STEPS + 1))
    return root


def assert_same_run(resumed_root: str, reference_root: str, from_step: int) -> None:
    reference, resumed = losses(reference_root), losses(resumed_root)
    assert sorted(resumed) == list(range(1, TOTAL_STEPS + 1))
    assert {step: resumed[step] for step in range(from_step + 1, TOTAL_STEPS + 1)} == {
        step: reference[step] for step in range(from_step + 1, TOTAL_STEPS + 1)
    }
    expected, actual = weights(reference_root), weights(resumed_root)
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[name], actual[name]) for name in expected)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("every", "kill_at", "resumes_from"),
    [(4, 6, 4), (3, 7, 6)],
    ids=["mid-epoch", "epoch-boundary"],
)
def test_sigkill_then_resume_from_last(
    uninterrupted, tmp_path, every: int, kill_at: int, resumes_from: int
) -> None:
    root = str(tmp_path / "run")
    path = config(
        root,
        every,
        callbacks=[{"class_path": "tests.faults.injectors.KillAt", "init_args": {"step": kill_at}}],
    )
    killed = fit(path)
    assert killed.returncode == -signal.SIGKILL
    assert torch.load(f"{root}/checkpoints/last.ckpt", weights_only=False)["global_step"] == resumes_from
    resumed = fit(config(root, every), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(root, uninterrupted, resumes_from)


@pytest.mark.slow
def test_killed_while_writing_a_checkpoint_keeps_the_previous_one(uninterrupted, tmp_path) -> None:
    """Saves: step 3 (2 files: step=3 and last), step 6 (2), step 9 (step=9, then last: the 6th save is cut
    in half)."""
    root = str(tmp_path / "run")
    plugins = [{"class_path": "tests.faults.injectors.CrashingCheckpointIO", "init_args": {"crash_on": 6}}]
    killed = fit(config(root, 3, plugins=plugins))
    assert killed.returncode == -signal.SIGKILL
    assert glob.glob(f"{root}/checkpoints/*.tmp-*"), "the crash should have left a partial temporary file"
    assert torch.load(f"{root}/checkpoints/epoch=1-step=9.ckpt", weights_only=False)["global_step"] == 9
    assert torch.load(f"{root}/checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    resumed = fit(config(root, 3), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(root, uninterrupted, 6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["SIGTERM", "SIGUSR1"])
def test_a_preemption_signal_saves_a_checkpoint_and_stops_cleanly(uninterrupted, tmp_path, name: str) -> None:
    root = str(tmp_path / "run")
    callbacks = [{"class_path": "tests.faults.injectors.SignalAt", "init_args": {"step": 5, "name": name}}]
    stopped = fit(config(root, 4, callbacks=callbacks))
    assert stopped.returncode == 128 + getattr(signal, name), stopped.stderr[-3000:]
    assert f"lit-sft: stopped: {name} received: checkpoint of step 5 saved to" in stopped.stderr
    assert f"resume with --ckpt_path {root}/checkpoints/last.ckpt" in stopped.stderr
    assert "Traceback" not in stopped.stderr
    assert torch.load(f"{root}/checkpoints/last.ckpt", weights_only=False)["global_step"] == 5
    resumed = fit(config(root, 4), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert_same_run(root, uninterrupted, 5)
