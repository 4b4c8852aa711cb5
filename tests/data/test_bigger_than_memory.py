"""A dataset bigger than the memory a run may use still trains (issue 21): the rows are streamed to an Arrow
file and memory-mapped, never held as Python objects.

The run is a subprocess whose data segment (``RLIMIT_DATA``: heap and private anonymous memory, which a
memory-mapped file is not) may grow by only half the file's size once its imports are done. The reader that
gathered every row first needed about six times the file.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import datasets
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CHILD = r"""
import resource, sys
from lit_sft.commands.fit import main  # every heavy import happens here, before the cap

def data_segment() -> int:
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmData:")) * 1024

cli = main(sys.argv[2:], run=False)  # the model, trainer and data module, before any row is read
allowance = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_DATA, (data_segment() + allowance, resource.RLIM_INFINITY))
cli.trainer.fit(cli.model, datamodule=cli.datamodule)
print("TRAINED", cli.trainer.global_step)
"""


def write_rows(path: str, megabytes: int) -> int:
    """Short arithmetic conversations (about 200 bytes each) up to ``megabytes``; returns the file size."""
    with open(path, "w", encoding="utf-8") as handle:
        index = 0
        while handle.tell() < megabytes * 2**20:
            a, b = index % 997, index % 89
            row = {"messages": [{"role": "user", "content": f"Row {index}: what is {a} + {b}?"},
                                {"role": "assistant", "content": f"{a} + {b} = {a + b}. The answer is {a + b}."}]}  # fmt: skip
            handle.write(json.dumps(row) + "\n")
            index += 1
    return os.path.getsize(path)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_DATA and /proc are Linux's")
def test_a_file_larger_than_the_memory_the_run_may_use_trains(tmp_path) -> None:
    path = str(tmp_path / "big.jsonl")
    size = write_rows(path, 160)
    command = [sys.executable, "-c", CHILD, str(size // 2),
               "--config", os.path.join(ROOT, "configs", "quickstart.yaml"),
               "--data", "lit_sft.SFTDataModule", "--data.init_args.train_files", path, "--data.init_args.val_files", "null",
               "--data.init_args.max_train_samples", "256", "--data.init_args.batch_size", "8", "--data.init_args.cache_dir", str(tmp_path / "cache"),
               "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.num_sanity_val_steps", "0",
               "--trainer.callbacks", "[]", "--model.init_args.model_config.hidden_size", "32",
               "--model.init_args.model_config.intermediate_size", "64",
               "--model.init_args.model_config.num_hidden_layers", "1", "--trainer.default_root_dir", str(tmp_path / "run")]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=1200, env=env, cwd=ROOT, check=False
    )
    assert done.returncode == 0 and "TRAINED 2" in done.stdout, done.stderr[-1500:]
    with open(path, encoding="utf-8") as handle:
        rows = sum(1 for _ in handle)
    cached = glob.glob(str(tmp_path / "cache" / "lit_sft_rows" / "*" / "rows-*.arrow"))
    assert sum(len(datasets.Dataset.from_file(file)) for file in cached) == rows  # every row, within the cap
