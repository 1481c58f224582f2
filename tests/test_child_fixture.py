"""The crash-suite fixture itself: it must see a signal death and let normal exits through."""

import pytest


def test_child_runs_pyneg_and_reports_output(run_child):
    proc = run_child("import pyneg; print(pyneg.UniformSampler(10).num_classes)")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "10"


def test_child_killed_by_a_signal_fails_the_test(run_child):
    with pytest.raises(pytest.fail.Exception, match="SIGSEGV"):
        run_child("import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")


def test_child_exception_is_an_ordinary_exit(run_child):
    proc = run_child("raise ValueError('x')")
    assert proc.returncode == 1 and "ValueError" in proc.stderr
