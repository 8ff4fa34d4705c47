"""The one core count: the CPUs this process may run on (its affinity mask, as a CPU-limited container or
``taskset`` sets it), not the machine's total that ``os.cpu_count()`` reports; and the CPU's model name, which
keys the per-machine figures (predict's pipeline, OpenVINO's check)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """CPUs this process may use (at least 1)."""
    if hasattr(os, "process_cpu_count"):  # Python >= 3.13: affinity-aware
        return os.process_cpu_count() or 1
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
