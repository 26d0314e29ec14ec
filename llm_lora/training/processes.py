"""Several training processes (`accelerate launch`): which one is main, and what they must agree on."""

from __future__ import annotations

import os


def is_main_process() -> bool:
    """Whether this is the main Accelerate process (torchrun's rank 0, or the only process)."""
    return int(os.environ.get("RANK", "0")) == 0


def computed_on_main_process(compute):
    """compute() on the main Accelerate process only; every process receives its (picklable) result.

    For what all processes must agree on and only one may do: making a scratch
    folder, fetching checkpoints into it. A single process just computes.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return compute()
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState()
    value = [compute() if state.is_main_process else None]
    broadcast_object_list(value)
    return value[0]
