"""The command line's promises: version, help, one-line errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from dsrsd_cli import __version__
from dsrsd_cli.config import load_config
from dsrsd_cli.errors import BadInput


def run_cli(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dsrsd_cli", *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_version():
    res = run_cli("--version")
    assert res.returncode == 0
    assert res.stdout.strip() == f"dsrsd {__version__}"


@pytest.mark.parametrize("command", ["prepare", "train", "evaluate", "explain", "compare", "predict", "demo"])
def test_every_command_has_help_with_an_example(command):
    res = run_cli(command, "--help")
    assert res.returncode == 0, res.stderr
    assert "Example" in res.stdout


def test_unknown_dataset_is_one_line_exit_2(tmp_path):
    res = run_cli("prepare", "--dataset", "nope", "--out", str(tmp_path / "x"))
    assert res.returncode == 2
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "nope" in lines[0] and "ednet" in lines[0]
    assert "Traceback" not in res.stderr


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "prepared"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    res = run_cli("prepare", "--dataset", "oulad", "--out", str(out))
    assert res.returncode == 2
    assert "--force" in res.stderr
    assert (out / "keep.txt").read_text() == "precious"


def test_config_unknown_key_and_bad_value_name_the_key():
    with pytest.raises(BadInput, match="loss.lambda_orthh"):
        load_config("smoke", ["loss.lambda_orthh=0.2"])
    with pytest.raises(BadInput, match="train.lr"):
        load_config("smoke", ["train.lr=-1"])
    cfg = load_config("smoke", ["loss.lambda_orth=0.2", "model.name=early"])
    assert cfg.loss.lambda_orth == 0.2 and cfg.model.name == "early"
