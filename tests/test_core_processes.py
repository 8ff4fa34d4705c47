"""cnncli.core.processes: pool workers that end with their parent, and that skip the interpreter's teardown once
their work is done (issue 24: the pool waits for its workers at the end of each predict job)."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60)


def test_a_worker_that_exits_without_teardown_runs_no_exit_handler_registered_before(tmp_path):
    marker = tmp_path / "teardown-ran"
    code = f"""
        import atexit, pathlib
        atexit.register(pathlib.Path({str(marker)!r}).write_text, "ran")  # stands for the interpreter's teardown
        from cnncli.core.processes import exit_without_teardown
        exit_without_teardown()
        print("done", flush=True)
    """
    done = _run(code)
    assert (done.returncode, done.stdout.strip()) == (0, "done") and not marker.exists()
    plain = _run(code.replace("exit_without_teardown()\n", "pass\n"))  # the same process without it: teardown runs
    assert plain.returncode == 0 and marker.read_text() == "ran"


def test_a_pool_of_such_workers_returns_every_result_and_is_joined():
    code = """
        import multiprocessing as mp, os
        from concurrent.futures import ProcessPoolExecutor
        from cnncli.core.processes import exit_without_teardown

        if __name__ == "__main__":
            pool = ProcessPoolExecutor(2, mp_context=mp.get_context("spawn"), initializer=exit_without_teardown)
            results = list(pool.map(abs, range(-50, 0)))
            pool.shutdown(wait=True)
            print(sum(results), len(mp.active_children()))
    """
    done = _run(code)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.split() == [str(sum(range(1, 51))), "0"]
