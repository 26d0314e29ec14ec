"""How many CPU threads this process may use."""

import os


def cpu_threads() -> int:
    """The CPU threads work started by this process may use.

    OMP_NUM_THREADS when it is set: torch, OpenMP and Accelerate honour it, so a user (or a test runner
    sharing the machine between workers) who sets it expects llama.cpp and the training launch to keep
    to it too. Otherwise the CPUs this process may run on: a container's or `taskset`'s CPU set, not
    every core of the host (`os.cpu_count()`), since threads beyond the set only wait for each other.
    """
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no affinity call on this platform (macOS, Windows)
        return os.cpu_count() or 1
