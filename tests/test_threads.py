"""opdctl's OpenMP default: waiting threads sleep when other work shares the cores, unless the user chose."""

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

from opdctl import threads

PROBE = "import opdctl, os, torch; print(os.environ.get('OMP_WAIT_POLICY', '-'), torch.get_num_threads())"


@pytest.fixture(autouse=True)
def _keep_the_recorded_reason(monkeypatch):
    monkeypatch.setattr(threads, "_reason", threads._reason)  # restored after each test: summaries read it


@pytest.mark.parametrize(("busy", "expected"), [(0.0, None), (0.4, None), (0.5, "PASSIVE"), (1.7, "PASSIVE")])
def test_passive_waits_only_when_other_work_keeps_a_core_busy(monkeypatch, busy, expected):
    environ = {k: v for k, v in os.environ.items() if k not in threads.USER_CHOICES}
    monkeypatch.setattr(threads.os, "environ", environ)
    monkeypatch.setattr(threads, "others_busy_cores", lambda: busy)
    threads.apply_defaults()
    assert environ.get("OMP_WAIT_POLICY") == expected
    setting = threads.setting()
    assert setting["wait_policy"] == (expected or "default")
    assert setting["why"] == f"other processes kept {busy:.1f} cores busy at start"


@pytest.mark.parametrize("choice", [("OMP_WAIT_POLICY", "ACTIVE"), ("GOMP_SPINCOUNT", "1000")])
def test_the_users_choice_wins(monkeypatch, choice):
    environ = {k: v for k, v in os.environ.items() if k not in threads.USER_CHOICES}
    environ[choice[0]] = choice[1]
    monkeypatch.setattr(threads.os, "environ", environ)
    monkeypatch.setattr(threads, "others_busy_cores", lambda: 2.0)
    threads.apply_defaults()
    assert environ.get("OMP_WAIT_POLICY") == (choice[1] if choice[0] == "OMP_WAIT_POLICY" else None)
    assert threads.setting()["why"] == f"{choice[0]}={choice[1]} in the environment"


def _spin(stop) -> None:
    while not stop.is_set():
        sum(range(10_000))


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads /proc")
def test_a_spinning_process_counts_as_a_busy_core():
    stop = multiprocessing.Event()
    spinner = multiprocessing.Process(target=_spin, args=(stop,))
    spinner.start()
    try:
        time.sleep(0.2)
        assert threads.others_busy_cores(window=0.3) >= 0.5
    finally:
        stop.set()
        spinner.join()


@pytest.mark.slow  # fresh interpreters importing torch
def test_the_choice_is_made_before_torch_loads_and_keeps_its_thread_count():
    env = {k: v for k, v in os.environ.items() if k not in (*threads.USER_CHOICES, "OMP_NUM_THREADS")}
    stop = multiprocessing.Event()
    spinners = [multiprocessing.Process(target=_spin, args=(stop,)) for _ in range(2)]
    for spinner in spinners:
        spinner.start()
    try:
        time.sleep(0.2)
        out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True)
    finally:
        stop.set()
        for spinner in spinners:
            spinner.join()
    policy, count = out.stdout.split()
    assert policy == "PASSIVE"
    plain = [sys.executable, "-c", "import torch; print(torch.get_num_threads())"]
    assert count == subprocess.run(plain, env=env, capture_output=True, text=True, check=True).stdout.strip()
