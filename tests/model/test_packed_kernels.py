"""Which kernel runs a packed batch, and what it receives: the choice as CUDA would make it (checked on CPU
through `choose_packed_kernel`), autocast's mixed dtypes unified before it, flex's document block mask built
from the row offsets (never total×total), and ``auto`` on CPU keeping packed attention per row."""

from __future__ import annotations

import inspect
import itertools
import random
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything
from torch.nn.attention.flex_attention import create_block_mask
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from lit_sft import SFTModule
from lit_sft.batch import row_offsets
from lit_sft.model import attention
from lit_sft.model.attention import choose_packed_kernel, document_block_mask, resolve_attention
from tests.helpers import arithmetic_data, arithmetic_rows, tiny_model_config, write_jsonl
from tests.model.test_attention import rows_reference

BF16, FP32 = torch.bfloat16, torch.float32
#: ``varlen_attn``'s parameters by release: 2.10 (no window, no GQA), 2.11/2.12 (window, no GQA), 2.13.
VARLEN_2_10 = frozenset(
    {"query", "key", "value", "cu_seq_q", "cu_seq_k", "max_q", "max_k", "is_causal", "scale"}
)
VARLEN_2_11 = VARLEN_2_10 - {"is_causal"} | {"window_size"}
VARLEN_2_13 = VARLEN_2_11 | {"enable_gqa"}


@pytest.mark.parametrize(
    ("device", "dtypes", "varlen", "window", "dropout", "expected"),
    [
        ("cuda", (BF16,) * 3, VARLEN_2_13, None, 0.0, "varlen"),
        ("cuda", (BF16,) * 3, None, None, 0.0, "flex"),  # no varlen_attn in this PyTorch
        ("cuda", (FP32, FP32, BF16), VARLEN_2_13, None, 0.0, "sdpa"),  # mixed: no kernel takes them
        ("cuda", (FP32,) * 3, VARLEN_2_13, None, 0.0, "sdpa"),  # the start-up probe: no flex compile
        ("cuda", (FP32,) * 3, None, None, 0.0, "sdpa"),
        ("cuda", (BF16,) * 3, VARLEN_2_10, 4096, 0.0, "flex"),  # the kernel would drop the window
        ("cuda", (BF16,) * 3, VARLEN_2_10, None, 0.0, "varlen"),
        ("cuda", (BF16,) * 3, VARLEN_2_11, 4096, 0.0, "varlen"),
        ("cuda", (BF16,) * 3, VARLEN_2_13, None, 0.1, "sdpa"),  # attention dropout
        ("cpu", (BF16,) * 3, VARLEN_2_13, None, 0.0, "sdpa"),
    ],
)
def test_the_kernel_choice(device, dtypes, varlen, window, dropout, expected) -> None:
    assert choose_packed_kernel(device, dtypes, varlen, True, dropout, window) == expected


def test_the_start_up_probe_in_float32_on_cuda_does_not_reach_flex(monkeypatch) -> None:
    """What ``packed_kernel`` asks of `choose_packed_kernel` for a float32 probe with no varlen_attn."""
    monkeypatch.setattr(attention, "has_varlen_kernel", lambda: False)
    seen = []

    def as_on_cuda(device_type, *args):
        seen.append(choose_packed_kernel("cuda", *args))
        return "sdpa"

    monkeypatch.setattr(attention, "choose_packed_kernel", as_on_cuda)
    probe = torch.zeros(1, 2, 4, 8)
    attention.packed_kernel(probe, 0.0, probe, probe)
    assert seen == ["sdpa"]


class Shapes(TorchDispatchMode):
    """Records the shape of every tensor an operation returns."""

    def __init__(self) -> None:
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        output = func(*args, **(kwargs or {}))
        self.shapes += [tuple(t.shape) for t in tree_flatten(output)[0] if isinstance(t, torch.Tensor)]
        return output

    def square(self, total: int) -> list[tuple[int, ...]]:
        """Shapes with two dimensions of at least ``total``: an O(total²) tensor."""
        return [shape for shape in self.shapes if sum(size >= total for size in shape) >= 2]


def document_mask(lengths: list[int], causal: bool, window: int | None) -> torch.Tensor:
    """The reference ``(total, total)`` mask: each row attends within itself only."""
    document = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    position = torch.arange(len(document))
    allowed = document[:, None] == document[None, :]
    if causal:
        allowed &= position[None, :] <= position[:, None]
    if window:
        allowed &= position[None, :] > position[:, None] - window
    return allowed


def dense(block_mask: Any, total: int) -> torch.Tensor:
    """The token mask a ``BlockMask`` stands for: full blocks kept, partial ones through its ``mask_mod``."""
    size = block_mask.BLOCK_SIZE[0]
    index = torch.arange(total)
    token_mask = block_mask.mask_mod(0, 0, index[:, None], index[None, :])
    kept = torch.zeros(total, total, dtype=torch.bool)
    for counts, indices, full in (
        (block_mask.kv_num_blocks, block_mask.kv_indices, False),
        (block_mask.full_kv_num_blocks, block_mask.full_kv_indices, True),
    ):
        for q_block in range(counts.shape[-1]):
            for kv_block in indices[0, 0, q_block, : int(counts[0, 0, q_block])].tolist():
                rows = slice(q_block * size, (q_block + 1) * size)
                columns = slice(kv_block * size, (kv_block + 1) * size)
                kept[rows, columns] = True if full else token_mask[rows, columns]
    return kept


@pytest.mark.parametrize("seed", range(6))
def test_the_flex_block_mask_is_the_document_mask_built_without_a_total_square(seed, monkeypatch) -> None:
    generator = random.Random(seed)
    lengths = [generator.choice([1, 7, 127, 128, 129, 250, 300]) for _ in range(generator.randint(2, 6))]
    causal, window = seed % 3 != 2, [None, 100, None, 200, 128, None][seed]
    total, offsets = sum(lengths), row_offsets(lengths)
    received = []

    def flex(query, key, value, block_mask, scale, enable_gqa):  # flex_attention cannot compile here
        received.append(block_mask)
        return query

    monkeypatch.setattr(attention, "_compiled_flex", lambda: flex)
    attention._FLEX_MASKS.clear()
    query = torch.zeros(1, 2, total, 4)
    with Shapes() as shapes:
        attention._flex(query, query, query, offsets, 0.5, causal, window)
    assert shapes.square(total) == []
    expected = document_mask(lengths, causal, window)
    assert torch.equal(dense(received[0], total), expected)
    # The same blocks as torch's own construction (which evaluates the mask at every position).
    reference = create_block_mask(lambda b, h, q, k: expected[q, k], 1, None, total, total, device="cpu")
    for name in ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices"):
        assert torch.equal(getattr(received[0], name), getattr(reference, name)), name
    assert torch.equal(
        document_block_mask(offsets, total, causal, window, torch.device("cpu")).kv_num_blocks,
        reference.kv_num_blocks,
    )


def tiny_module(model_type: str, attn_implementation: str = "varlen", **overrides: Any) -> SFTModule:
    seed_everything(0)
    sft = SFTModule(
        model_config=tiny_model_config(model_type=model_type, initializer_range=0.3, **overrides),
        tokenizer_name_or_path="builtin:byte-chatml",
        attn_implementation=attn_implementation,
    )
    sft.configure_model()
    return sft


def packed_batch(tmp_path, rows: int = 4) -> dict[str, Any]:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(rows))
    data = arithmetic_data(path, shuffle=False, max_length=128, packing=True, max_tokens_per_batch=4096)
    data.setup("fit")
    return next(iter(data.train_dataloader()))


def masked_reference(query, key, value, block_mask, scale, enable_gqa):  # type: ignore[no-untyped-def]
    """flex_attention's result, by SDPA over the block mask's dense document mask."""
    key, value = (t.repeat_interleave(query.shape[1] // t.shape[1], dim=1) for t in (key, value))
    mask = dense(block_mask, query.shape[2])
    return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=scale)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
@pytest.mark.parametrize("kernel", ["varlen", "flex"])
def test_bf16_autocast_packed_attention_reaches_the_cuda_kernel_in_one_dtype(
    tmp_path, monkeypatch, model_type: str, kernel: str
) -> None:
    """Under bf16 autocast with float32 weights, RoPE leaves query and key in float32 and value in bf16; the
    kernel CUDA would choose (varlen_attn as torch 2.11 has it, or flex) gets all three in bf16."""
    choices, dtypes = [], []

    def as_on_cuda(device_type, *args):
        choices.append(choose_packed_kernel("cuda", *args))
        return choices[-1]

    def varlen_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        dtypes.append((query.dtype, key.dtype, value.dtype))
        assert key.shape[1] == query.shape[1]  # no enable_gqa: heads repeated for it
        scaled = query * (scale * query.shape[-1] ** 0.5)
        return rows_reference(scaled, key, value, cu_seq_q, causal=window_size == (-1, 0))

    def flex(query, key, value, block_mask, scale, enable_gqa):
        dtypes.append((query.dtype, key.dtype, value.dtype))
        return masked_reference(query, key, value, block_mask, scale, enable_gqa)

    monkeypatch.setattr(attention, "choose_packed_kernel", as_on_cuda)
    if kernel == "varlen":
        parameters = frozenset(inspect.signature(varlen_2_11).parameters)
        monkeypatch.setattr(attention, "_varlen_kernel", lambda: (varlen_2_11, parameters))
    else:
        monkeypatch.setattr(attention, "_varlen_kernel", lambda: None)
        monkeypatch.setattr(attention, "_compiled_flex", lambda: flex)
    batch = packed_batch(tmp_path)
    sft = tiny_module(model_type)
    choices.clear(), dtypes.clear()  # the start-up probe ran in float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_sum, targets = sft.compute_loss_sum(batch)
    (loss_sum / targets).backward()
    layers = sft.model.config.num_hidden_layers
    assert choices == [kernel] * layers
    assert dtypes == [(torch.bfloat16,) * 3] * layers
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all() for p in sft.parameters() if p.requires_grad
    )


def test_auto_on_cpu_attends_packed_rows_one_by_one(tmp_path) -> None:
    """``auto`` with packed batches on CPU: no total×total mask anywhere in the forward pass, and each row's
    logits equal those of the same rows padded."""
    batch = packed_batch(tmp_path, rows=12)
    total = batch["input_ids"].shape[1]
    seed_everything(0)
    sft = SFTModule(
        model_config=tiny_model_config(initializer_range=0.3),
        tokenizer_name_or_path="builtin:byte-chatml",
        attn_implementation="auto",
    )
    sft._trainer = SimpleNamespace(datamodule=SimpleNamespace(packing=True), accelerator=None, strategy=None)
    sft.configure_model()
    sft._trainer = None
    assert sft.attn_implementation == resolve_attention("auto", packing=True) == "varlen"
    sft.eval()
    with torch.no_grad(), Shapes() as shapes:
        logits = sft(batch["input_ids"], **sft.model_inputs(batch))
    assert shapes.square(total) == []
    reference = tiny_module("qwen2", "sdpa")  # the same seed: the same weights
    reference.eval()
    bounds = batch["cu_seq_lens"].tolist()
    rows = [batch["input_ids"][0, start:end] for start, end in itertools.pairwise(bounds)]
    longest = max(len(row) for row in rows)
    padded = torch.zeros(len(rows), longest, dtype=torch.long)
    mask = torch.zeros(len(rows), longest, dtype=torch.long)
    for index, row in enumerate(rows):
        padded[index, : len(row)], mask[index, : len(row)] = row, 1
    with torch.no_grad():
        expected = reference(padded, attention_mask=mask)
    assert len(rows) > 2
    for index, (start, end) in enumerate(itertools.pairwise(bounds)):
        torch.testing.assert_close(logits[0, start:end], expected[index, : end - start], rtol=1e-5, atol=1e-5)
