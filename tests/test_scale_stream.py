"""Issue 18/19: one predict job for local files and for URI inputs. Through it, URI inputs written to a local
--output now get what local predict always had: the file appears complete (missing folders created, written
beside the target and renamed) and --summary-only prints the summary and no rows."""

from __future__ import annotations

import json

import pytest
from scale_helpers import (
    tiny_onnx,  # noqa: F401 - a pytest fixture, used by name as an argument
    write_images,
)


@pytest.fixture
def memory_images(tmp_path):
    """12 images (one corrupt) under memory://job-test/."""
    import fsspec

    folder = tmp_path / "imgs"
    paths = write_images(folder, 12)
    fs = fsspec.filesystem("memory")
    for path in paths:
        fs.pipe_file(f"/job-test/{path.relative_to(folder)}", path.read_bytes())
    yield "memory://job-test/", len(paths)
    fs.rm("/job-test", recursive=True)


def test_uri_inputs_write_a_local_file_atomically_in_new_folders(run_cli, memory_images, tiny_onnx, tmp_path):
    uri, count = memory_images
    target = tmp_path / "new" / "folder" / "preds.jsonl"
    result = run_cli("predict", uri, "--model", tiny_onnx, "-f", "jsonl", "-o", target)
    assert result.code == 1 and result.out == ""  # the corrupt image
    rows = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(rows) == count and all(r["path"].startswith("memory://") for r in rows)
    err = "".join(result.err.split())  # the long path may be wrapped anywhere
    assert f"wrote{count}predictions(jsonl)to{target}" in err and f"{count}images,1failed" in err
    assert [p.name for p in target.parent.iterdir()] == ["preds.jsonl"]  # no temporary left


def test_uri_inputs_honour_summary_only(run_cli, memory_images, tiny_onnx):
    uri, count = memory_images
    result = run_cli("predict", uri, "--model", tiny_onnx, "--summary-only")
    assert result.code == 1 and result.out == ""
    err = " ".join(result.err.split())
    assert f"{count} images, 1 failed" in err and "predicted (top-1):" in err
