"""Data-parallel predict (issue 15 item 1): replicas of the CPU engine, each decoding and running its own batches,
give bit-identical probabilities to the engine in this process, in input order, with bad images reported and the
rest classified; the split of cores between replicas and threads. New in issue 15 (the old main had only decoder
processes feeding one engine). Issue 24: the pipeline chosen by measurement (forced either way, or auto with its
probe and the figures kept per machine) gives the same probabilities, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cnncli.data.inputs import collect_inputs
from cnncli.engines.base import open_engine
from cnncli.predict import pipeline as pipeline_module
from cnncli.predict import replicas as replicas_module
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


def test_replicas_run_at_most_replica_batch_images_per_forward_with_identical_results(tiny_model_file, folder,
                                                                                      monkeypatch):
    """A --batch-size above REPLICA_BATCH: replicas forward REPLICA_BATCH images at a time (in order, the last job
    shorter), and give the probabilities the engine gives at the full batch in this process."""
    monkeypatch.setattr(replicas_module, "REPLICA_BATCH", 3)
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    jobs = replicas_module.replica_jobs(items, 8)
    assert [len(paths) for paths, _ in jobs] == [3] * 7 + [2]  # 23 inputs
    assert [path for paths, _ in jobs for path in paths] == [it.path for it in items]
    here = list(predict_items(engine, items, k=3, batch_size=8, workers=0))  # batches of 8, in this process
    sizes = []
    forward = engine.predict_proba
    monkeypatch.setattr(engine, "predict_proba", lambda batch: sizes.append(len(batch)) or forward(batch))
    alone = list(predict_items(engine, items, k=3, batch_size=8, workers=1, pipeline="replicas"))  # this process
    assert sizes and max(sizes) == 3 and sum(sizes) == 22  # the bad file never reaches the engine
    two = list(predict_items(engine, items, k=3, batch_size=8, pipeline="replicas"))  # 1 worker + this process
    assert [p.top for p in alone] == [p.top for p in two] == [p.top for p in here]
    assert [p.path for p in two] == [it.path for it in items] and sum(p.ok for p in two) == 22


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


def _run(engine, items, batch_size, pipeline=None, workers=None):
    choices = []
    preds = list(predict_items(engine, items, k=3, batch_size=batch_size, workers=workers, pipeline=pipeline,
                               on_choice=choices.append))
    return preds, (choices[0] if choices else None)


@pytest.fixture()
def fresh_figures(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(pipeline_module.PIPELINE_ENV, raising=False)
    monkeypatch.setattr(pipeline_module, "PROBE_MIN_BATCHES", 8)  # tiny jobs here; the real floor is larger
    return tmp_path / "cache" / pipeline_module.FIGURES_FILE


def test_every_pipeline_choice_gives_the_same_probabilities(tiny_model_file, folder, fresh_figures):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    batch = 2  # 12 batches: a job large enough for the probe (3 batches each pipeline, then the rest)
    assert -(-len(items) // batch) >= pipeline_module.PROBE_MIN_BATCHES
    here, _ = _run(engine, items, batch, workers=0)
    assert len({p.top[0]["prob"] for p in here if p.ok}) > 5  # distinct images, distinct probabilities
    runs = {}
    for pipeline in ("replicas", "decoders", "auto", "auto"):
        preds, choice = _run(engine, items, batch, pipeline)
        runs.setdefault(pipeline, []).append(choice)
        assert [p.path for p in preds] == [it.path for it in items]
        assert [p.top for p in preds] == [p.top for p in here], pipeline  # identical floats, every image
        assert [p.error is None for p in preds] == [p.error is None for p in here]
    assert [c.pipeline for c in runs["replicas"] + runs["decoders"]] == ["replicas", "decoders"]
    assert {c.source for c in runs["replicas"] + runs["decoders"]} == {"forced"}
    probed, cached = runs["auto"]
    assert probed.source == "probe" and set(probed.figures) == {"replicas", "decoders"}
    for figures in probed.figures.values():
        assert figures["images"] == 3 * batch and figures["img_s"] > 0 and figures["cpu_ms"] > 0
    assert probed.pipeline == pipeline_module.better(probed.figures)
    assert fresh_figures.is_file()  # kept for this machine: the second job skips the probe
    assert cached.source == "cached" and cached.pipeline == probed.pipeline and cached.figures == probed.figures
    assert "pipeline: " + probed.pipeline in cached.describe() and "img/s" in cached.describe()


def test_a_damaged_figures_file_means_a_new_probe_not_a_crash(tiny_model_file, folder, fresh_figures):
    import json

    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    key = pipeline_module.machine_key(engine, 2)
    fresh_figures.parent.mkdir(parents=True, exist_ok=True)
    fresh_figures.write_text(json.dumps({"format": pipeline_module.FIGURES_FORMAT, "machines": {key: "replicas"}}))
    preds, choice = _run(engine, items, 2)
    assert choice.source == "probe" and len(preds) == len(items)


def test_the_environment_forces_a_pipeline(tiny_model_file, folder, fresh_figures, monkeypatch):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    monkeypatch.setenv(pipeline_module.PIPELINE_ENV, "decoders")
    _, choice = _run(engine, items, 2)
    assert (choice.pipeline, choice.source) == ("decoders", "forced") and not fresh_figures.exists()
    monkeypatch.setenv(pipeline_module.PIPELINE_ENV, "fastest")
    from cnncli.core.errors import UsageError

    with pytest.raises(UsageError, match="CNNCLI_PIPELINE 'fastest'"):
        _run(engine, items, 2)


def test_a_probe_that_cannot_run_falls_back_to_the_rule(tiny_model_file, folder, fresh_figures, monkeypatch):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    here, _ = _run(engine, items, 2, workers=0)

    def broken(*args):
        raise OSError("no /proc here")

    monkeypatch.setattr(pipeline_module, "machine_key", broken)
    preds, choice = _run(engine, items, 2)
    assert (choice.pipeline, choice.source) == ("replicas", "rule") and "no /proc here" in choice.reason
    assert [p.top for p in preds] == [p.top for p in here]


def test_small_jobs_keep_the_rule_without_a_probe(tiny_model_file, folder, fresh_figures):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    _, choice = _run(engine, items, 4)  # 6 batches
    assert (choice.pipeline, choice.source) == ("replicas", "rule") and not fresh_figures.exists()
    _, choice = _run(engine, items[:3], 4)  # one batch
    assert (choice.pipeline, choice.source) == ("decoders", "rule")


def test_a_small_job_follows_the_figures_a_probe_kept(tiny_model_file, folder, fresh_figures):
    engine = open_engine(str(tiny_model_file), device="cpu", threads=2)
    items = collect_inputs([str(folder)])
    here, _ = _run(engine, items, 4, workers=0)
    figures = {"replicas": {"img_s": 10.0, "cpu_ms": 5.0, "images": 12},
               "decoders": {"img_s": 20.0, "cpu_ms": 4.0, "images": 12}}
    pipeline_module.keep_figures(pipeline_module.machine_key(engine, 4),
                                 pipeline_module.PipelineChoice("decoders", "probe", figures=figures))
    preds, choice = _run(engine, items, 4)  # 6 batches: under the probe's floor, but measured here before
    assert (choice.pipeline, choice.source, choice.figures) == ("decoders", "cached", figures)
    assert [p.top for p in preds] == [p.top for p in here]
    _, choice = _run(engine, items, 5)  # another batch size: nothing kept for it, the rule
    assert (choice.pipeline, choice.source) == ("replicas", "rule")


@pytest.mark.parametrize(("images", "batches"), [(256, 3), (512, 3), (1280, 6), (1600, 8), (100_000, 8)])
def test_the_probe_grows_with_the_job_within_bounds(images, batches):
    assert pipeline_module.probe_batches(images, 32) == batches


@pytest.mark.parametrize(("replicas", "decoders", "best"), [
    ((100, 20), (150, 13), "decoders"), ((150, 20), (100, 13), "replicas"), ((100, 20), (101, 13), "decoders"),
    ((101, 13), (100, 20), "replicas"),
])
def test_the_better_pipeline_is_the_faster_or_on_a_tie_the_cheaper(replicas, decoders, best):
    figures = {"replicas": {"img_s": replicas[0], "cpu_ms": replicas[1]},
               "decoders": {"img_s": decoders[0], "cpu_ms": decoders[1]}}
    assert pipeline_module.better(figures) == best


def test_predict_verbose_says_which_pipeline_ran_and_a_bad_one_is_refused(run_cli, tiny_model_file, folder,
                                                                          fresh_figures):
    args = ["predict", folder, "--model", tiny_model_file, "-f", "json", "--device", "cpu", "--batch-size", "2"]
    result = run_cli(*args, "--verbose", "--pipeline", "decoders")
    assert result.code == 1  # the bad file
    assert "pipeline: decoders (CNNCLI_PIPELINE/--pipeline decoders)" in result.err
    assert "engine: onnxruntime" in result.err
    assert "pipeline:" not in run_cli(*args).err  # only with --verbose
    result = run_cli(*args, "--pipeline", "fastest")
    assert result.code == 2 and result.err.strip().count("\n") == 0 and "--pipeline 'fastest'" in result.err
