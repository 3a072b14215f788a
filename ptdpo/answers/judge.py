"""The math-verify judge: is a prediction math-equal to the gold answer, what is an expression's value;
both within a deadline.

Rewards (answer matching, option values) and the spoiler audit (is "$2\\sqrt{3}$" in a hint the answer's
value?) ask the same judge, so model outputs and hint text get the same protection against expressions
that take minutes to evaluate.

Bounded time: math-verify runs with ``parsing_timeout=None`` and ``timeout_seconds=None`` (its own signal
based timeouts do not work in threads) inside worker **processes** (``python -c`` subprocesses speaking
JSON lines; never ``multiprocessing``, so no ``__main__`` re-import and no fork of a CUDA process). A
request is ``{"op": "equal", "gold", "pred", "precision"}`` -> ``{"eq", "how"}`` or ``{"op": "value",
"expr"}`` -> ``{"value", "how"}``. Each request has a deadline; a worker that misses it is killed and
replaced, and the caller gets ``timeout``. Inputs are capped first (``MAX_ANSWER_CHARS``) and power towers
/ huge factorials are refused (``unsafe_expression``) because evaluating them holds the GIL for minutes.
``set_math_backend("thread")`` runs math-verify in daemon threads instead (no subprocesses; the deadline
still applies to the caller, but a runaway computation keeps its thread). Answers are cached.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import queue
import re
import select
import subprocess
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "MAX_ANSWER_CHARS",
    "evaluate",
    "math_equal",
    "math_value",
    "math_workers",
    "set_math_backend",
    "shutdown_math_workers",
]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 5.0
MAX_ANSWER_CHARS = 400  # longer answers are compared as strings only, never parsed


_TOWER_RE = re.compile(r"(\d+)\s*(?:\^|\*\*)\s*[{(]?\s*(\d+)\s*(?:\^|\*\*)\s*[{(]?\s*(\d+)")
_BIG_POWER_RE = re.compile(r"\d\s*(?:\^|\*\*)\s*[{(]?\s*\d{7,}")
_BIG_FACTORIAL_RE = re.compile(r"\d{6,}\s*!")


def _unsafe(s: str) -> bool:
    """Numbers whose exact evaluation would take minutes inside C code (holding the GIL): a numeric power
    tower a^(b^c) with b^c > 10^5, a power with a 7-digit exponent, a factorial of a 6-digit number."""
    if _BIG_POWER_RE.search(s) or _BIG_FACTORIAL_RE.search(s) or len(re.findall(r"\d", s)) > 400:
        return True
    for m in _TOWER_RE.finditer(s):
        b, c = int(m.group(2)[:6]), int(m.group(3)[:6])
        if b >= 2 and c * math.log10(b) > 5:
            return True
    return False


def _balanced(s: str) -> bool:
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


_MV: dict[str, Any] = {}
_MV_LOCK = threading.Lock()


def _mv():
    if not _MV:
        with _MV_LOCK:
            if not _MV:
                logging.getLogger("math_verify").setLevel(logging.ERROR)
                from math_verify import parse, verify

                _MV["parse"], _MV["verify"] = parse, verify
    return _MV["parse"], _MV["verify"]


def _parse(s: str):
    parse, _ = _mv()
    return parse("\\boxed{" + s + "}", parsing_timeout=None)


def _numeric(parsed) -> float | None:
    for obj in parsed:
        if isinstance(obj, str):
            continue
        try:
            if getattr(obj, "free_symbols", None) or not getattr(obj, "is_number", False):
                continue
            v = complex(obj.evalf(30))
            if abs(v.imag) > 1e-12 or not math.isfinite(v.real):
                continue
            return float(v.real)
        except Exception:  # noqa: BLE001
            continue
    return None


_DECIMAL_RE = re.compile(r"^[^\d]*?(-?\d+\.(\d+))[^\d]*$")


def _judge_math(gold: str, pred: str, precision: int | None) -> tuple[bool, str]:
    """The math comparison itself (runs in a worker). (equal?, how)."""
    _, verify = _mv()
    g = _parse(gold)
    if not g:
        return False, "gold_unparsable"
    p = _parse(pred)
    if not p:
        return False, "unparsable"
    if verify(g, p, timeout_seconds=None):
        return True, "math_equal"
    gv, pv = _numeric(g), _numeric(p)
    if gv is not None and pv is not None:
        if precision is not None and precision >= 0:
            if abs(gv - pv) <= 0.5 * 10.0 ** (-precision) * (1 + 1e-9) + 1e-12:
                return True, "rounded_to_precision"
        # a decimal with d >= 2 places on one side that the other side's exact value rounds to (a gold
        # decimal only against an exact prediction: a decimal prediction claims its own precision)
        pred_is_decimal = bool(re.search(r"\d\.\d", pred))
        for text, value in ((pred, pv), (gold, gv)) if not pred_is_decimal else ((pred, pv),):
            m = _DECIMAL_RE.match(text.replace(",", ""))
            if m and len(m.group(2)) >= 2 and abs(float(m.group(1)) - value) < 1e-12 * max(1.0, abs(value)):
                if abs(gv - pv) <= 0.5 * 10.0 ** (-len(m.group(2))) * (1 + 1e-9):
                    return True, "rounded"
    return False, "mismatch"


def _value_of(expr: str) -> float | None:
    """The numeric value of a LaTeX or plain expression (``2\\sqrt{3}``, ``$\\pi/4$``), or None. A LaTeX
    expression without dollars is read as inline math; the first reading that is a number counts."""
    parse, _ = _mv()
    parsed = parse(expr if "$" in expr or "\\" not in expr else f"${expr}$", parsing_timeout=None)
    for p in parsed:
        if hasattr(p, "is_number") and p.is_number:
            return float(p.evalf())
    return None


def _serve(req: dict[str, Any]) -> dict[str, Any]:
    """Answer one request (in a worker process or a judge thread)."""
    op = req.get("op")
    try:
        if op == "equal":
            eq, how = _judge_math(req["gold"], req["pred"], req.get("precision"))
            return {"eq": bool(eq), "how": how}
        if op == "value":
            v = _value_of(req["expr"])
            return {"value": v, "how": "value" if v is not None else "no_value"}
        return {"eq": False, "value": None, "how": f"error:unknown_op:{op}"}
    except Exception as e:  # noqa: BLE001 - math_verify/sympy raise many kinds; garbage means "no"
        return {"eq": False, "value": None, "how": f"error:{type(e).__name__}"}


def _worker_main() -> None:  # pragma: no cover - runs in the worker subprocess
    """JSON-lines loop of a math worker process: one request per line, one answer per line."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    _mv()
    _serve({"op": "equal", "gold": "1", "pred": "1"})  # warm up sympy's caches before announcing readiness
    out.write(b'{"ready": true}\n')
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            resp = _serve(json.loads(line))
        except ValueError as e:
            resp = {"eq": False, "value": None, "how": f"error:{type(e).__name__}"}
        out.write((json.dumps(resp) + "\n").encode())


_CRASHED = {"eq": False, "value": None, "how": "worker_crashed"}


class _Worker:
    """One math-verify subprocess, spoken to over JSON lines."""

    STARTUP_TIMEOUT_S = 120.0

    def __init__(self) -> None:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", "from ptdpo.answers.judge import _worker_main; _worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            close_fds=True,
        )
        self._buf = b""
        line = self._readline(self.STARTUP_TIMEOUT_S)
        if line is None or b"ready" not in line:
            self.kill()
            raise RuntimeError("math worker did not start")

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def _readline(self, timeout: float) -> bytes | None:
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            ready, _, _ = select.select([fd], [], [], left)
            if not ready:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def call(self, req: dict[str, Any], timeout: float) -> dict | None:
        """The worker's answer; None when it missed the deadline (it is then killed and replaced)."""
        try:
            self.proc.stdin.write((json.dumps(req) + "\n").encode())
            self.proc.stdin.flush()
            line = self._readline(timeout)
        except (OSError, ValueError):
            line = None
        if line is None:
            crashed = self.proc.poll() is not None
            self.kill()
            return dict(_CRASHED) if crashed else None
        try:
            return json.loads(line)
        except ValueError:
            self.kill()
            return None

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(timeout=5)
        except Exception:  # noqa: BLE001
            pass
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except Exception:  # noqa: BLE001
                pass


class _ProcessJudge:
    """A fixed number of worker slots; a slot holds a live worker or None (start one on demand)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._slots: queue.Queue[_Worker | None] = queue.Queue()
        for _ in range(size):
            self._slots.put(None)
        self._all: list[_Worker] = []
        self._lock = threading.Lock()

    def ask(self, req: dict[str, Any], timeout: float) -> dict | None:
        worker = self._slots.get()
        try:
            if worker is None or not worker.alive:
                worker = _Worker()
                with self._lock:
                    self._all = [w for w in self._all if w.alive]
                    self._all.append(worker)
            return worker.call(req, timeout)
        finally:
            self._slots.put(worker if worker is not None and worker.alive else None)

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.kill()


class _ThreadJudge:
    """math-verify in a daemon thread per request; the caller stops waiting at the deadline."""

    def ask(self, req: dict[str, Any], timeout: float) -> dict | None:
        box: list[dict[str, Any]] = []
        th = threading.Thread(target=lambda: box.append(_serve(req)), daemon=True, name="ptdpo-math-verify")
        th.start()
        th.join(timeout)
        return box[0] if box else None

    def close(self) -> None:
        pass


_JUDGE: _ProcessJudge | _ThreadJudge | None = None
_JUDGE_PID = os.getpid()  # a forked child must not talk to its parent's workers over inherited pipes
_JUDGE_LOCK = threading.Lock()
_BACKEND = os.environ.get("PTDPO_MATH_BACKEND", "process" if os.name == "posix" else "thread")
_WORKERS = int(os.environ.get("PTDPO_MATH_WORKERS", "0")) or max(1, min(4, os.cpu_count() or 1))
_CACHE: OrderedDict[tuple, dict[str, Any]] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 65536


def set_math_backend(backend: str = "process", workers: int | None = None) -> None:
    """Choose where math-verify runs: ``process`` (default; killable worker subprocesses) or ``thread``."""
    global _BACKEND, _WORKERS, _JUDGE
    if backend not in ("process", "thread"):
        raise ValueError(f"backend must be 'process' or 'thread', got {backend!r}")
    with _JUDGE_LOCK:
        if _JUDGE is not None and _JUDGE_PID == os.getpid():
            _JUDGE.close()
        _JUDGE = None
        _BACKEND = backend
        if workers:
            _WORKERS = int(workers)


def shutdown_math_workers() -> None:
    """Stop the worker subprocesses (they are restarted on the next request)."""
    global _JUDGE
    with _JUDGE_LOCK:
        if _JUDGE is not None and _JUDGE_PID == os.getpid():
            _JUDGE.close()
        _JUDGE = None


atexit.register(shutdown_math_workers)


def math_workers() -> int:
    """How many math workers run at most (``PTDPO_MATH_WORKERS``, else min(4, CPUs))."""
    return _WORKERS


def _judge() -> _ProcessJudge | _ThreadJudge:
    global _JUDGE, _JUDGE_PID
    if _JUDGE is None or _JUDGE_PID != os.getpid():
        with _JUDGE_LOCK:
            if _JUDGE is None or _JUDGE_PID != os.getpid():
                _JUDGE = _ProcessJudge(_WORKERS) if _BACKEND == "process" else _ThreadJudge()
                _JUDGE_PID = os.getpid()
    return _JUDGE


def _ask(req: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    """The judge's answer to a request (cached), or None when it missed the deadline."""
    key = tuple(req.values())
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    try:
        resp = _judge().ask(req, timeout_s)
    except Exception as e:  # noqa: BLE001 - e.g. the worker cannot start: fall back to a thread
        log.warning("math worker unavailable (%s); asking in a thread", e)
        resp = _ThreadJudge().ask(req, timeout_s)
    if resp is not None:
        with _CACHE_LOCK:
            _CACHE[key] = resp
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return resp


def math_equal(
    gold: str, pred: str, precision: int | None = None, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[bool | None, str]:
    """(True/False, how) or (None, 'timeout'). ``how`` for a match: math_equal, rounded,
    rounded_to_precision; otherwise mismatch, unparsable, gold_unparsable, unsafe_expression,
    answer_too_long, gold_too_long, worker_crashed, error:<type>."""
    if len(pred) > MAX_ANSWER_CHARS:
        return False, "answer_too_long"
    if len(gold) > 4 * MAX_ANSWER_CHARS:
        return False, "gold_too_long"
    if not _balanced(pred):
        return False, "unparsable"
    if _unsafe(pred):
        return False, "unsafe_expression"
    resp = _ask({"op": "equal", "gold": gold, "pred": pred, "precision": precision}, timeout_s)
    if resp is None:
        return None, "timeout"
    return bool(resp.get("eq")), str(resp.get("how", ""))


def evaluate(expr: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[float | None, str]:
    """(value, how): how is ``value``, or why there is none: no_value, too_long, unsafe_expression,
    timeout, worker_crashed, error:<type>."""
    if len(expr) > MAX_ANSWER_CHARS:
        return None, "too_long"
    if _unsafe(expr):
        return None, "unsafe_expression"
    resp = _ask({"op": "value", "expr": expr}, timeout_s)
    if resp is None:
        return None, "timeout"
    v = resp.get("value")
    return (float(v), "value") if isinstance(v, int | float) else (None, str(resp.get("how", "no_value")))


def math_value(expr: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> float | None:
    """The numeric value of an expression, or None (unparsable, not a number, or past the deadline)."""
    return evaluate(expr, timeout_s)[0]
