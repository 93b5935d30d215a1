"""dsrsd_cli/memory.py: freed heap memory goes back to the OS only once it has piled up."""

from __future__ import annotations

import pytest

import dsrsd_cli.memory as memory


@pytest.fixture
def fake_process(monkeypatch):
    """A fake resident size the test sets, and the malloc_trim calls it counts."""
    state = {"rss": 1000, "trims": 0}

    def trim(_pad):
        state["trims"] += 1
        state["rss"] = 1000          # the freed heap went back

    monkeypatch.setattr(memory, "_MALLOC_TRIM", trim)
    monkeypatch.setattr(memory, "resident_bytes", lambda: state["rss"])
    monkeypatch.setattr(memory, "_after_last_trim", None)
    return state


def test_trims_only_when_resident_memory_grew_by_more_than_the_slack(fake_process):
    memory.trim_heap(slack=500)                     # the first call takes note of 1000
    for rss in (1200, 1500, 1400):                  # reused heap: within the slack
        fake_process["rss"] = rss
        memory.trim_heap(slack=500)
    assert fake_process["trims"] == 0
    fake_process["rss"] = 1501                      # piled up
    memory.trim_heap(slack=500)
    assert fake_process["trims"] == 1


def test_a_working_set_above_the_slack_is_not_trimmed_after_every_batch(fake_process):
    """A trim returns the batch's working set too; the next batch faults it back in. That
    regrowth is not a pile-up: the baseline is taken at the end of the first batch after it."""
    memory.trim_heap(slack=500)                     # note 1000
    fake_process["rss"] = 1800                      # a first big batch: working set 800 > slack
    memory.trim_heap(slack=500)
    assert fake_process["trims"] == 1               # trimmed back to 1000
    for _ in range(5):                              # every later batch faults its 800 back in
        fake_process["rss"] = 1800
        memory.trim_heap(slack=500)
    assert fake_process["trims"] == 1
    fake_process["rss"] = 2301                      # 501 piled up over the working set
    memory.trim_heap(slack=500)
    assert fake_process["trims"] == 2


def test_slack_zero_or_an_unknown_size_trims_every_time(fake_process, monkeypatch):
    memory.trim_heap(slack=0)
    memory.trim_heap(slack=0)
    assert fake_process["trims"] == 2
    monkeypatch.setattr(memory, "resident_bytes", lambda: None)
    memory.trim_heap()
    assert fake_process["trims"] == 3


def test_the_resident_size_is_read_on_linux():
    rss = memory.resident_bytes()
    assert rss is None or 10 << 20 < rss < 100 << 30
