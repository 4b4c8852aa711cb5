"""Every script of verl's ``examples/sft``, at b178a3cd5 and at 1dda039b9 (the newest verl-project/verl snapshot
read), run through ``lit-sft verl`` as written.

Each script's overrides are copied into ``tests/verl/examples/<commit>/<folder>__<script>.txt`` in the script's
order, with its environment variables at their defaults (``__<variant>`` files: its documented options set), ``$HOME/data/...`` swapped for a few GSM8K rows in
verl's formats (``{gsm8k}``: the single-turn parquet, ``{multiturn}``: the messages copy), the model for the
tiny local one (``{model}``), ``$save_path`` for a temporary folder; `CUT` is appended (8 rows per step, one
step). A ``# swapped:`` line names any other value changed, with why. The fast test translates each command
line with the script's process count; the slow test runs it (torchrun with 2 CPU processes where the script
needs more than one: sequence parallelism 2, or a fixed 8-GPU launch) and checks the exported HF model.

Verdicts (``runs``: translated, trained one step and exported; ``refused``: lit-sft verl stops with the reason):

b178a3cd5 (legacy ``fsdp_sft_trainer`` scripts and the engine VLM one)
  - gsm8k/run_deepseek_6b7.sh: runs (1 process)
  - gsm8k/run_gemma_2b.sh: runs (1 process)
  - gsm8k/run_gemma_7b.sh: runs (1 process)
  - gsm8k/run_qwen3_8b_sft_peft_sp2_npu.sh: runs (2 processes, sp 2, LoRA; micro-batch 64 -> 4 because a step
    of 8 rows cannot hold 64, which verl asserts too)
  - gsm8k/run_qwen_05_peft.sh: runs (1 process, LoRA)
  - gsm8k/run_qwen_05_sp2.sh: runs (2 processes, sp 2; data.micro_batch_size warned about, as verl ignores it)
  - gsm8k/run_qwen_05_sp2_liger.sh: refused when the model is built on CPU: Liger's kernels are Triton and
    need a CUDA GPU (verl's Liger path needs one as well); translated without error
  - gsm8k/run_seed_oss_36b_sft.sh: runs (2 processes, sp 2)
  - multiturn/run_qwen_05_sp2.sh: runs (2 processes, sp 2, messages rows)
  - vlm/run_qwen3_vl_2b.sh: runs with text rows and the tiny text model (2 processes, sp 2, fsdp2)
1dda039b9 (engine ``sft_trainer`` scripts)
  - gsm8k/run_deepseek_coder_6_7b_fsdp.sh, run_gemma_2b_fsdp.sh, run_gemma_7b_fsdp.sh: run (1 process)
  - gsm8k/run_qwen2_5_0_5b_fsdp.sh: runs (1 process); with SP_SIZE=2 USE_PEFT=1: runs (2 processes, LoRA)
  - gsm8k/run_qwen3_8b_fsdp.sh: runs (2 processes, sp 2, LoRA, token-budget micro-batches)
  - gsm8k/run_seed_oss_36b_fsdp.sh: runs (2 processes, sp 2)
  - multiturn/run_qwen2_5_0_5b_fsdp.sh: runs (1 process); with SP_SIZE=2: runs (2 processes)
  - vlm/run_qwen3_vl_2b_fsdp.sh: runs with text rows and the tiny text model (2 processes, sp 2, fsdp2)
  - gsm8k/run_qwen2_5_0_5b_automodel.sh: runs (1 process; engine/optim=automodel on FSDP2: AdamW with its
    betas, Automodel's scheduler with init_lr_ratio 0 (lit_sft's warmup start) and min_lr_ratio 0.1)
  - gsm8k/run_qwen3_30b_automodel.sh: runs (1 process; ep_size=8 replaced by FSDP, one warning; TE FusedAdam as
    AdamW; warmup from init_lr_ratio 0.1 as verl; activation checkpointing; the Automodel kernel keys warned)
  - gsm8k/run_nemotron_nano_v3_megatron.sh: runs (2 processes; tp 8 / ep 8 replaced by FSDP, one warning;
    Megatron's Adam betas 0.9/0.999 since verl does not pass optim.betas (warned); cosine to min_lr; recompute
    as gradient checkpointing; the optimizer offload overrides warned)
  - gsm8k/run_qwen_megatron_fsdp.sh: runs (2 processes; tp 4 and Megatron-FSDP replaced by FSDP; warmup ratio
    0.2; trainer.logger file as CSV, warned)
  - gsm8k/run_qwen3_5_397b_a17b_megatron.sh: refused: model.mtp.enable_train=True adds the MTP loss, whose
    gradient reaches the shared output layer; lit_sft loads models with transformers, which drops the MTP layers
    (verl runs it with Megatron-LM/Megatron-Bridge: a lit_sft limit, not verl's)
  - gsm8k/run_mimo_7b_mtp_megatron.sh: the script itself never starts verl: it runs ``$COMMAND ...`` with
    COMMAND unset under ``set -u``. Its override list runs here (1 process; model.mtp.enable without
    enable_train: verl does not train the MTP layers either, a warning says the export has none), with
    data.messages_key swapped (its dataset's prompt column holds no assistant turn)
  - gsm8k/run_deepseek_v4_megatron_lite.sh: refused, engine=mlite: a config group of the verl_mlite plugin
    package (hydra.searchpath=[pkg://verl_mlite.config], launched by -m verl_mlite.launch); verl without that
    package refuses it too
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from lit_sft.commands.verl import build
from lit_sft.errors import ConfigError
from lit_sft.verl.translate import Launch
from tests.verl.test_verl_command import assert_loadable_hf_model, lit_sft, verl_gsm8k  # noqa: F401

EXAMPLES = Path(__file__).parent / "examples"
#: Appended to every command line: 8 rows per step (16 training rows), one step.
CUT = ["data.train_batch_size=8", "trainer.total_training_steps=1"]


@dataclass(frozen=True)
class Example:
    """One verl script's command line and what lit-sft verl does with it.

    Attributes:
        name: ``<commit>/<folder>__<script>``.
        processes: Processes the test starts (torchrun when more than one).
        verdict: ``runs``, ``refused`` (when translated) or ``refused at run`` (when the model is built).
        reason: The refusal's words (a regular expression), empty when it runs.
        overrides: The script's overrides, placeholders unfilled, then the ``# swapped:`` ones.
    """

    name: str
    processes: int
    verdict: str
    reason: str
    overrides: list[str]


def read_example(path: Path) -> Example:
    """Parse a fixture file: ``# processes:``, ``# verdict:`` and ``# swapped:`` comments, one override a line."""
    processes, verdict, reason, overrides, swapped = 1, "", "", [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("# processes:"):
            processes = int(line.split(":", 1)[1])
        elif line.startswith("# verdict:"):
            verdict, _, reason = (part.strip() for part in line.split(":", 1)[1].partition(":"))
        elif line.startswith("# swapped:"):
            first = line.split(":", 1)[1].split()[0]
            swapped += [first] if "=" in first else []
        elif line.strip() and not line.startswith("#"):
            overrides.append(line.strip())
    assert verdict in ("runs", "refused", "refused at run"), path
    return Example(f"{path.parent.name}/{path.stem}", processes, verdict, reason, overrides + swapped)


ALL = sorted((read_example(path) for path in EXAMPLES.glob("*/*.txt")), key=lambda example: example.name)


def command_line(example: Example, data: str, model: str, save_path: str) -> list[str]:
    places = {"{gsm8k}": data, "{multiturn}": os.path.join(data, "multiturn"), "{model}": model,
              "{save_path}": save_path}  # fmt: skip
    words = []
    for word in example.overrides + CUT:
        for place, value in places.items():
            word = word.replace(place, value)
        words.append(word)
    return words


def test_every_script_of_both_commits_has_a_fixture() -> None:
    # verl's examples/sft at each commit (git ls-tree), as folder__script
    b178 = ["gsm8k__run_deepseek_6b7", "gsm8k__run_gemma_2b", "gsm8k__run_gemma_7b",
            "gsm8k__run_qwen3_8b_sft_peft_sp2_npu", "gsm8k__run_qwen_05_peft", "gsm8k__run_qwen_05_sp2",
            "gsm8k__run_qwen_05_sp2_liger", "gsm8k__run_seed_oss_36b_sft", "multiturn__run_qwen_05_sp2",
            "vlm__run_qwen3_vl_2b"]  # fmt: skip
    newest = ["gsm8k__run_deepseek_coder_6_7b_fsdp", "gsm8k__run_deepseek_v4_megatron_lite",
              "gsm8k__run_gemma_2b_fsdp", "gsm8k__run_gemma_7b_fsdp", "gsm8k__run_mimo_7b_mtp_megatron",
              "gsm8k__run_nemotron_nano_v3_megatron", "gsm8k__run_qwen2_5_0_5b_automodel",
              "gsm8k__run_qwen2_5_0_5b_fsdp", "gsm8k__run_qwen3_30b_automodel",
              "gsm8k__run_qwen3_5_397b_a17b_megatron", "gsm8k__run_qwen3_8b_fsdp", "gsm8k__run_qwen_megatron_fsdp",
              "gsm8k__run_seed_oss_36b_fsdp", "multiturn__run_qwen2_5_0_5b_fsdp", "vlm__run_qwen3_vl_2b_fsdp"]  # fmt: skip
    scripts = sorted({"__".join(e.name.split("__")[:2]) for e in ALL})  # folder__script[__variant]
    assert scripts == sorted([f"1dda039b9/{n}" for n in newest] + [f"b178a3cd5/{n}" for n in b178])


@pytest.mark.parametrize("example", ALL, ids=lambda example: example.name)
def test_each_script_translates_or_is_refused_with_its_reason(example: Example, tmp_path) -> None:
    words = command_line(example, str(tmp_path / "data"), str(tmp_path / "model"), str(tmp_path / "out"))
    launch = (
        Launch(world_size=example.processes, local_world_size=example.processes)
        if example.processes > 1
        else Launch()
    )
    if example.verdict == "refused":
        with pytest.raises(ConfigError, match=re.escape(example.reason)):
            build(words, launch)
        return
    translation = build(words, launch)
    data = translation.config["data"]["init_args"]
    assert data["global_batch_size"] == 8 and translation.config["trainer"]["max_steps"] == 1
    assert translation.config["trainer"]["devices"] == example.processes
    # what the script asks for, read from its own words: LoRA rank, sequence parallelism, token budgets
    given = dict(word.lstrip("+").split("=", 1) for word in words)
    model = translation.config["model"]["init_args"]
    rank = int(given.get("model.lora_rank", 0))
    assert (model.get("lora") or {}).get("r", 0) == rank
    sequence = int(
        given.get("ulysses_sequence_parallel_size", given.get("engine.ulysses_sequence_parallel_size", 1))
    )
    assert model["sequence_parallel_size"] == sequence
    if (
        "model.path" in given and given.get("data.use_dynamic_bsz", "True").lower() == "true"
    ):  # the engine default
        assert data["max_tokens_per_batch"] == int(given.get("data.max_token_len_per_gpu", 8192)) * sequence


@pytest.mark.slow
@pytest.mark.parametrize(
    "example", [e for e in ALL if e.verdict != "refused"], ids=lambda example: example.name
)
def test_each_script_runs_and_exports(example: Example, tmp_path, verl_gsm8k, tiny_model_dir) -> None:  # noqa: F811
    save_path = tmp_path / "out"
    words = command_line(example, verl_gsm8k, tiny_model_dir, str(save_path))
    result = lit_sft(["verl", *words], tmp_path, example.processes, check=False, timeout=900)
    output = result.stdout[-3000:] + result.stderr[-5000:]
    if example.verdict == "refused at run":
        assert result.returncode != 0 and example.reason in result.stderr, output
        return
    assert result.returncode == 0, output
    assert (save_path / "latest_checkpointed_iteration.txt").read_text() == "1"
    assert_loadable_hf_model(str(save_path / "global_step_1" / "huggingface"))
