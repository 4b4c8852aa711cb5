"""Vision fixtures: the tiny Qwen2-VL processor saved to a directory, and ``AutoProcessor`` able to load it
on this torchvision-less machine."""

from __future__ import annotations

import pytest

from lit_sft.hub import save_processor
from tests.vision.helpers import load_saved_processor, make_processor


@pytest.fixture(autouse=True)
def _auto_processor_without_torchvision(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    monkeypatch.setattr(transformers.AutoProcessor, "from_pretrained", staticmethod(load_saved_processor))


@pytest.fixture(scope="session")
def processor_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    directory = str(tmp_path_factory.mktemp("tiny-qwen2-vl-processor"))
    save_processor(make_processor(), directory)
    return directory


@pytest.fixture(scope="session")
def vlm_dir(processor_dir: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A tiny random Qwen2-VL saved with save_pretrained, its processor beside it (a Hub model stand-in)."""
    import torch

    from lit_sft.model.vision import VisionSFTModule
    from tests.vision.helpers import vision_model_config

    directory = str(tmp_path_factory.mktemp("tiny-qwen2-vl"))
    torch.manual_seed(0)
    module = VisionSFTModule(processor_name_or_path=processor_dir, model_config=vision_model_config())
    module._processor = load_saved_processor(processor_dir)  # session scope: AutoProcessor is not patched yet
    module.build_model().save_pretrained(directory)
    save_processor(module.processor, directory)
    return directory
