"""torchrun across two "nodes" on loopback: two torchrun launchers (``--nnodes 2``, one process each) meet at a c10d
rendezvous on 127.0.0.1 and train LeNet-5 with DDP (gloo) on real digits streamed from packed shards, each rank
reading its own disjoint share of the shards. Rank 0 (whichever launcher the rendezvous makes it) alone logs and
writes the run folder."""

from __future__ import annotations

import csv
import subprocess
import sys

import pytest
from scale_helpers import free_port
from train_data import write_digits

from cnncli.data.pack import pack_dataset


@pytest.mark.slow
def test_two_torchrun_nodes_on_loopback_train_from_packed_shards(tmp_path):
    digits = write_digits(tmp_path / "digits", per_class=20)
    pack_dataset(str(digits), str(tmp_path / "packed"), shard_size=20, quiet=True)
    port = free_port()
    run = tmp_path / "run"
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                               "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "cnncli-test",
                               "-m", "cnncli", "train", str(tmp_path / "packed"), "--arch", "lenet5",
                               "--image-size", "32", "--grayscale", "--epochs", "2", "--batch-size", "16",
                               "--workers", "0", "--shuffle-buffer", "50", "-o", str(run)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for rank in (0, 1)]
    outputs = []
    try:
        for node in nodes:
            outputs.append(node.communicate(timeout=420)[0])
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
                node.wait()
    assert [n.returncode for n in nodes] == [0, 0], outputs
    with open(run / "results.csv", newline="") as fh:
        assert [row["epoch"] for row in csv.DictReader(fh)] == ["1", "2"]
    said = [" ".join(text.split()) for text in outputs]
    assert sum(text.count("epoch 2/2 train loss") for text in said) == 1, said  # one rank logs, once
    assert any("train lenet5 on 160 train / 40 val images" in text for text in said), said
