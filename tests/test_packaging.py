"""The install resolves to one onnxruntime: the CPU build by default (uv's default groups, and the dev group's tests
run on it), the CUDA build (onnxruntime-gpu) instead of it with the ``gpu`` extra, never both: they ship the same
``onnxruntime`` module. Read from uv.lock (the resolution every ``uv sync`` installs) by walking its dependency
graph, and asked of uv itself where it is installed (``uv sync --locked --dry-run``: also proves uv.lock is up to
date with pyproject.toml). No network: UV_OFFLINE."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
RUNTIMES = {"onnxruntime", "onnxruntime-gpu"}


@pytest.fixture(scope="module")
def lock() -> dict:
    data = tomllib.loads((ROOT / "uv.lock").read_text())
    return {**data, "by_name": _by_name(data)}


def _by_name(data: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for package in data["package"]:
        out.setdefault(package["name"], []).append(package)
    return out


def _installed(lock: dict, extras: set[str], groups: set[str]) -> set[str]:
    """Every package name the lock installs for cnncli with ``extras`` and dependency ``groups`` (markers ignored:
    any Python version, any platform)."""
    by_name = lock["by_name"]
    seen: set[tuple[str, str | None]] = set()
    names: set[str] = set()
    project = by_name["cnncli"][0]
    todo = list(project.get("dependencies", []))
    todo += [d for extra in extras for d in project.get("optional-dependencies", {}).get(extra, [])]
    todo += [d for group in groups for d in project.get("dev-dependencies", {}).get(group, [])]
    while todo:
        dep = todo.pop()
        name = dep["name"]
        if name == "cnncli":  # the project asks for its own extras (dev: cnncli[serve,...])
            own = project.get("optional-dependencies", {})
            todo += [d for extra in dep.get("extra", []) for d in own.get(extra, [])]
            continue
        for extra in [None, *dep.get("extra", [])]:
            if (name, extra) in seen:
                continue
            seen.add((name, extra))
            names.add(name)
            for package in by_name[name]:
                todo += (package.get("dependencies", []) if extra is None
                         else package.get("optional-dependencies", {}).get(extra, []))
    return names


def test_the_lock_declares_one_build_per_extra_and_their_conflict(lock):
    project = lock["by_name"]["cnncli"][0]
    assert not RUNTIMES & {d["name"] for d in project["dependencies"]}  # not a base dependency
    assert {d["name"] for d in project["optional-dependencies"]["cpu"]} == {"onnxruntime"}
    assert {d["name"] for d in project["optional-dependencies"]["gpu"]} == {"onnxruntime-gpu"}
    conflicts = [{item.get("extra") for item in group if item.get("package") == "cnncli"}
                 for group in lock["conflicts"]]
    assert {"cpu", "gpu"} in conflicts
    uv = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]
    assert set(uv["default-groups"]) == {"dev", "cpu"}


def test_the_default_install_has_the_cpu_build_and_the_gpu_install_the_cuda_build_only(lock):
    default = _installed(lock, extras=set(), groups={"dev", "cpu"})
    assert "onnxruntime" in default and "onnxruntime-gpu" not in default
    assert {"pytest", "fastapi", "openvino"} <= default  # the dev group is all there
    gpu = _installed(lock, extras={"gpu"}, groups={"dev"})
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "pytest" in gpu  # the tests can run on the GPU build


def _uv_sync_plan(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["uv", "sync", "--locked", "--dry-run", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "UV_OFFLINE": "1", "UV_NO_PROGRESS": "1"})


@pytest.mark.skipif(shutil.which("uv") is None, reason="uv is not installed")
def test_uv_installs_one_build_and_refuses_both():
    gpu = _uv_sync_plan("--extra", "gpu", "--no-group", "cpu")
    assert gpu.returncode == 0, gpu.stderr
    plan = gpu.stdout + gpu.stderr
    assert not any(line.strip().startswith("+ onnxruntime==") for line in plan.splitlines()), plan
    both = _uv_sync_plan("--extra", "gpu")  # the cpu group is a default group: uv refuses the mix
    assert both.returncode != 0 and "conflicting extras" in both.stderr, both.stderr
    default = _uv_sync_plan()
    assert default.returncode == 0, default.stderr
    assert not any("+ onnxruntime-gpu" in line for line in (default.stdout + default.stderr).splitlines())
