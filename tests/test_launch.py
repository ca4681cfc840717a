"""The direct-launch cache key (:mod:`openmla.ops.launch`): finer than Triton's specialisation, never coarser."""

from __future__ import annotations

import torch

from openmla.ops.launch import _arg_key, direct_launch_enabled, variant_key


def test_key_separates_what_triton_specialises_on():
    base = torch.zeros(64)
    assert _arg_key(base) != _arg_key(base.half())  # dtype
    assert _arg_key(base) != _arg_key(base[1:])  # 16-byte alignment of the address
    assert _arg_key(base) == _arg_key(torch.ones(64))  # same traits, same variant
    assert _arg_key(1) != _arg_key(2) != _arg_key(16)  # == 1, % 16
    assert _arg_key(16) == _arg_key(32)
    assert _arg_key(2**31 - 1) != _arg_key(2**31 + 15)  # int32 vs int64 arguments
    assert _arg_key(True) != _arg_key(1)
    assert _arg_key(0.5) == _arg_key(2.0)  # floats are never specialised


def test_key_holds_constexprs_options_and_device():
    args = (torch.zeros(4), 3)
    k = variant_key(args, {"A": 1}, {"num_warps": 4}, 0)
    assert k == variant_key(args, {"A": 1}, {"num_warps": 4}, 0)
    assert k != variant_key(args, {"A": 2}, {"num_warps": 4}, 0)
    assert k != variant_key(args, {"A": 1}, {"num_warps": 8}, 0)
    assert k != variant_key(args, {"A": 1}, {"num_warps": 4}, 1)


def test_direct_path_off_under_the_interpreter_and_on_request(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not direct_launch_enabled()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setenv("OPENMLA_LAUNCH", "jit")
    assert not direct_launch_enabled()
