"""Several processes of one command (``accelerate launch``, ``torchrun``): who
am I, and wait for the others.

On a machine without CUDA, ``accelerate launch --multi_gpu --num_processes N``
(or ``torchrun --nproc_per_node N``) starts N processes with ``RANK`` /
``WORLD_SIZE`` set. ``accelerate launch --cpu --num_processes N`` does *not*:
without ``--mpirun_hostfile`` it starts one process. accelerate's
``PartialState()`` only sets up the gloo (CPU) process group when asked for
the CPU explicitly -- otherwise it falls back to "not distributed" and its
``wait_for_everyone`` returns at once -- so :func:`barrier` says which.
"""
from __future__ import annotations

import os

from react.errors import ReactError


def process_grid() -> tuple[int, int]:
    """(rank, world size) from accelerate's launcher, torchrun, or a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    rank = int(os.environ.get("RANK", "0") or 0)
    if world > 1 and not 0 <= rank < world:
        raise ReactError(f"RANK {rank} outside WORLD_SIZE {world}")
    return rank, max(1, world)


def barrier(world: int, cpu: bool) -> None:
    """Block until every process of the launch gets here (no-op for one process).

    ``cpu``: the processes compute on the CPU, so the group must be gloo
    (nccl needs a GPU per process)."""
    if world <= 1:
        return
    from accelerate import PartialState

    state = PartialState(cpu=cpu)
    if state.num_processes != world:
        # accelerate did not join the launch's group: waiting would silently do
        # nothing and rank 0 could finish before the others have written.
        raise ReactError(f"WORLD_SIZE is {world} but accelerate set up {state.num_processes} process(es) "
                         f"({state.distributed_type}); cannot synchronize the processes")
    try:
        state.wait_for_everyone()
    except RuntimeError as exc:  # gloo/nccl: a peer died; its own error is what the user needs
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else exc.__class__.__name__
        raise ReactError(f"process {state.process_index} of {world}: another process failed "
                         f"(its error is above): {first}") from None
