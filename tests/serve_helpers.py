"""A real `cnncli serve` process on a free loopback port, for the serve tests: started, waited for (ready), and
always stopped (SIGTERM, then SIGKILL), with its stderr collected."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

URL_LINE = re.compile(r"listening on (http://127\.0\.0\.1:\d+)")


def children_of(pid: int) -> list[int]:
    """Processes whose parent is ``pid`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


SERVE_ENGINES = Path(__file__).with_name("serve_engines.py")


def open_files_limit(n: int):
    """A preexec_fn: the child starts with at most ``n`` open files (soft and hard RLIMIT_NOFILE), as `ulimit -n`."""
    import resource

    return lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))


class ServeProcess:
    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120,
                 engine: str | None = None, preexec_fn=None) -> None:
        """`cnncli serve --port 0 ARGS`; with ``engine`` (a KIND of tests/serve_engines.py), that script instead,
        serving the misbehaving engine through the same server code (ARGS: the model, then its options)."""
        # no --host: every test also checks that the default is loopback only (URL_LINE wants 127.0.0.1)
        if engine is None:
            cmd = [sys.executable, "-m", "cnncli", "serve", "--port", "0", *map(str, args)]
        else:
            cmd = [sys.executable, str(SERVE_ENGINES), engine, *map(str, args)]
        self.proc = subprocess.Popen(cmd, env={**os.environ, **(env or {})}, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True, preexec_fn=preexec_fn)
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        try:
            if not self._url.wait(timeout):
                raise RuntimeError("cnncli serve did not print its URL:\n" + self.stderr)
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))
            match = URL_LINE.search(line)
            if match and not self.url:
                self.url = match.group(1)
                self._url.set()

    @property
    def stderr(self) -> str:
        return "\n".join(self.lines)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("cnncli serve exited:\n" + self.stderr)
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("cnncli serve never became ready:\n" + self.stderr)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=kwargs.pop("timeout", 60), **kwargs)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM, wait, SIGKILL if it hangs; returns the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._reader.join(5)
        return self.proc.returncode

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def make_tiny_model(path: Path, seed: int) -> Path:
    """A simplecnn model file like conftest's tiny_model_file (same three classes), from its own seed, with its
    onnxruntime export already in the test session's cache (so a server never needs torch for it)."""
    import torch

    from cnncli.engines.cache import prepare_cached_onnx
    from cnncli.models.checkpoint import save_model
    from cnncli.models.registry import create_model

    torch.manual_seed(seed)
    built = create_model("simplecnn", classes=["brick", "grass", "gravel"])
    save_model(path, built.model, built.card)
    prepare_cached_onnx(str(path), quiet=True)
    return path
