"""opdctl's OpenMP default: waiting threads sleep unless the user chose otherwise."""

import os
import subprocess
import sys

import pytest

PROBE = "import opdctl, os, torch; print(os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())"


@pytest.mark.slow  # two fresh interpreters importing torch
@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_wait_policy_is_passive_unless_set(given, expected):
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    if given:
        env["OMP_WAIT_POLICY"] = given
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True).stdout
    policy, threads = out.split()
    assert policy == expected
    plain = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    assert threads == subprocess.run(plain, env=env, capture_output=True, text=True, check=True).stdout.strip()
