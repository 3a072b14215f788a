"""The line protocol between a benchmark driver (bench/vs_trl.py, bench/rollout_throughput.py) and its
workers, each a long-lived process in its own environment: the worker prints ``@ready {json}`` once set
up, then ``@step {json}`` after each ``step`` line it reads on stdin, and leaves on any other line. Pure
Python: every environment imports it.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def emit(tag: str, payload: dict) -> None:
    sys.stdout.write(f"@{tag} {json.dumps(payload)}\n")
    sys.stdout.flush()


class ForwardCounter:
    """Forward calls through one module, and the rows and token positions (padding included) they ran
    (generation's decoding steps included)."""

    def __init__(self, module):
        self.calls = self.rows = self.tokens = 0
        module.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls += 1
        if ids is not None:
            self.rows += int(ids.shape[0])
            self.tokens += int(ids.numel())

    def take(self) -> dict:
        out = {"calls": self.calls, "rows": self.rows, "tokens": self.tokens}
        self.calls = self.rows = self.tokens = 0
        return out


class Worker:
    """One worker process: started (it reports ``@ready``), then stepped on demand."""

    def __init__(self, name: str, cmd: list[str], env: dict[str, str], cwd: Path | None = None):
        self.name = name
        # stderr goes to a file: a worker's logs must never fill a pipe nobody reads and stall it
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log,
                                     text=True, env=env, cwd=cwd)
        self.steps: list[dict] = []
        self.info = self._read("ready")

    def _read(self, tag: str) -> dict:
        for line in self.proc.stdout:
            if line.startswith(f"@{tag} "):
                return json.loads(line[len(tag) + 2 :])
        code = self.proc.wait()
        self.log.seek(0)
        raise RuntimeError(f"worker {self.name} ended before '@{tag}' (exit {code}):\n{self.log.read()[-4000:]}")

    def step(self) -> dict:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        out = self._read("step")
        self.steps.append(out)
        return out

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("quit\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()


def spread(xs: list[float]) -> tuple[float, float, float]:
    return min(xs), statistics.median(xs), max(xs)
