"""Nothing of a local Ray outlives its driver. Ray ties its head processes (GCS, raylet, dashboard, log monitor)
to the driver that started them, but the raylet's own children do not follow when the driver is killed with
SIGKILL: ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` try to report the raylet's death to a GCS that is
gone, and live on for minutes.

So before it starts a local Ray, the driver starts a reaper: a small process of its own (``python -m
cnncli.scale.ray_reaper DRIVER_PID``, in its own session so a Ctrl-C on the terminal does not reach it) that
records, every :data:`SCAN_SECONDS`, the driver's descendants started after the reaper itself (the Ray session's
processes: GCS, raylet, agents, workers, actors). When the driver ends, however it ends, or asks for it after
``ray.shutdown()`` (SIGTERM), the reaper stops those still alive (SIGTERM, then SIGKILL after
:data:`GRACE_SECONDS`; a process is matched by its id and start time, so a reused id is never hit) and exits.
A cluster the driver joins (``--ray HOST:PORT``) is not the driver's and is never touched.
"""

from __future__ import annotations

import os
import signal
import sys
import time

SCAN_SECONDS = 0.5
GRACE_SECONDS = 1.5

_reaper = None  # the reaper process of this driver (subprocess.Popen), while a local Ray runs


def _processes() -> dict[int, tuple[int, int]]:
    """Every visible process: id -> (parent id, start time in clock ticks)."""
    table = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):  # gone meanwhile
            continue
        table[int(name)] = (int(fields[1]), int(fields[19]))  # ppid is field 4, starttime field 22 of stat
    return table


def descendants(root: int, started_from: int, table: dict[int, tuple[int, int]] | None = None) -> dict[int, int]:
    """The descendants of ``root`` started at or after ``started_from`` (clock ticks): id -> start time."""
    table = _processes() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = {}, list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if table[pid][1] >= started_from:
            found[pid] = table[pid][1]
        todo += children.get(pid, [])
    return found


def _alive(tracked: dict[int, int]) -> list[int]:
    table = _processes()
    return [pid for pid, started in tracked.items() if pid in table and table[pid][1] == started]


def reap(tracked: dict[int, int], grace: float = GRACE_SECONDS) -> list[int]:
    """Stop the processes ``tracked`` (id -> start time) that are still alive: SIGTERM, then SIGKILL for those
    alive after ``grace`` s. Returns the ids it signalled."""
    alive = _alive(tracked)
    for pid in alive:
        _signal(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(tracked):
        time.sleep(0.1)
    for pid in _alive(tracked):
        _signal(pid, signal.SIGKILL)
    return alive


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:
        pass


def start_reaper() -> None:
    """Start the reaper of this process's local Ray (Linux: it reads ``/proc``; elsewhere nothing starts)."""
    global _reaper
    import subprocess

    if _reaper is None and os.path.isdir("/proc/self"):
        _reaper = subprocess.Popen([sys.executable, "-m", "cnncli.scale.ray_reaper", str(os.getpid())],
                                   stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        time.sleep(0.05)  # it reads its own start time first: Ray's processes start after it


def stop_reaper() -> None:
    """After ``ray.shutdown()``: the reaper stops what is left of the local Ray, and exits."""
    global _reaper
    if _reaper is not None:
        _reaper.terminate()
        try:
            _reaper.wait(GRACE_SECONDS + 5)
        except Exception:  # noqa: BLE001 - it goes on alone and ends with this process
            pass
        _reaper = None


class _Stop(Exception):
    pass


def main(argv: list[str]) -> None:
    driver = int(argv[0])
    me = os.getpid()
    since = _processes()[me][1]
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides; the reaper only cleans up after it

    def stop(signum, frame):
        raise _Stop

    signal.signal(signal.SIGTERM, stop)
    tracked: dict[int, int] = {}
    try:
        while os.getppid() == driver:
            table = _processes()
            tracked.update({p: t for p, t in descendants(driver, since, table).items() if p != me})
            time.sleep(SCAN_SECONDS)
    except _Stop:
        pass
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    reap(tracked)


if __name__ == "__main__":
    main(sys.argv[1:])
