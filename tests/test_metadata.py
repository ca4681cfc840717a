"""How many split-KV pieces each metadata form plans (the old form is capped at the SM count)."""

from __future__ import annotations

import pytest
import torch

import openmla
from openmla.metadata import plan_dense


@pytest.mark.parametrize("rows", [1, 16, 32, 64, 128, 256])
def test_old_form_never_exceeds_the_sm_count(rows, monkeypatch):
    monkeypatch.setenv("OPENMLA_NUM_SMS", "132")
    lens = torch.full((64,), 4096, dtype=torch.int32)
    sched, splits = openmla.get_mla_metadata(lens, rows, 1)
    assert 1 <= sched.shape[0] <= 132
    assert splits.shape == (65,)


def test_new_form_gives_small_triton_tiles_two_pieces_per_sm(monkeypatch):
    """Memory-bound 16-row Triton tiles stream faster with two programs per SM (measured on an H200)."""
    monkeypatch.setenv("OPENMLA_NUM_SMS", "132")
    lens = torch.full((8,), 4096, dtype=torch.int32)
    sched, _ = plan_dense(lens, 16, 1, backend="triton")
    assert sched.shape[0] == 264
    sched, _ = plan_dense(lens, 16, 1, backend="gluon")
    assert sched.shape[0] == 132
    sched, _ = plan_dense(lens, 128, 1, backend="gluon")  # two 64-row tiles per piece
    assert sched.shape[0] == 66
