"""Training test helpers: the tiny model's flags and running a command in its own process group."""

from __future__ import annotations

import os
import signal
import subprocess

TINY_MODEL = ["--d_model", "32", "--num_layers", "2", "--num_heads", "2", "--d_ff", "64", "--context_length", "32"]


# One thread per process (as torchrun sets), and MKL's strict conditional-numerical-reproducibility
# mode: without it MKL's sgemm may take alignment-dependent code paths, so two processes holding the
# same numbers at different addresses can differ in the last bit (seen as a flaky resume test).
SUBPROCESS_ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT", "WANDB_MODE": "offline",
                               "PYTHONUNBUFFERED": "1"}


def run_command(command: list[str], timeout: float = 300) -> subprocess.CompletedProcess:
    """Run a command in its own process group, failing loudly with its output.

    On timeout the whole group is killed, so torchrun's workers do not outlive their launcher.
    """
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=SUBPROCESS_ENV, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        raise AssertionError(f"{command} timed out after {timeout} s:\n{stdout}\n{stderr}") from None
    assert process.returncode == 0, f"{command} failed ({process.returncode}):\n{stdout}\n{stderr}"
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
