"""``attn_implementation: varlen``: packed rows from the collator's offsets, equal to padded SDPA (loss and
gradients); padded batches and generation equal to SDPA; the kernel adapter for PyTorch's ``varlen_attn``."""

from __future__ import annotations

import inspect
import itertools

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch import seed_everything

from lit_sft import SFTDataModule, SFTModule
from lit_sft.batch import row_offsets
from lit_sft.data.collate import PackedCollator
from lit_sft.errors import ConfigError
from lit_sft.model import attention, sequence_parallel
from lit_sft.model.attention import resolve_attention, varlen_attention_forward
from tests.helpers import arithmetic_data, arithmetic_rows, tiny_model_config, write_jsonl


def module(attn_implementation: str) -> SFTModule:
    seed_everything(0)
    sft = SFTModule(
        model_config=tiny_model_config(initializer_range=0.3),
        tokenizer_name_or_path="builtin:byte-chatml",
        attn_implementation=attn_implementation,
    )
    sft.configure_model()
    return sft


def data(path: str, **kwargs) -> SFTDataModule:
    dm = arithmetic_data(path, shuffle=False, max_length=128, **kwargs)
    dm.setup("fit")
    return dm


def loss_and_gradients(sft: SFTModule, dm: SFTDataModule) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    sft.zero_grad()
    sums, counts = [], 0
    for batch in dm.train_dataloader():
        loss_sum, count = sft.compute_loss_sum(batch)
        sums.append(loss_sum)
        counts += int(count)
    loss = sum(sums) / counts
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in sft.named_parameters() if p.grad is not None}


def test_the_packed_collator_computes_row_offsets_on_the_host() -> None:
    batch = PackedCollator()([[5, 6, 7], [8, 9], [1, 2, 3, 4]], [[5, 6, 7], [8, 9], [1, 2, 3, 4]])
    assert batch["cu_seq_lens"].tolist() == [0, 3, 5, 9]
    assert batch["cu_seq_lens"].dtype == torch.int32 and batch["max_row_length"] == 4
    starts = (batch["position_ids"][0] == 0).nonzero().flatten().tolist()
    assert starts == batch["cu_seq_lens"][:-1].tolist()


def test_varlen_packed_loss_and_gradients_equal_padded_sdpa(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(24))
    padded_loss, padded_grads = loss_and_gradients(module("sdpa"), data(path, batch_size=4))
    packed_dm = data(path, packing=True, max_tokens_per_batch=512)
    assert all("cu_seq_lens" in batch for batch in packed_dm.train_dataloader())
    packed_loss, packed_grads = loss_and_gradients(module("varlen"), packed_dm)
    torch.testing.assert_close(packed_loss, padded_loss, rtol=1e-5, atol=1e-5)
    assert padded_grads.keys() == packed_grads.keys() and padded_grads
    for name, gradient in padded_grads.items():
        torch.testing.assert_close(packed_grads[name], gradient, rtol=1e-4, atol=1e-6, msg=name)


def test_varlen_follows_the_collators_offsets_without_asking_the_positions(tmp_path, monkeypatch) -> None:
    """The rows come from ``cu_seq_lens`` (no device sync); offsets that merge two rows change their logits."""
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(4))
    batch = next(iter(data(path, packing=True, max_tokens_per_batch=1024).train_dataloader()))
    sft = module("varlen")
    sft.eval()

    def no_sync(position_ids):
        raise AssertionError("offsets derived from positions although the batch carries them")

    monkeypatch.setattr(attention, "_offsets_from_positions", no_sync)
    with torch.no_grad():
        logits = sft(batch["input_ids"], **sft.model_inputs(batch))
        offsets = batch["cu_seq_lens"]
        merged = torch.cat([offsets[:1], offsets[2:]])  # rows 0 and 1 as one row
        inputs = {**sft.model_inputs(batch), "cu_seq_lens_q": merged, "cu_seq_lens_k": merged}
        merged_logits = sft(batch["input_ids"], **inputs)
    second_row = slice(int(offsets[1]), int(offsets[2]))
    later_rows = slice(int(offsets[2]), None)
    assert not torch.allclose(merged_logits[0, second_row], logits[0, second_row], atol=1e-4)
    torch.testing.assert_close(merged_logits[0, later_rows], logits[0, later_rows], rtol=0, atol=1e-6)


def test_without_offsets_packed_rows_are_found_from_their_positions(tmp_path) -> None:
    path = write_jsonl(str(tmp_path / "train.jsonl"), arithmetic_rows(4))
    batch = next(iter(data(path, packing=True, max_tokens_per_batch=1024).train_dataloader()))
    sft, reference = module("varlen"), module("sdpa")
    sft.eval(), reference.eval()
    with torch.no_grad():
        derived = sft(batch["input_ids"], position_ids=batch["position_ids"])
        expected = reference(batch["input_ids"], position_ids=batch["position_ids"])
    torch.testing.assert_close(derived, expected, rtol=1e-5, atol=1e-5)


def test_padded_batches_and_generation_match_sdpa() -> None:
    sft, reference = module("varlen"), module("sdpa")
    sft.eval(), reference.eval()
    ids = torch.randint(0, 200, (3, 11), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # left padding, as in generation
    mask[2, 8:] = 0  # right padding, as in training
    with torch.no_grad():
        logits = sft(ids, attention_mask=mask)
        expected = reference(ids, attention_mask=mask)
        assert torch.isfinite(logits).all()
        torch.testing.assert_close(logits[mask.bool()], expected[mask.bool()], rtol=1e-5, atol=1e-5)
        prompts, prompt_mask = ids[:2], mask[:2]
        options = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
        generated = sft.model.generate(prompts, attention_mask=prompt_mask, **options)
        assert torch.equal(
            generated, reference.model.generate(prompts, attention_mask=prompt_mask, **options)
        )


def rows_reference(query, key, value, offsets, causal=True):
    """Each row of ``(total, heads, dim)`` tensors on its own: plain SDPA, key/value heads repeated."""
    heads = query.shape[1]
    key, value = (t.repeat_interleave(heads // t.shape[1], dim=1) for t in (key, value))
    bounds = offsets.tolist()
    outputs = [  # (length, heads, dim) -> (heads, length, dim) and back
        F.scaled_dot_product_attention(
            *(t[start:end].transpose(0, 1) for t in (query, key, value)), is_causal=causal
        ).transpose(0, 1)
        for start, end in itertools.pairwise(bounds)
    ]
    return torch.cat(outputs)


@pytest.mark.parametrize(
    "release",
    [
        "2.9 (is_causal, no GQA, no scale)",
        "2.11 (window_size, scale, no GQA)",
        "2.13+ (window_size, enable_gqa, scale)",
    ],
)
def test_the_kernel_adapter_speaks_each_varlen_attn_signature(monkeypatch, release: str) -> None:
    """``varlen_attn`` changed its arguments between releases; a stand-in kernel with each signature (causal
    attention per row, no GQA unless asked) must give the per-row reference through `attention._varlen`."""
    calls = []

    def old_kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
        calls.append(is_causal)
        assert key.shape[1] == query.shape[1]  # heads repeated for it
        return rows_reference(query, key, value, cu_seq_q, causal=is_causal)

    def new_kernel(
        query,
        key,
        value,
        cu_seq_q,
        cu_seq_k,
        max_q,
        max_k,
        *,
        scale=None,
        window_size=(-1, -1),
        enable_gqa=False,
    ):
        calls.append(window_size)
        assert enable_gqa == (key.shape[1] != query.shape[1])
        scaled = query * (scale * query.shape[-1] ** 0.5)
        return rows_reference(scaled, key, value, cu_seq_q, causal=window_size == (-1, 0))

    def kernel_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
        calls.append(window_size)
        assert key.shape[1] == query.shape[1]  # heads repeated for it (enable_gqa came in 2.13)
        scaled = query * (scale * query.shape[-1] ** 0.5)
        return rows_reference(scaled, key, value, cu_seq_q, causal=window_size == (-1, 0))

    kernel = {"2.9": old_kernel, "2.11": kernel_2_11}.get(release.split()[0], new_kernel)
    parameters = frozenset(inspect.signature(kernel).parameters)
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: (kernel, parameters))
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(12, 4, 8, generator=generator)
    key, value = torch.randn(12, 2, 8, generator=generator), torch.randn(12, 2, 8, generator=generator)
    offsets = row_offsets([5, 7])
    output = attention._varlen(
        query, key, value, offsets, 7, scaling=8**-0.5, causal=True, sliding_window=None
    )
    torch.testing.assert_close(output, rows_reference(query, key, value, offsets), rtol=1e-5, atol=1e-5)
    assert calls == [True] if release.startswith("2.9") else calls == [(-1, 0)]


def test_a_varlen_attn_without_window_size_refuses_a_sliding_window(monkeypatch) -> None:
    """`choose_packed_kernel` sends sliding windows elsewhere; reaching the kernel anyway must not drop it."""

    def kernel(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False):
        return query

    parameters = frozenset(inspect.signature(kernel).parameters)
    monkeypatch.setattr(attention, "_varlen_kernel", lambda: (kernel, parameters))
    tensor = torch.zeros(6, 2, 4)
    with pytest.raises(ValueError, match="window_size"):
        attention._varlen(tensor, tensor, tensor, row_offsets([6]), 6, 0.5, causal=True, sliding_window=3)


def test_the_cpu_fallback_runs_each_row_on_its_own() -> None:
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(1, 4, 12, 8, generator=generator)
    key, value = torch.randn(1, 2, 12, 8, generator=generator), torch.randn(1, 2, 12, 8, generator=generator)
    offsets = row_offsets([3, 4, 5])
    layer = torch.nn.Module()
    layer.is_causal = True
    output, _ = varlen_attention_forward(
        layer,
        query,
        key,
        value,
        None,
        cu_seq_lens_q=offsets,
        cu_seq_lens_k=offsets,
        max_length_q=5,
        max_length_k=5,
    )
    expected = rows_reference(
        query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), offsets
    )
    torch.testing.assert_close(output[0], expected, rtol=1e-5, atol=1e-5)
    assert attention.packed_kernel(query) == "sdpa"  # on CPU: the exact fallback


def test_soft_capping_is_refused_rather_than_ignored() -> None:
    layer = torch.nn.Module()
    tensor = torch.zeros(1, 2, 3, 4)
    with pytest.raises(ConfigError, match="soft-capping"):
        varlen_attention_forward(layer, tensor, tensor, tensor, None, softcap=30.0)


def test_auto_picks_varlen_for_packed_cuda_runs_without_flash_attn(monkeypatch) -> None:
    monkeypatch.setattr(attention, "_has_flash_attn_package", lambda: False)
    assert resolve_attention("auto", packing=True, on_cuda=True) == "varlen"
    assert resolve_attention("auto", packing=False, on_cuda=True) == "sdpa"
    assert resolve_attention("auto", packing=True, on_cuda=False) == "varlen"  # per row on CPU
    assert resolve_attention("eager", packing=True, on_cuda=True) == "eager"
    monkeypatch.setattr(attention, "_has_flash_attn_package", lambda: True)
    assert resolve_attention("auto", packing=True, on_cuda=True) == "flash_attention_2"
    assert module("auto").attn_implementation == "sdpa"  # no trainer: CPU, padded


def test_a_sequence_parallel_shard_keeps_the_full_sequences_offsets(monkeypatch) -> None:
    """Ulysses attention runs the inner kernel over the whole sequence: the shard carries its row offsets,
    with the padding row that evens out the split."""
    monkeypatch.setattr(sequence_parallel.dist, "get_world_size", lambda group=None: 2)
    monkeypatch.setattr(sequence_parallel.dist, "get_rank", lambda group=None: 1)
    batch = PackedCollator()([[1, 2, 3], [4, 5, 6, 7]], [[1, 2, 3], [4, 5, 6, 7]])
    shard = sequence_parallel.shard_batch(batch, None, "varlen")
    assert shard["input_ids"].shape == (1, 4)
    assert shard["cu_seq_lens"].tolist() == [0, 3, 7, 8] and shard["max_row_length"] == 4
    assert sequence_parallel._CONTEXT.mask is None  # no O(L^2) mask for the variable-length kernel
    full_positions = sequence_parallel._CONTEXT.position_ids[0]
    assert (full_positions == 0).nonzero().flatten().tolist() == shard["cu_seq_lens"][:-1].tolist()
