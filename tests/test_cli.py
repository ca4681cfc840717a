"""The ``openmla`` command line on a machine with no GPU: it must still report and run, and say so."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from openmla.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_doctor_reports_without_a_gpu(capsys):
    rc = main(["doctor", "--no-compile"])
    text = capsys.readouterr().out
    assert rc == 0, text
    for needle in ("torch", "triton", "dense_decode", "sparse_decode", "paste this into a bug report"):
        assert needle in text


def test_doctor_json_is_machine_readable(capsys):
    assert main(["doctor", "--no-compile", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert isinstance(report, dict) and report


def test_doctor_compile_check_for_hopper(capsys):
    """``--arch sm_90a`` compiles every kernel for Hopper on a machine with no GPU and reports each."""
    rc = main(["doctor", "--arch", "sm_90a"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "_dense_decode_sm90_kernel" in text and "_dense_decode_splitkv_kernel" in text


def test_doctor_fails_a_build_with_a_miscompile_trace(capsys, monkeypatch):
    """A build whose start reads a uniform register nothing wrote (a ptxas miscompile's trace) fails the compile
    check by name, with the first such read."""
    from openmla.ops import aot

    report = aot.KernelReport(kernel="_k", variant="v", arch=90, ok=True, registers=128, shared_bytes=0,
                              spill_bytes=0, local_bytes=0, has_wgmma=True,
                              early_uniform_reads=["0x670 UR12: UIADD3 UR12, UP0, UR12, 0x40, URZ"])
    monkeypatch.setattr(aot, "compile_all", lambda arch, *args, **kw: [report])
    rc = main(["doctor", "--arch", "sm_90a"])
    text = capsys.readouterr().out
    assert rc != 0 and "read before written" in text and "_k[v] (0x670 UR12" in text


def test_demo_runs_on_cpu_and_says_which_backend():
    """A fresh process, so TRITON_INTERPRET is read before openmla is imported, as a user would run it."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", "openmla", "demo", "--device", "cpu"], capture_output=True,
                          text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "triton" in (done.stdout + done.stderr).lower()


@pytest.mark.parametrize("argv", [["bench", "--dry-run", "--configs", "host"]])
def test_bench_dry_run(argv):
    env = dict(os.environ, PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", "openmla", *argv], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
