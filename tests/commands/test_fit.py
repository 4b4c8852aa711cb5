"""The real command line: `lit-sft fit` / `lit-sft validate` in subprocesses, help and error output."""

from __future__ import annotations

import csv
import glob
import os
import subprocess
import sys

import pytest

from lit_sft.commands.fit import COMMANDS, entry_point, main
from tests.helpers import write_jsonl

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
QUICKSTART = os.path.join(ROOT, "configs", "quickstart.yaml")


def run(command: list[str], cwd: str, env_overrides: dict[str, str]) -> subprocess.CompletedProcess:
    env = {**os.environ, **env_overrides}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.mark.slow
def test_fit_then_validate_through_the_real_cli(tmp_path) -> None:
    env = {"LIT_SFT_CACHE": str(tmp_path / "cache"), "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    shrink = [
        "--data.init_args.num_train", "64",
        "--data.init_args.num_val", "16",
        "--trainer.max_steps", "4",
        "--trainer.val_check_interval", "2",
        "--trainer.log_every_n_steps", "1",
    ]  # fmt: skip
    fit = run([sys.executable, "-m", "lit_sft", "fit", "--config", QUICKSTART, *shrink], str(tmp_path), env)
    assert "train: 64 rows read, 64 kept, 0 dropped" in fit.stderr
    assert "lit_sft fit summary" in fit.stderr and "val/loss: first" in fit.stderr
    assert "val/gsm8k_acc_strict: first 0.0% (step 0)" in fit.stderr
    checkpoint = tmp_path / "runs" / "quickstart" / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    [log_dir] = glob.glob(str(tmp_path / "runs" / "quickstart" / "logs" / "version_*"))
    assert os.path.isfile(os.path.join(log_dir, "config.yaml"))
    gsm8k = sorted(os.listdir(os.path.join(log_dir, "gsm8k")))
    assert gsm8k == ["step-000000.jsonl", "step-000002.jsonl", "step-000004.jsonl"]
    with open(os.path.join(log_dir, "metrics.csv"), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    train_losses = [float(row["train/loss"]) for row in rows if row.get("train/loss")]
    val_losses = [(int(row["step"]), float(row["val/loss"])) for row in rows if row.get("val/loss")]
    assert len(train_losses) == 4
    assert [step for step, _ in val_losses] == [
        0,
        1,
        3,
    ]  # before training (sanity check), after steps 2 and 4
    assert val_losses[-1][1] < val_losses[0][1]
    assert {"train/grad_norm", "train/lr", "train/tokens_seen", "train/trained_tokens_seen"} <= set(rows[0])

    validate = run(
        [
            os.path.join(os.path.dirname(sys.executable), "lit-sft"),
            "validate",
            "--config",
            QUICKSTART,
            *shrink[:4],
            "--ckpt_path",
            str(checkpoint),
        ],
        str(tmp_path),
        env,
    )
    assert "val/loss" in validate.stdout + validate.stderr
    assert "lit_sft validate summary" in validate.stderr and "val/gsm8k_acc_strict" in validate.stderr


def test_help_documents_options_from_docstrings(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--model.help" in text and "--data.help" in text
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--data.help", "lit_sft.SFTDataModule"])
    assert exit_info.value.code == 0
    data_help = capsys.readouterr().out
    assert "Column (or dotted path) of the response string" in data_help
    assert "--data.truncation {left,right,error}" in data_help
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--model.help", "lit_sft.SFTModule"])
    assert exit_info.value.code == 0
    assert "Recompute activations in the backward pass" in capsys.readouterr().out


def test_lit_sft_help_lists_every_command_with_its_one_line(capsys) -> None:
    expected = ["fit", "validate", "evaluate", "generate", "prepare", "data check", "export", "verl"]
    for argv, code in ((["--help"], 0), (["-h"], 0), ([], 2)):
        with pytest.raises(SystemExit) as exit_info:
            entry_point(argv)
        assert exit_info.value.code == code
        lines = capsys.readouterr().out.splitlines()
        listed = lines[lines.index("commands:") + 1 :]
        for line, name in zip(listed, expected, strict=True):
            assert line.strip().startswith(name + "  ") and len(line.strip()) > len(name) + 10, line


def test_every_listed_command_runs_its_own_parser(capsys) -> None:
    for command in COMMANDS:
        with pytest.raises(SystemExit) as exit_info:
            entry_point([*command.name.split(), "--help"])
        assert exit_info.value.code == 0, command.name
        usage = capsys.readouterr().out.splitlines()[0].split()
        assert usage[:2] == ["usage:", "lit-sft"], command.name
        assert [word for word in usage if word in command.name.split()] == command.name.split(), usage


def test_user_errors_print_one_line_without_a_traceback(tmp_path, monkeypatch, capsys) -> None:
    bad = write_jsonl(
        str(tmp_path / "bad.jsonl"), [{"question": "q", "answer": "a"}, {"question": "q", "answer": None}]
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(
        sys,
        "argv",
        [
            "lit-sft", "fit", "--config", QUICKSTART,
            "--data", "lit_sft.SFTDataModule",
            "--data.init_args.train_files", bad,
            "--data.init_args.val_files", bad,
            "--data.init_args.prompt_key", "question",
            "--data.init_args.response_key", "answer",
        ],
    )  # fmt: skip
    with pytest.raises(SystemExit) as exit_info:
        entry_point()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"lit-sft: error: {bad}, row 1, field 'answer': response is null" in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model.init_args.loss.chunk_size", "0"], "model.loss.chunk_size must be positive"),
        (
            ["--data.init_args.packing", "true", "--data.init_args.max_tokens_per_batch", "100"],
            "data.max_tokens_per_batch (100) must hold the longest row",
        ),
    ],
    ids=["model", "data"],
)
def test_option_errors_raised_while_building_print_one_line(
    args, message, tmp_path, monkeypatch, capsys
) -> None:
    # jsonargparse wraps what a constructor raises in its own ValueError; the user sees lit_sft's line.
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        entry_point(["fit", "--config", QUICKSTART, *args])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"lit-sft: error: {message}" in err and "Traceback" not in err


def test_other_exceptions_are_not_swallowed(monkeypatch) -> None:
    def broken(*_: object, **__: object) -> None:
        raise KeyError("a bug")

    monkeypatch.setattr("lit_sft.commands.fit.main", broken)
    with pytest.raises(KeyError, match="a bug"):
        entry_point(["fit"])


def test_unknown_config_keys_fail_at_parse_time_naming_the_key(capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", QUICKSTART, "--data.init_args.batch_sise", "4"])
    assert exit_info.value.code == 2
    assert "batch_sise" in capsys.readouterr().err


def test_a_model_given_by_path_fits_with_its_hyperparameters_logged(tiny_model_dir, tmp_path) -> None:
    # The data module's tokenizer is linked from model_name_or_path; both record the same path, or
    # Lightning refuses to log their merged hyperparameters.
    train = write_jsonl(
        str(tmp_path / "train.jsonl"), [{"prompt": f"Q{i}", "response": "A"} for i in range(4)]
    )
    cli = main(
        [
            "fit",
            "--model", "lit_sft.SFTModule",
            "--model.model_name_or_path", tiny_model_dir,
            "--data", "lit_sft.SFTDataModule",
            "--data.train_files", train,
            "--data.cache_dir", str(tmp_path / "cache"),
            "--trainer.max_steps", "1",
            "--trainer.enable_progress_bar", "false",
            "--trainer.default_root_dir", str(tmp_path),
            "--trainer.logger.init_args.save_dir", str(tmp_path / "runs"),
        ]
    )  # fmt: skip
    assert cli.trainer.global_step == 1
    [hparams] = glob.glob(str(tmp_path / "runs" / "**" / "hparams.yaml"), recursive=True)
    with open(hparams, encoding="utf-8") as handle:
        assert f"model_name_or_path: {tiny_model_dir}" in handle.read()


def test_a_tokenizer_without_a_chat_template_names_the_option_that_fixes_it(
    tmp_path, monkeypatch, capsys
) -> None:
    from lit_sft.hub import load_tokenizer

    plain = load_tokenizer("builtin:byte-chatml")
    template = plain.chat_template
    plain.chat_template = None
    plain.save_pretrained(str(tmp_path / "tok"))
    train = write_jsonl(str(tmp_path / "train.jsonl"), [{"prompt": "Q", "response": "A"}] * 4)
    args = [
        "fit", "--config", QUICKSTART,
        "--model.init_args.tokenizer_name_or_path", str(tmp_path / "tok"),
        "--data", "lit_sft.SFTDataModule",
        "--data.init_args.train_files", train,
        "--trainer.max_steps", "1",
        "--trainer.callbacks", "[]",
    ]  # fmt: skip
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        entry_point(args)
    assert exit_info.value.code == 2
    assert "has no chat template; give one with model.chat_template" in capsys.readouterr().err
    (tmp_path / "chat.jinja").write_text(template, encoding="utf-8")
    cli = main([*args, "--model.init_args.chat_template", str(tmp_path / "chat.jinja")])
    assert cli.trainer.global_step == 1 and cli.datamodule.tokenizer.chat_template == template
