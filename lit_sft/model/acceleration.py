"""Speed and memory options of `SFTModule`: regional ``torch.compile`` and activation offloading."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
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

    What stays on the device (`stays`): parameters and views of them (they stay where they are anyway),
    autocast's copies of the parameters in the lower precision (under ``bf16-mixed`` with float32 weights,
    every matrix multiplication saves one: moving them would send the whole model across PCIe twice a
    step), and tensors under ``min_bytes`` (not worth a transfer). Copies are issued on the current stream,
    so they are ordered with the kernels around them.

    Args:
        min_bytes: Smaller tensors stay on the device.
        parameters: The model's parameters, whose autocast copies stay on the device.

    Attributes:
        offloaded: How many tensors were moved since the context was entered.
    """

    def __init__(self, min_bytes: int = 1024, parameters: Iterable[torch.Tensor] = ()) -> None:
        self.min_bytes = min_bytes
        self.offloaded = 0
        #: The parameters' shapes, with their dtypes: a cast has a parameter's shape in another dtype.
        self._parameter_dtypes: dict[tuple[int, ...], set[torch.dtype]] = {}
        for parameter in parameters:
            self._parameter_dtypes.setdefault(tuple(parameter.shape), set()).add(parameter.dtype)
        super().__init__(self._pack, self._unpack)

    def parameter_cast(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` is (a view of) a parameter or of autocast's copy of one in another dtype.

        Autocast's copy of a trainable parameter comes from a cast (``ToCopyBackward0``) of a leaf of the
        graph; a frozen parameter's copy has no graph at all. Either must have a parameter's shape (an
        activation has batch dimensions) in a dtype that parameter does not have.
        """
        base = tensor._base if tensor._base is not None else tensor
        if isinstance(base, torch.nn.Parameter):
            return True
        dtypes = self._parameter_dtypes.get(tuple(base.shape))
        if dtypes is None or base.dtype in dtypes:
            return False
        node = base.grad_fn
        if node is None:
            return not base.requires_grad
        return type(node).__name__ == "ToCopyBackward0" and any(
            type(source).__name__ == "AccumulateGrad"
            for source, _ in node.next_functions
            if source is not None
        )

    def stays(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` stays on the device rather than being offloaded."""
        return tensor.numel() * tensor.element_size() < self.min_bytes or self.parameter_cast(tensor)

    def _pack(self, tensor: torch.Tensor) -> object:
        if self.stays(tensor):
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
def offload_activations(
    enabled: bool, model: torch.nn.Module | None = None
) -> Iterator[ActivationOffloading | None]:
    """`ActivationOffloading` around a forward pass of ``model`` when ``enabled``; nothing otherwise."""
    if not enabled:
        yield None
        return
    hooks = ActivationOffloading(parameters=model.parameters() if model is not None else ())
    with hooks:
        yield hooks
