"""NEFTune (Jain et al. 2023, arXiv:2310.05914): uniform noise on the input embeddings while training.

transformers' own hook (``neftune_post_forward_hook``) draws the noise; it is called only inside
`NEFTune.noisy`, which `SFTModule.training_step` enters around the loss, so that validation, generation
(the GSM8K callback) and export never see noise whatever mode the model is in. The noise comes from the
global torch RNG of the embedding's device, whose state `SFTModule` checkpoints for every rank: a resumed run
draws exactly the noise of the uninterrupted one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch

from lit_sft.model.hf import base_model

if TYPE_CHECKING:
    from transformers import PreTrainedModel

try:
    from transformers.integrations.neftune import neftune_post_forward_hook
except ImportError:  # transformers < 5
    from transformers.trainer_utils import (  # type: ignore[no-redef,attr-defined]
        neftune_post_forward_hook,
    )

__all__ = ["NEFTune"]


class NEFTune:
    """Adds NEFTune noise to a model's input embeddings, inside `noisy` only.

    Args:
        noise_alpha: The noise scale ``alpha``: each embedding value gets ``U(-m, m)`` noise with
            ``m = alpha / sqrt(length * hidden_size)``, ``length`` the micro-batch's row length (padded or
            packed, as in transformers; a rank's slice with sequence parallelism). None or 0: no noise.
    """

    def __init__(self, noise_alpha: float | None) -> None:
        self.noise_alpha = noise_alpha
        self.active = False
        self._handle: Any = None

    def attach(self, model: PreTrainedModel) -> None:
        """Hook the input embeddings of ``model`` (a transformers model, or a peft model around one)."""
        if not self.noise_alpha:
            return
        embeddings = base_model(model).get_input_embeddings()
        embeddings.neftune_noise_alpha = self.noise_alpha  # type: ignore[assignment]  # read by the HF hook

        def hook(module: torch.nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
            if not self.active:
                return output
            return neftune_post_forward_hook(module, args, output)

        self._handle = embeddings.register_forward_hook(hook)

    @contextlib.contextmanager
    def noisy(self) -> Iterator[None]:
        """Noise on the embeddings within this context (when the model is in training mode)."""
        self.active = bool(self.noise_alpha)
        try:
            yield
        finally:
            self.active = False
