"""``cnncli inspect DATA`` on a multi-label manifest: per-class counts per split, label cardinality, images with no
label and the co-occurrence matrix, each recomputed here from the manifest's text; the table; the health checks
(duplicates carrying other labels, missing files); single-label reports unchanged; bad manifests exit 2."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
from multilabel_data import write_digit_mosaics

CLASSES = 4


@pytest.fixture(scope="module")
def mosaics(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml-inspect")
    return write_digit_mosaics(root, n=60, classes=CLASSES, size=16, blank=0.5)  # several images with no digit


def _manifest_labels(manifest) -> list[set[str]]:
    with open(manifest, newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    return [{name for name in row[1].split("|") if name} for row in rows]


def test_counts_cardinality_and_co_occurrence_match_the_manifest(mosaics, run_cli):
    out = run_cli("inspect", mosaics, "--format", "json")
    report = json.loads(out.out)
    assert out.code == 1 and all("identical files" in p or "more than one split" in p for p in report["problems"])
    labels = _manifest_labels(mosaics)
    names = [str(d) for d in range(CLASSES)]
    y = np.array([[name in row for name in names] for row in labels], dtype=int)
    assert report["task"] == "multilabel" and report["classes"] == names and report["n_images"] == len(labels)
    assert sum(report["counts"]["val"].values()) > 0  # the stratified hold-out is counted apart
    for c, name in enumerate(names):
        assert report["counts"]["train"][name] + report["counts"]["val"][name] == y[:, c].sum()
    assert report["labels"]["label_cardinality"] == pytest.approx(y.sum(axis=1).mean())
    assert report["labels"]["no_label"] == int((y.sum(axis=1) == 0).sum()) > 0
    assert report["labels"]["co_occurrence"] == (y.T @ y).tolist()
    pairs = report["labels"]["top_pairs"]
    assert [p["images"] for p in pairs] == sorted((p["images"] for p in pairs), reverse=True)
    best = max((int((y[:, i] & y[:, j]).sum()), i, j) for i in range(CLASSES) for j in range(i + 1, CLASSES))
    assert pairs[0]["images"] == best[0]
    table = run_cli("inspect", mosaics)  # the blank mosaics are identical files: problems, exit 1
    assert "multi-label" in table.out and f"labels per image: {y.sum(axis=1).mean():.2f}" in table.out
    top = " + ".join(pairs[0]["labels"])
    assert any(top in line and str(pairs[0]["images"]) in line for line in table.out.splitlines()), table.out


def test_duplicates_with_other_labels_and_missing_files_are_problems(mosaics, tmp_path, run_cli):
    root = tmp_path / "data"
    shutil.copytree(mosaics.parent / "images", root / "images")
    rows = mosaics.read_text().splitlines()
    shutil.copy(root / "images" / "m0.png", root / "images" / "copy.png")
    rows += ["images/copy.png,0|1|2|3", "images/gone.png,1"]  # m0's pixels under another label set; a missing file
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    out = run_cli("inspect", root / "labels.csv", "--format", "json")
    assert out.code == 1
    report = json.loads(out.out)
    assert any("carr" in p and "different labels" in p for p in report["problems"]), report["problems"]
    assert [u["path"] for u in report["unreadable"]] == [str(root / "images" / "gone.png")]


def test_single_label_reports_keep_their_keys_and_task_multilabel_forces_the_report(tmp_path, run_cli):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(6):
        Image.new("L", (8, 8), 30 * i).save(tmp_path / "img" / f"{i}.png")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,label\n" + "".join(f"img/{i}.png,{'ab'[i % 2]}\n" for i in range(6)))
    single = json.loads(run_cli("inspect", manifest, "-f", "json").out)
    assert "task" not in single and "labels" not in single
    forced = json.loads(run_cli("inspect", manifest, "-f", "json", "--task", "multilabel").out)
    assert forced["task"] == "multilabel" and forced["labels"]["label_cardinality"] == 1.0
    assert forced["labels"]["top_pairs"] == []


def test_a_manifest_training_refuses_is_refused_in_one_sentence(tmp_path, run_cli):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(2):
        Image.new("L", (8, 8), 30 * i).save(tmp_path / "img" / f"{i}.png")
    manifest = tmp_path / "labels.csv"
    manifest.write_text("path,labels\nimg/0.png,a|b;c\nimg/1.png,b\n")
    out = run_cli("inspect", manifest)
    assert out.code == 2 and "mix '|' and ';'" in out.err and out.err.strip().count("\n") == 0, out.err
