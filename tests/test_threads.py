"""Torch threads of a search process on a shared machine (issue 9, item 6; measured in trials/README.md)."""
import os

import pytest
import torch

from se_nas.search import trial


@pytest.fixture
def four_cores(monkeypatch):
    """A 4-core machine, and torch's thread count put back afterwards."""
    monkeypatch.setattr(trial, "cores", lambda: 4)
    old = torch.get_num_threads()
    yield
    torch.set_num_threads(old)


@pytest.mark.parametrize("workers", [1, 2, 4, 9])
def test_every_search_process_trains_on_one_thread(four_cores, workers):
    # not cores // workers: 2 spin-waiting threads beside a busy process took >13x the time of 1
    assert trial.configure_threads(workers) == 1
    assert torch.get_num_threads() == 1


def test_load_warning_names_load_and_cores(four_cores, monkeypatch):
    monkeypatch.setattr(os, "getloadavg", lambda: (3.5, 1.0, 1.0))
    line = trial.machine_load_warning(workers=1)
    assert line.startswith("warning: this machine is already busy (load average 3.5 on 4 cores)")
    assert "\n" not in line
    assert "--workers N" in line and "answer depends on the seed and the worker count" in line
    monkeypatch.setattr(os, "getloadavg", lambda: (2.9, 1.0, 1.0))
    assert trial.machine_load_warning(workers=1) is None  # a free core for the one process
    assert trial.machine_load_warning(workers=2) is not None  # not for two
