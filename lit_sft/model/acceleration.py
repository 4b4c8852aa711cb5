"""Speed and memory options of `SFTModule`: regional ``torch.compile`` and activation offloading."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

import torch

from lit_sft.errors import ConfigError
from lit_sft.model.hf import base_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def decoder_layers(model: PreTrainedModel) -> list[torch.nn.Module]:
    """The model's repeated blocks: the modules whose class the model names in ``_no_split_modules`` (the
    decoder layers; a vision-language model's vision blocks too)."""
    names = set(getattr(base_model(model), "_no_split_modules", None) or ())
    return [module for module in model.modules() if type(module).__name__ in names]


def compile_layers(model: PreTrainedModel, **options: Any) -> int:
    """Compile every decoder layer in place (``nn.Module.compile``): regional compilation, one graph that every
    layer of the same shape reuses, so compiling takes seconds rather than minutes; parameter names and
    checkpoints are unchanged. ``options`` go to ``torch.compile`` (``backend``, ``mode``...). Returns how many
    layers were compiled.

    Raises:
        ConfigError: When the model names no repeated blocks to compile.
    """
    layers = decoder_layers(model)
    if not layers:
        raise ConfigError(
            f"model.torch_compile: {type(base_model(model)).__name__} names no decoder layers (_no_split_modules)"
        )
    for layer in layers:
        layer.compile(**options)
    return len(layers)


class ActivationOffloading(torch.autograd.graph.saved_tensors_hooks):
    """Moves the tensors autograd saves for the backward pass to CPU memory (pinned when they come from a
    GPU) and brings each back when the backward pass needs it.

    Parameters are not moved (they stay where they are anyway), nor tensors under ``min_bytes`` (not worth
    a transfer). Copies are issued on the current stream, so they are ordered with the kernels around them.

    Attributes:
        offloaded: How many tensors were moved since the context was entered.
    """

    def __init__(self, min_bytes: int = 1024) -> None:
        self.min_bytes = min_bytes
        self.offloaded = 0
        super().__init__(self._pack, self._unpack)

    def _pack(self, tensor: torch.Tensor) -> object:
        if isinstance(tensor, torch.nn.Parameter) or tensor.numel() * tensor.element_size() < self.min_bytes:
            return tensor
        self.offloaded += 1
        if tensor.device.type == "cpu":
            return (tensor.device, tensor.clone())  # already in CPU memory: a copy keeps the same semantics
        host = torch.empty(tensor.size(), dtype=tensor.dtype, layout=tensor.layout, pin_memory=True)
        host.copy_(tensor, non_blocking=True)
        return (tensor.device, host)

    @staticmethod
    def _unpack(packed: object) -> torch.Tensor:
        if isinstance(packed, torch.Tensor):
            return packed
        device, host = cast(tuple[torch.device, torch.Tensor], packed)
        return host.to(device, non_blocking=True)


@contextlib.contextmanager
def offload_activations(enabled: bool) -> Iterator[ActivationOffloading | None]:
    """`ActivationOffloading` around a forward pass when ``enabled``; nothing otherwise."""
    if not enabled:
        yield None
        return
    hooks = ActivationOffloading()
    with hooks:
        yield hooks
