"""`dsrsd demo`: prepare, train, compare and explain in one folder; reuse it; --force only wipes a demo folder.

The demo's sizes are shrunk here (a few learners, two models, a few steps); the real
demo's wall time is measured by hand (`time dsrsd demo --out /tmp/demo --force`).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from dsrsd_cli.engine import demo as demo_module
from dsrsd_cli.engine.demo import MARKER, demo
from dsrsd_cli.errors import BadInput


@pytest.fixture(autouse=True)
def tiny_demo(monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_LEARNERS", 40)
    monkeypatch.setattr(demo_module, "DEMO_MODELS", ("dsrsd", "single:item"))
    monkeypatch.setattr(demo_module, "DEMO_OVERRIDES", ("train.epochs=1", "train.max_steps_per_epoch=3", 'train.device="cpu"'))


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("demo") / "out"


def test_demo_prepares_trains_compares_and_explains(demo_dir):
    console = Console(stderr=True, record=True, width=160)
    result = demo(demo_dir, console=console)
    text = console.export_text()
    assert json.loads((demo_dir / MARKER).read_text())["settings"]["models"] == ["dsrsd", "single:item"]
    assert (demo_dir / "data" / "ednet" / "manifest.json").is_file()
    for name in ("comparison.md", "comparison.csv", "comparison.json", "comparison.png"):
        assert (demo_dir / "comparison" / name).is_file()
    assert [m["label"] for m in result["comparison"]["models"]] == ["dsrsd", "single:item"]
    assert result["explanation"]["by"]["name"] == "part" and result["explanation"]["model"] == "dsrsd"
    assert (demo_dir / "comparison" / "runs" / "dsrsd__seed0" / "explain" / "explain_test_by_part.png").is_file()
    assert "Comparison on ednet" in text and "Attribution: dsrsd" in text and "demo done" in text


def test_rerun_reuses_the_data_and_finished_runs(demo_dir, monkeypatch):
    assert (demo_dir / MARKER).is_file(), "runs after the first demo test"

    def must_not_run(*args, **kwargs):
        raise AssertionError("the demo redid work that was already done")

    monkeypatch.setattr("dsrsd_cli.data.prepare.prepare_dataset", must_not_run)
    monkeypatch.setattr("dsrsd_cli.engine.train.train_run", must_not_run)
    result = demo(demo_dir)
    assert len(result["comparison"]["models"]) == 2


def test_changed_settings_need_force_and_force_starts_over(demo_dir, monkeypatch):
    monkeypatch.setattr(demo_module, "DEMO_MODELS", ("dsrsd", "single:content"))
    with pytest.raises(BadInput, match="--force"):
        demo(demo_dir)
    (demo_dir / "stray.txt").write_text("from the old demo")
    result = demo(demo_dir, force=True)
    assert not (demo_dir / "stray.txt").exists()
    assert [m["label"] for m in result["comparison"]["models"]] == ["dsrsd", "single:content"]
    assert not (demo_dir / "comparison" / "runs" / "single-item__seed0").exists()


def test_force_never_deletes_a_folder_that_is_not_a_demo(tmp_path):
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("years of work")
    for force in (False, True):
        with pytest.raises(BadInput, match="not a demo folder"):
            demo(precious, force=force)
    assert (precious / "chapter1.tex").read_text() == "years of work"
