"""Data-parallel predict (issue 15 item 1): replicas of the CPU engine, each decoding and running its own batches,
give bit-identical probabilities to the engine in this process, in input order, with bad images reported and the
rest classified; the split of cores between replicas and threads. New in issue 15 (the old main had only decoder
processes feeding one engine)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnncli.data.inputs import collect_inputs
from cnncli.engines.base import open_engine
from cnncli.predict.replicas import replica_plan, replicable
from cnncli.predict.run import predict_items


@pytest.fixture(scope="module")
def folder(tmp_path_factory, photos):
    out = tmp_path_factory.mktemp("replicas")
    rng = np.random.default_rng(0)
    for i in range(22):
        img = Image.open(photos["chelsea" if i % 2 else "coffee"]).convert("RGB")
        x, y = int(rng.integers(0, 100)), int(rng.integers(0, 80))
        img.crop((x, y, x + 200 + i * 3, y + 180)).save(out / f"img_{i:02d}.jpg", quality=90)
    (out / "img_10b.jpg").write_bytes(b"not a jpeg")  # a bad file in the middle
    return out


def test_replicas_match_the_engine_in_this_process_bit_for_bit(tiny_model_file, folder):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    assert replicable(engine)
    items = collect_inputs([str(folder)])
    here = list(predict_items(engine, items, k=3, batch_size=4, workers=0))
    there = list(predict_items(engine, items, k=3, batch_size=4))  # the default: replicas (2 cores: 1 worker + here)
    assert [p.path for p in there] == [p.path for p in here] == [it.path for it in items]  # input order
    assert [p.top for p in there] == [p.top for p in here]  # same classes and identical probabilities
    bad = [p for p in there if not p.ok]
    assert len(bad) == 1 and bad[0].path.endswith("img_10b.jpg") and "img_10b.jpg" in bad[0].error
    assert sum(p.ok for p in there) == 22


def test_torch_engine_is_not_replicated(tiny_model_file):
    assert not replicable(open_engine(str(tiny_model_file), device="cpu", engine="torch"))


@pytest.mark.parametrize(("workers", "threads", "cores", "plan"), [
    (None, None, 2, (2, 1)), (None, 2, 2, (2, 1)), (None, None, 16, (8, 2)), (None, 4, 16, (4, 1)),
    (3, None, 12, (3, 4)), (1, 2, 2, (1, 2)),
])
def test_replica_plan_shares_the_cores(workers, threads, cores, plan):
    assert replica_plan(workers, threads, cores) == plan


def test_workers_that_cannot_start_leave_the_work_to_this_process(tiny_model_file, folder, capsys):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=1)

    class Unstartable:  # the same engine, whose worker processes fail to open their copy
        card, threads, name = engine.card, 1, engine.name

        def predict_proba(self, batch):
            return engine.predict_proba(batch)

        def replica_recipe(self):
            return ("onnx", str(folder / "missing.onnx"), "fp32")

    items = collect_inputs([str(folder)])
    here = list(predict_items(engine, items, k=3, batch_size=4, workers=0))
    there = list(predict_items(Unstartable(), items, k=3, batch_size=4, workers=2))
    assert [p.top for p in there] == [p.top for p in here]
    assert "worker processes stopped" in capsys.readouterr().err
