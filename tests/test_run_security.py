"""A run folder is untrusted input: loading one never runs pickled code (README "Run folders")."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from dsrsd_cli.config import load_config
from dsrsd_cli.engine.runs import load_run, load_state, load_weights, read_run_info, spec_to_dict
from dsrsd_cli.errors import BadInput
from dsrsd_cli.io import write_json
from dsrsd_cli.types import DataSpec


class Payload:
    """Unpickling this creates `marker`: what an attacker's state file would do (but worse)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').close()",))


def _torch_pickle(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _run_folder(tmp_path):
    run = tmp_path / "run"
    spec = DataSpec(dataset="ednet", modalities=("item", "content", "behavior"), n_outputs=1, vocab={"item.question": 10})
    write_json(run / "config.json", {
        "config": load_config("smoke").model_dump(), "spec": spec_to_dict(spec),
        "data": {"path": str(tmp_path / "data"), "manifest_hash": "abc", "dataset": "ednet"},
        "tool_version": "0", "created": "now",
    })
    return run


def test_the_payload_is_live(tmp_path):
    """Control: plain unpickling of the payload does run code, so the refusals below mean something."""
    marker = tmp_path / "control_marker"
    torch.load(io.BytesIO(_torch_pickle({"model": Payload(marker)})), weights_only=False)
    assert marker.exists()


def test_pickled_state_file_is_refused_and_runs_nothing(tmp_path):
    run = _run_folder(tmp_path)
    marker = tmp_path / "pwned"
    (run / "state").mkdir()
    (run / "state" / "state.pt").write_bytes(_torch_pickle({"model": Payload(marker), "epoch": 1}))
    with pytest.raises(BadInput, match=r"state\.pt: refused"):
        load_run(run)
    with pytest.raises(BadInput, match="refused"):
        load_state(run / "state" / "state.pt")
    assert not marker.exists()


@pytest.mark.parametrize("make", [lambda p: _torch_pickle({"w": p}), lambda p: pickle.dumps(p)])
def test_pickled_weights_are_refused_and_run_nothing(tmp_path, make):
    run = _run_folder(tmp_path)
    marker = tmp_path / "pwned"
    (run / "model.safetensors").write_bytes(make(Payload(marker)))
    with pytest.raises(BadInput, match="not a valid safetensors file"):
        load_run(run)
    with pytest.raises(BadInput, match="not a valid safetensors file"):
        load_weights(run / "model.safetensors")
    assert not marker.exists()


def test_bad_config_json_is_one_clear_line(tmp_path):
    run = _run_folder(tmp_path)
    (run / "config.json").write_text('{"config": {}, "spec": {"dataset": 1}}')
    with pytest.raises(BadInput, match=r"config\.json: key 'spec\.dataset' is invalid"):
        read_run_info(run)
    (run / "config.json").write_text("not json")
    with pytest.raises(BadInput, match="not valid JSON"):
        read_run_info(run)
    with pytest.raises(BadInput, match="does not exist"):
        read_run_info(tmp_path / "nowhere")


def test_config_json_with_an_unknown_config_key_is_refused(tmp_path):
    run = _run_folder(tmp_path)
    raw = __import__("json").loads((run / "config.json").read_text())
    raw["config"]["train"]["exec"] = "import os"
    write_json(run / "config.json", raw)
    with pytest.raises(BadInput, match="unknown key 'train.exec'"):
        read_run_info(run)
