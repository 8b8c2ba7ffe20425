"""The processes of one run (``torchrun``, ``accelerate launch`` or a plain single process).

Mining and evaluation split their work over whatever processes were launched. Accelerate joins
CPU processes (gloo) only when told the run is on CPU; otherwise each rank of a CPU launch runs
alone and silently redoes all the work. :func:`process_state` always tells it, and refuses a
launch whose processes still did not join.
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def process_state(device: str):
    """Accelerate's ``PartialState`` for a run on ``device`` (``cpu``, ``cuda[:i]``, ``auto``).

    CPU is chosen for ``cpu``, under ``accelerate launch --cpu`` and for ``auto`` on a machine
    without CUDA. Raises RuntimeError when the launcher started several processes that did not
    join one group, instead of letting each process do everything.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    cpu = (
        device.startswith("cpu")
        or parse_flag_from_env("ACCELERATE_USE_CPU")
        or (device == "auto" and not torch.cuda.is_available())
    )
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched but they did not join one process group "
            f"(device {device!r}, {state.distributed_type}); each would repeat all the work. "
            "Use --device cpu for CPU processes, or a device every process has."
        )
    return state


def process_device(state, device: str) -> torch.device:
    """This process's device: its own under several processes, else ``device`` (``auto``: Accelerate's)."""
    if state.num_processes > 1 or device == "auto":
        return state.device
    return torch.device(device)


def end_processes() -> None:
    """Leave the process group of a finished command: wait for every process, then destroy the group
    while the interpreter is fully alive. A rank exiting with a live gloo group can abort at interpreter
    shutdown (SIGABRT, "terminate called without an active exception") after finishing its work."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


class ShardCompletion:
    """The end-of-shard wait of mining and captioning, by marker files instead of a collective.

    A process that ends its share early (fewer shards than processes, uneven shards, a resumed run
    with nothing left) would otherwise sit in a barrier until its peers finish, and a collective has
    a deadline: NCCL's watchdog aborts the job after 10 minutes, before the merge. Here each process
    writes ``<out>.done<rank>`` holding a token of this run (from the main process, so markers a
    crashed run left behind never count), then polls until every process's marker holds it; the
    collectives that follow (gathers, the merge barrier) find every process already there. The part
    files sit on a file system every process sees already, since the main process merges them.
    """

    def __init__(self, state, out: Path, poll_s: float = 1.0) -> None:
        from accelerate.utils import broadcast_object_list

        self.state, self.out, self.poll_s = state, out, poll_s
        token = [uuid.uuid4().hex if state.is_main_process else None]
        if state.num_processes > 1:  # every process is here at start: the collective cannot wait long
            broadcast_object_list(token)
        self.token = token[0]

    def _marker(self, rank: int) -> Path:
        return self.out.with_name(f"{self.out.name}.done{rank}")

    def wait(self) -> None:
        """Mark this process's share done, then wait (with no deadline) until every process's is."""
        if self.state.num_processes == 1:
            return
        self._marker(self.state.process_index).write_text(self.token, encoding="utf-8")
        waiting = [self._marker(rank) for rank in range(self.state.num_processes)]
        logged = False
        while waiting := [m for m in waiting if not (m.is_file() and m.read_text(encoding="utf-8") == self.token)]:
            if not logged:
                logger.info("process %d: share done; waiting for %d other processes to finish theirs",
                            self.state.process_index + 1, len(waiting))
                logged = True
            time.sleep(self.poll_s)

    def clean(self) -> None:
        """Remove the markers (the main process, once every process has passed :meth:`wait`)."""
        for marker in self.out.parent.glob(f"{self.out.name}.done*"):
            marker.unlink(missing_ok=True)
