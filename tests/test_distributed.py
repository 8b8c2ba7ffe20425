"""Two CPU processes (gloo, DDP) on halves of a batch must equal one process on the whole batch.

This is the property the gathered losses exist for: N processes x batch b is the same optimisation
step as one process with batch N*b. Ranks are plain subprocesses of tests/dist_worker.py meeting
through a FileStore in the test's temporary folder (no port to pick, so no port race); gloo is
pinned to the loopback interface, so nothing leaves the machine. A hard timeout turns a hang into
a failure.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

WORKER = Path(__file__).with_name("dist_worker.py")
WORLD_SIZE = 2
TIMEOUT_S = 180  # generous: starting torch in two processes is slow on a busy 2-core CI box


def _load_worker() -> ModuleType:
    spec = importlib.util.spec_from_file_location("goalclip_tests_dist_worker", WORKER)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _worker_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    if "lo" in {name for _, name in socket.if_nameindex()}:
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    folder = tmp_path_factory.mktemp("dist")
    out = folder / "rank0.pt"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(WORKER),
                f"--rank={rank}",
                f"--world-size={WORLD_SIZE}",
                f"--init-file={folder / 'store'}",
                f"--out={out}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=_worker_env(),
        )
        for rank in range(WORLD_SIZE)
    ]
    logs = []
    try:
        for proc in procs:
            logs.append(proc.communicate(timeout=TIMEOUT_S)[0])
    except subprocess.TimeoutExpired:
        for proc in procs:
            proc.kill()
            proc.communicate()
        pytest.fail(f"distributed workers did not finish within {TIMEOUT_S}s")
    for rank, (proc, log) in enumerate(zip(procs, logs)):
        assert proc.returncode == 0, f"rank {rank} exited with {proc.returncode}:\n{log}"
    return torch.load(out)


@pytest.fixture(scope="module")
def single_process() -> dict[str, Any]:
    worker = _load_worker()
    model = worker.build_model()
    loss = worker.compute_loss(model, worker.make_batch(), gather=True)
    loss.backward()
    return {
        "loss": loss.item(),
        "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
    }


@pytest.mark.parametrize("mode", ["gather", "uneven"])
def test_gathered_two_process_step_equals_single_process(
    two_process_results: dict[str, Any], single_process: dict[str, Any], mode: str
) -> None:
    got = two_process_results[mode]
    assert got["loss"] == pytest.approx(single_process["loss"], abs=1e-6)
    assert got["grads"].keys() == single_process["grads"].keys()
    for name, expected in single_process["grads"].items():
        assert torch.allclose(got["grads"][name], expected, atol=1e-5, rtol=0), name


def test_without_gather_two_process_gradients_differ(
    two_process_results: dict[str, Any], single_process: dict[str, Any]
) -> None:
    """Negative control: each process seeing only its own negatives is a different objective."""
    got = two_process_results["no_gather"]
    largest = max(
        (got["grads"][name] - expected).abs().max().item()
        for name, expected in single_process["grads"].items()
    )
    assert largest > 1e-3
