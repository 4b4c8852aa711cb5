"""What lit_sft needs to know about the structure of a Hugging Face causal LM beyond ``from_pretrained``.

* The model inside a peft wrapper (`base_model`).
* The split into decoder (hidden states) and LM head, so that the loss can compute logits for target
  positions only, in chunks; checked numerically against the model's own logits before use.
* A check that packed rows do not attend to each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from lit_sft.batch import TextBatch, packed_batch
from lit_sft.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = logging.getLogger("lit_sft")


def base_model(model: PreTrainedModel) -> PreTrainedModel:
    """The Hugging Face model inside a peft wrapper (the model itself otherwise)."""
    # Looked up with getattr: nn.Module.__getattr__ would type the method as a Tensor or Module.
    get_base_model = getattr(model, "get_base_model", None)
    return get_base_model() if get_base_model is not None else model


def logits_postprocess(config: Any) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """What some families apply between the LM head and the logits (Gemma's soft-capping, scaling)."""
    steps: list[Callable[[torch.Tensor], torch.Tensor]] = []
    scale = getattr(config, "logit_scale", None)  # Cohere multiplies
    if isinstance(scale, int | float) and scale != 1:
        steps.append(lambda logits: logits * scale)
    divisor = getattr(config, "logits_scaling", None)  # Granite divides
    if isinstance(divisor, int | float) and divisor != 1:
        steps.append(lambda logits: logits / divisor)
    cap = getattr(config, "final_logit_softcapping", None)  # Gemma 2 and 3
    if isinstance(cap, int | float) and cap:
        steps.append(lambda logits: torch.tanh(logits / cap) * cap)
    if not steps:
        return None

    def apply(logits: torch.Tensor) -> torch.Tensor:
        for step in steps:
            logits = step(logits)
        return logits

    return apply


class NotHeadOfDecoder(Exception):
    """The model's logits cannot be computed from its decoder's output (the message says why)."""


@dataclass
class HiddenStatePath:
    """The decoder and LM head of a model, for computing logits of selected positions only.

    Hidden states are taken from the decoder's output during a forward pass of the *whole* model (with
    ``logits_to_keep=1``, so the head runs on one position only): going through the top-level forward keeps
    wrappers around it working (FSDP2 gathers the parameters its root owns, peft routes through adapters).

    Attributes:
        model: The whole model (called).
        decoder: The module whose output is the final hidden states (``model.get_decoder()``).
        head: The LM head (``model.get_output_embeddings()``).
        postprocess: Applied to the head's output (None: nothing).
    """

    model: torch.nn.Module
    decoder: torch.nn.Module
    head: torch.nn.Module
    postprocess: Callable[[torch.Tensor], torch.Tensor] | None

    def hidden_states(self, input_ids: torch.Tensor, **inputs: Any) -> torch.Tensor:
        """The decoder's last hidden states; ``inputs`` are the model's other inputs (mask, positions...)."""
        captured: list[torch.Tensor] = []

        def keep(module: torch.nn.Module, args: Any, output: Any) -> None:
            captured.append(output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0])

        handle = self.decoder.register_forward_hook(keep)
        try:
            self.model(
                input_ids=input_ids,
                use_cache=False,
                logits_to_keep=1,
                **inputs,
            )
        finally:
            handle.remove()
        if not captured:
            raise NotHeadOfDecoder("the decoder of get_decoder() does not run in the model's forward")
        return captured[-1]

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self.head(hidden)
        return self.postprocess(logits) if self.postprocess is not None else logits


@torch.no_grad()
def hidden_state_path(model: PreTrainedModel) -> HiddenStatePath | None:
    """The model's decoder/head split, if its logits really are ``head(decoder(...))`` (checked on a tiny
    input); None when the model lacks the accessors, takes no ``logits_to_keep``, or computes its logits
    some other way."""
    base = base_model(model)
    try:
        decoder, head = base.get_decoder(), base.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        return None
    if decoder is None or head is None or decoder is base:
        return None
    path = HiddenStatePath(model, decoder, head, logits_postprocess(base.config))
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    input_ids = torch.randint(0, head.weight.shape[0], (1, 6), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    try:
        expected = model(input_ids=input_ids, use_cache=False).logits.float()
        actual = path.logits(path.hidden_states(input_ids)).float()
    except (TypeError, NotHeadOfDecoder) as error:
        # The expected mismatches: a forward that takes no ``logits_to_keep``, a decoder that is not on the
        # forward's path. Anything else is a real error of the model, not a reason to change the loss.
        if isinstance(error, TypeError) and "logits_to_keep" not in str(error):
            raise
        log.warning(f"lit_sft: the chunked loss is off for this model ({type(error).__name__}: {error})")
        return None
    finally:
        model.train(was_training)
    scale = max(float(expected.abs().max()), 1.0)
    if expected.shape != actual.shape or float((expected - actual).abs().max()) > 1e-4 * scale:
        log.warning("lit_sft: the chunked loss is off: this model's logits are not lm_head(hidden states)")
        return None
    return path


@torch.no_grad()
def check_packed_attention(
    model: PreTrainedModel,
    attn_implementation: str | None = None,
    packed_inputs: Callable[[TextBatch], dict[str, Any]] | None = None,
) -> None:
    """Verify that packed rows do not attend to each other in this model.

    Two short random rows are run separately and packed (``position_ids`` restarting, no attention mask,
    no cache); their logits must agree. Transformers builds the block-diagonal mask from ``position_ids``
    for its own attention implementations; a model with custom attention code may not, and would then
    silently train every row on its neighbours. ``packed_inputs`` turns the packed probe batch (a `TextBatch`
    from `lit_sft.batch.packed_batch`) into model inputs as training does (`SFTModule.model_inputs`); by
    default its ``position_ids`` go in as they are.

    Raises:
        ConfigError: When the packed logits differ.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    # Low ids: ordinary tokens in every vocabulary (no image placeholders, which would want pixels).
    # An nn.Embedding (transformers types the accessor as returning any nn.Module).
    num_embeddings: int = model.get_input_embeddings().num_embeddings  # type: ignore[assignment]
    vocab = min(num_embeddings, 256)
    generator = torch.Generator().manual_seed(0)
    first, second = (torch.randint(0, vocab, (1, n), generator=generator).to(device) for n in (5, 7))
    batch = packed_batch([first, second])
    inputs = packed_inputs(batch) if packed_inputs is not None else {"position_ids": batch["position_ids"]}
    alone = [model(input_ids=row, use_cache=False).logits.float() for row in (first, second)]
    together = model(input_ids=batch["input_ids"], use_cache=False, **inputs).logits.float()
    model.train(was_training)
    difference = max((together[:, :5] - alone[0]).abs().max(), (together[:, 5:] - alone[1]).abs().max())
    scale = max(alone[0].abs().max(), alone[1].abs().max(), torch.tensor(1.0, device=device))
    if difference > 1e-3 * scale:
        raise ConfigError(
            f"packing: this model (attn_implementation={attn_implementation!r}) lets packed rows attend to each "
            f"other (logits differ by {float(difference):.3g}); use sdpa, flash_attention_2 or flex_attention, "
            "or set data.packing=false"
        )
