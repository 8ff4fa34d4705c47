"""cnncli.core.memory: with freed memory kept, a training loop's large buffers are reused instead of being mapped
and page-faulted in again on every step (what made Lite0 steps at 224 px a third slower on a CPU)."""

from __future__ import annotations

import subprocess
import sys

import pytest

LOOP = """
import resource, sys
import torch
torch.set_num_threads(1)
from cnncli.core.memory import keep_freed_memory
kept = keep_freed_memory() if sys.argv[1] == "keep" else False
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.ones(16 * 2**20).sum()  # 64 MB, above glibc's largest mmap threshold
before = faults()
for _ in range(40):
    torch.ones(16 * 2**20).sum()
print(kept, faults() - before)
"""


def faults_over_forty_steps(mode: str) -> tuple[bool, int]:
    done = subprocess.run([sys.executable, "-c", LOOP, mode], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    kept, faults = done.stdout.split()
    return kept == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_kept_memory_is_reused_instead_of_faulted_in_again():
    kept, with_keep = faults_over_forty_steps("keep")
    _, plain = faults_over_forty_steps("plain")
    assert kept
    pages = 16 * 2**20 * 4 // 4096  # one buffer's 4 KiB pages
    assert plain > 30 * pages  # glibc maps each buffer afresh: every step faults it in
    assert with_keep < plain / 2  # mostly reused (seen: 4-9 buffers' pages of 40 where the heap moved)
