"""Two CPU processes (gloo, DDP) on halves of a batch must equal one process on the whole batch.

This is the property the gathered losses exist for: N processes x batch b is the same optimisation
step as one process with batch N*b. Ranks are tests/dist_worker.py under torchrun (the
``launch_ranks`` fixture); gloo is pinned to the loopback interface, so nothing leaves the machine.
A hard timeout turns a hang into a failure.
"""

from __future__ import annotations

import importlib.util
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


pytestmark = pytest.mark.multiprocess


@pytest.fixture(scope="module")
def two_process_results(tmp_path_factory: pytest.TempPathFactory, launch_ranks) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("dist") / "rank0.pt"
    done = launch_ranks([WORKER, f"--out={out}"], n=WORLD_SIZE, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stdout + done.stderr
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
