"""Shared fixtures: tokenizers of three template families, tiny saved models, isolated caches."""

from __future__ import annotations

import os

import pytest
import torch

from tests.helpers import make_tokenizer, save_tiny_model

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")

# Two CPU cores: one intra-op thread per test process keeps runs reproducible and avoids oversubscription.
torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave ``gpu`` tests out unless ``-m`` names them (see the marker in pyproject.toml)."""
    if "gpu" in (config.getoption("markexpr") or ""):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") and not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")


@pytest.fixture(autouse=True)
def _isolated_caches(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test session gets its own datasets and lit_sft caches (never the user's ~/.cache)."""
    root = tmp_path_factory.getbasetemp()
    monkeypatch.setenv("HF_DATASETS_CACHE", str(root / "hf_datasets"))
    monkeypatch.setenv("LIT_SFT_CACHE", str(root / "lit_sft_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("WANDB_MODE", "offline")
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root / "hf_datasets"))


# What an in-process distributed run leaves behind: Lightning writes the rendezvous variables into os.environ and
# never destroys the process group, so a later test's init_process_group fails ("initialize the default
# process group twice") and a later torchrun/lit-sft subprocess inherits a MASTER_PORT that this process still
# listens on (EADDRINUSE). Both were seen in CI.
_LAUNCHER_VARIABLES = (
    "MASTER_ADDR",
    "MASTER_PORT",
    "RANK",
    "LOCAL_RANK",
    "WORLD_SIZE",
    "LOCAL_WORLD_SIZE",
    "NODE_RANK",
)


@pytest.fixture(autouse=True)
def _no_leftover_process_group():
    """Each test starts without a process group or launcher variables it did not set itself."""
    saved = {name: os.environ.get(name) for name in _LAUNCHER_VARIABLES}
    yield
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(params=["qwen", "llama3", "gemma"])
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def tokenizer(family: str):
    return make_tokenizer(family)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny Qwen2 model and ChatML tokenizer saved with save_pretrained (a stand-in for a Hub model)."""
    return save_tiny_model(str(tmp_path_factory.mktemp("tiny-qwen")), "qwen")


@pytest.fixture(scope="session")
def gsm8k_dir() -> str:
    path = os.path.abspath(os.path.join(SHARED_DATA, "gsm8k"))
    assert os.path.isdir(path), (
        f"the GSM8K files are expected at {path} (the shared/ folder beside the checkout)"
    )
    return path


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory):
    """``tokenizer_dir(family)``: a directory holding that family's tokenizer (save_pretrained)."""
    saved: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in saved:
            directory = str(tmp_path_factory.mktemp(f"tokenizer-{family}"))
            make_tokenizer(family).save_pretrained(directory)
            saved[family] = directory
        return saved[family]

    return get
