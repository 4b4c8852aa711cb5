"""Strategy presets build, and scripts/run_sft.sh launches (and resumes) a multi-process run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from jsonargparse import ArgumentParser
from lightning.pytorch.strategies import Strategy

from lit_sft.errors import ConfigError
from lit_sft.training.strategies import (
    FSDP2Strategy,
    FSDPStrategyPreset,
    _by_name_policy,
    decoder_layer_names,
)
from tests.helpers import tiny_model_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PRESETS = os.path.join(ROOT, "configs", "strategies")


@pytest.mark.parametrize("name", ["ddp.yaml", "fsdp.yaml", "fsdp2.yaml"])
def test_every_strategy_preset_parses_and_builds(name: str) -> None:
    with open(os.path.join(PRESETS, name), encoding="utf-8") as handle:
        strategy = yaml.safe_load(handle)["trainer"]["strategy"]
    parser = ArgumentParser()
    parser.add_argument("--strategy", type=Strategy | str)
    built = parser.instantiate_classes(parser.parse_object({"strategy": strategy})).strategy
    if name == "ddp.yaml":
        assert built == "ddp"
    elif name == "fsdp.yaml":
        assert isinstance(built, FSDPStrategyPreset) and built.kwargs["use_orig_params"] is True
        assert (
            built.mixed_precision.param_dtype == torch.bfloat16
            and built.mixed_precision.reduce_dtype == torch.float32
        )
    else:
        assert (
            isinstance(built, FSDP2Strategy)
            and built.param_dtype == "bfloat16"
            and built._tensor_parallel_size == 1
        )


def test_presets_find_the_decoder_layers_of_the_model() -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    values = tiny_model_config()
    model = AutoModelForCausalLM.from_config(
        AutoConfig.for_model(values.pop("model_type"), vocab_size=64, **values)
    )
    assert decoder_layer_names(model) == {"Qwen2DecoderLayer"}
    preset = FSDPStrategyPreset()
    preset._layer_names = decoder_layer_names(model)
    wrapped = [
        type(m).__name__
        for m in model.modules()
        if _by_name_policy(preset, m, recurse=False, nonwrapped_numel=0)
    ]
    assert wrapped == ["Qwen2DecoderLayer", "Qwen2DecoderLayer"]
    with pytest.raises(ConfigError, match="no decoder layer class to shard"):
        decoder_layer_names(model, ["NotALayer"])


@pytest.mark.slow
def test_run_sft_sh_launches_two_processes_and_resumes(tmp_path) -> None:
    from tests.faults.helpers import config

    path = config(
        str(tmp_path / "cfg"), 2, strategy={"class_path": "lit_sft.training.strategies.FSDP2Strategy"}
    )
    env = {
        **os.environ,
        "NPROC_PER_NODE": "2",
        "NNODES": "1",
        "MASTER_PORT": "29533",
        "CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "PYTHONPATH": ROOT,
        "OMP_NUM_THREADS": "1",
        "PYTHON": sys.executable,
    }
    command = ["bash", os.path.join(ROOT, "scripts", "run_sft.sh"), path, "--trainer.max_steps", "2"]
    first = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (tmp_path / "ckpt" / "checkpoints" / "last.ckpt").exists()  # CHECKPOINT_DIR moved the outputs
    command[-1] = "4"
    second = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "run_sft.sh: resuming from" in second.stdout
    assert "Restoring states from the checkpoint path" in second.stdout + second.stderr


# A stand-in for the environment's interpreter: ``-m torch.distributed.run`` parses the options of one torch
# release's torchrun with argparse, as torchrun does (so an option that release lacks fails the launch with
# "unrecognized arguments"), and records what it was given instead of launching; anything else runs the real
# interpreter.
FAKE_PYTHON = """#!{python}
import argparse, json, os, sys

if sys.argv[1:3] != ["-m", "torch.distributed.run"]:
    os.execv({python!r}, [{python!r}, *sys.argv[1:]])
parser = argparse.ArgumentParser(prog="torchrun")
for option in {options!r}:
    parser.add_argument(option)
parser.add_argument("-m", "--module", action="store_true")
parser.add_argument("training_script")
parser.add_argument("training_script_args", nargs=argparse.REMAINDER)
parser.parse_args(sys.argv[3:])
with open(os.environ["TORCHRUN_ARGUMENTS"], "w") as handle:
    json.dump(sys.argv[3:], handle)
"""
TORCHRUN_2_11 = [
    "--nnodes",
    "--nproc_per_node",
    "--node_rank",
    "--master_addr",
    "--master_port",
    "--signals-to-handle",
]


def launch_with_a_fake_torchrun(
    tmp_path, options: list[str]
) -> tuple[subprocess.CompletedProcess, list[str]]:
    python = tmp_path / "python"
    python.write_text(FAKE_PYTHON.format(python=sys.executable, options=options))
    python.chmod(0o755)
    env = {
        **os.environ,
        "PYTHON": str(python),
        "NPROC_PER_NODE": "2",
        "SHUTDOWN_TIMEOUT": "77",
        "TORCHRUN_ARGUMENTS": str(tmp_path / "arguments.json"),
    }
    command = ["bash", os.path.join(ROOT, "scripts", "run_sft.sh"), "recipe.yaml", "--trainer.max_steps", "2"]
    launched = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    with open(tmp_path / "arguments.json", encoding="utf-8") as handle:
        return launched, json.load(handle)


def test_run_sft_sh_launches_with_torch_2_11s_torchrun_which_has_no_shutdown_timeout(tmp_path) -> None:
    launched, arguments = launch_with_a_fake_torchrun(tmp_path, TORCHRUN_2_11)
    assert "--shutdown-timeout" not in arguments
    assert arguments[arguments.index("--signals-to-handle") + 1] == "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    assert arguments[arguments.index("-m") + 1 :][:4] == ["lit_sft", "fit", "--config", "recipe.yaml"]
    assert "no --shutdown-timeout (torch < 2.12): workers get its fixed 30 s" in launched.stderr


def test_run_sft_sh_gives_the_workers_shutdown_timeout_where_torchrun_has_it(tmp_path) -> None:
    launched, arguments = launch_with_a_fake_torchrun(tmp_path, [*TORCHRUN_2_11, "--shutdown-timeout"])
    assert arguments[arguments.index("--shutdown-timeout") + 1] == "77"
    assert "--signals-to-handle" in arguments and "torchrun has no" not in launched.stderr


def test_the_entry_point_leaves_the_process_group_before_exiting(tmp_path, monkeypatch) -> None:
    # A live group at interpreter exit lets one rank's transport threads abort on its peer's closed socket.
    from lit_sft.commands import fit as cli

    def fit_that_joins_a_group(args: object = None) -> None:  # what Lightning leaves behind after fit
        torch.distributed.init_process_group(
            "gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1
        )

    monkeypatch.setattr(cli, "main", fit_that_joins_a_group)
    cli.entry_point(["fit"])
    assert not torch.distributed.is_initialized()
    cli.close_process_group()  # nothing to leave: a no-op


@pytest.mark.slow
def test_run_sft_sh_forwards_slurms_sigusr1_so_the_workers_save_and_stop(tmp_path) -> None:
    """torchrun forwards only SIGTERM/SIGINT/SIGHUP/SIGQUIT unless told; SIGUSR1 would kill the launcher
    and leave the workers running without a checkpoint."""
    import contextlib
    import glob
    import signal
    import time

    from tests.faults.helpers import config

    path = config(str(tmp_path / "cfg"), 2, strategy="ddp")
    env = {
        **os.environ,
        "NPROC_PER_NODE": "2", "NNODES": "1", "MASTER_PORT": "29534", "CHECKPOINT_DIR": str(tmp_path / "ckpt"),
        "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable,
    }  # fmt: skip
    command = ["bash", os.path.join(ROOT, "scripts", "run_sft.sh"), path, "--trainer.max_steps", "100000"]
    launcher = subprocess.Popen(
        command,
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: nothing outlives the test
    )
    try:
        deadline = time.monotonic() + 240
        while not glob.glob(str(tmp_path / "ckpt" / "checkpoints" / "*step=2.ckpt")):
            assert launcher.poll() is None and time.monotonic() < deadline, "the run ended before step 2"
            time.sleep(0.2)
        launcher.send_signal(signal.SIGUSR1)  # bash exec'd torchrun: this is the launcher
        _, stderr = launcher.communicate(timeout=240)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
    assert "lit-sft: stopped: SIGUSR1 received: checkpoint of step" in stderr, stderr[-3000:]
    step = torch.load(tmp_path / "ckpt" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"]
    assert 2 <= step < 100000
