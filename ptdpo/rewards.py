"""Verifiable rewards: answer extraction, math-aware answer matching, the format check, R = a*acc + f*fmt.

METHOD.md section 2, step 2: each rollout gets ``accuracy`` in {0, 1} and ``format`` in {0, 1}; the paper's
reward is ``R = 0.9 * accuracy + 0.1 * format`` (both weights are arguments).

Answer extraction (:func:`extract_answer`), first rule that finds something wins:

1. the last complete ``<answer>...</answer>`` block (if it holds a ``\\boxed{}``, the last box inside it);
   an ``<answer>`` left open at the end of the text (a truncated output) is used when no block is complete;
2. the last complete ``\\boxed{...}`` (or ``\\fbox{...}``) anywhere in the text, nested braces included;
3. the last line of the form ``Answer: ...`` / ``Final answer: ...`` (markdown emphasis allowed);
4. with ``allow_bare=True`` (the default): what follows the last ``</think>`` (or the whole text when there
   is no think block), when it is one short line without tags (a model answering just ``B`` or ``12``;
   EasyR1's r1v reward likewise grades the whole response when it has no answer tags).

Answer matching (:func:`answers_match`), in this order:

- multiple choice (``choices`` given, ``answer_type="choice"``, or a gold answer made of option letters
  such as ``B`` or ``A, C``): the gold answer is resolved to a set of letters (a gold answer that is an
  option's text, as in MathVista, maps to that option's letter); the prediction may be ``B``, ``(B)``,
  ``B.``, ``B) text``, ``Option B``, ``\\text{B}``, the option's text, or a value math-equivalent to exactly
  one option's text;
- normalised string equality (case, punctuation, articles, ``\\text{}`` wrappers, "the answer is" prefixes);
- for mathematical gold answers (``answer_type`` ``number``/``expression``, or an ``auto`` gold answer with
  a digit, a LaTeX command or an operator): math-verify equivalence (fractions vs decimals, ``\\frac``,
  ``\\dfrac``, ``\\sqrt``, percentages, thousands separators, ``^\\circ``, units such as ``cm``), then two
  rounding rules: with ``precision=p`` (MathVista's per-item field) both values agree to ``p`` decimals;
  a decimal prediction with d >= 2 places matches an exact gold value that rounds to it (``1.41`` for
  ``\\sqrt{2}``, ``0.33`` for ``1/3``), and an exact prediction matches a gold decimal with d >= 2 places
  it rounds to (``\\pi`` for ``3.14``); a decimal prediction against a decimal gold gets no tolerance
  (``1.414`` is not ``1.41`` unless the item gives ``precision=2``);
- free text (``answer_type="text"`` or a non-mathematical gold such as ``yes`` or ``red``): the normalised
  string equality above only (plus number words: ``three`` matches ``3``). Words never go through
  math-verify, where ``red`` and ``der`` parse to the same product of symbols.

Format (:func:`check_format`), after stripping surrounding whitespace and trailing chat special tokens
(``<|im_end|>``, ``<|endoftext|>``), the output is well formed iff it is exactly
``<think>T</think>`` + optional whitespace + ``<answer>A</answer>`` with T and A not blank and each of the four
tags present exactly once. With ``think_prefilled=True`` (the chat template already opened ``<think>``, as
Qwen3-Thinking's does) the leading ``<think>`` may be absent; everything else is the same.

Bounded time: math-verify runs with ``parsing_timeout=None`` and ``timeout_seconds=None`` (its own signal
based timeouts do not work in threads) inside worker **processes** (``python -c`` subprocesses speaking
JSON lines; never ``multiprocessing``, so no ``__main__`` re-import and no fork of a CUDA process). Each
comparison has a deadline; a worker that misses it is killed and replaced, and the comparison scores 0
with reason ``timeout``. Inputs are capped first (``MAX_TEXT_CHARS`` of output, ``MAX_ANSWER_CHARS`` of
extracted answer) and power towers / huge factorials in a prediction are refused (``unsafe_expression``)
because evaluating them holds the GIL for minutes. ``set_math_backend("thread")`` runs math-verify in
daemon threads instead (no subprocesses; the deadline still applies to the caller, but a runaway
computation keeps its thread). Nothing here raises on model output: garbage scores 0 with a reason.
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
import unicodedata
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ptdpo.answers.words import CHOICE_LETTERS, NUMBER_WORDS

__all__ = [
    "ANSWER_TYPES",
    "RewardResult",
    "answers_match",
    "check_format",
    "extract_answer",
    "match_answer",
    "normalize_text",
    "score_batch",
    "score_response",
    "set_math_backend",
    "shutdown_math_workers",
]

log = logging.getLogger(__name__)

ANSWER_TYPES = ("auto", "number", "expression", "choice", "text")
ACCURACY_WEIGHT = 0.9
FORMAT_WEIGHT = 0.1
DEFAULT_TIMEOUT_S = 5.0
MAX_TEXT_CHARS = 200_000  # longer outputs: only the tail is searched for an answer
MAX_ANSWER_CHARS = 400  # longer extracted answers are compared as strings only, never parsed
MAX_BARE_CHARS = 64  # rule 4 of extract_answer: a bare answer is one line at most this long
_SPECIAL_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>")


# ----------------------------------------------------------------------------------------------------------
# Extraction
# ----------------------------------------------------------------------------------------------------------


def _as_text(text: Any) -> str:
    """Coerce anything a generator might hand over into a string (None, bytes, numbers); never raises."""
    if text is None:
        return ""
    if isinstance(text, str):
        return text
    if isinstance(text, bytes | bytearray):
        return bytes(text).decode("utf-8", errors="replace")
    try:
        return str(text)
    except Exception:  # noqa: BLE001 - a hostile __str__ must not crash the reward
        return ""


def _matching_braces(text: str) -> dict[int, int]:
    """Map each '{' index to its matching '}' index, in one linear pass; ``\\{`` and ``\\}`` are literals."""
    pairs: dict[int, int] = {}
    stack: list[int] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            pairs[stack.pop()] = i
        i += 1
    return pairs


_BOXED_RE = re.compile(r"\\(?:boxed|fbox)\s*")


def _boxed_contents(text: str) -> list[str]:
    """Contents of every complete ``\\boxed{...}`` / ``\\fbox{...}`` (and ``\\boxed 5``), in text order."""
    out: list[str] = []
    pairs: dict[int, int] | None = None
    for m in _BOXED_RE.finditer(text):
        i = m.end()
        if i < len(text) and text[i] == "{":
            if pairs is None:
                pairs = _matching_braces(text)
            j = pairs.get(i)
            if j is not None:
                out.append(text[i + 1 : j])
        elif m.group(0).endswith((" ", "\t")):
            tok = re.match(r"[^\s$\\{}]+", text[i:])
            if tok:
                out.append(tok.group(0))
    return out


def _last_answer_block(text: str) -> tuple[str | None, bool]:
    """(content of the last complete <answer> block, or of a trailing unclosed one; closed?)"""
    low = text.lower()
    close = low.rfind("</answer>")
    if close >= 0:
        open_ = low.rfind("<answer>", 0, close)
        if open_ >= 0:
            return text[open_ + len("<answer>") : close], True
    open_ = low.rfind("<answer>")
    if open_ >= 0 and open_ > close:
        return text[open_ + len("<answer>") :], False
    return None, False


_ANSWER_LINE_RE = re.compile(
    r"^[\s>#*_\-]*(?:the\s+)?(?:final\s+)?answer(?:\s+is)?\s*[*_]*\s*[:：]\s*[*_]*\s*(?P<ans>.*?)\s*$",
    re.IGNORECASE,
)
_WRAPPERS = (("$$", "$$"), ("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("**", "**"), ("`", "`"))
_TEXT_CMD_RE = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")


def _clean_answer(s: str | None) -> str | None:
    """Strip math delimiters, markdown emphasis, a trailing full stop and an 'Answer:' prefix."""
    if s is None:
        return None
    s = s.strip()
    for _ in range(3):
        before = s
        for left, right in _WRAPPERS:
            if len(s) >= len(left) + len(right) and s.startswith(left) and s.endswith(right):
                s = s[len(left) : len(s) - len(right)].strip()
        m = _ANSWER_LINE_RE.match(s) if "\n" not in s else None
        if m and m.group("ans"):
            s = m.group("ans").strip()
        if s.endswith(".") and not s.endswith(".."):
            s = s[:-1].rstrip()
        if s == before:
            break
    return s or None


def _after_think(text: str) -> str:
    k = text.rfind("</think>")
    return text[k + len("</think>") :] if k >= 0 else text


def _strip_special(text: str) -> str:
    t = text.rstrip()
    changed = True
    while changed:
        changed = False
        for tok in _SPECIAL_TOKENS:
            if t.endswith(tok):
                t = t[: -len(tok)].rstrip()
                changed = True
    return t


def extract_answer(text: Any, allow_bare: bool = True) -> str | None:
    """The final answer in a model output, or None (see the module docstring for the rules)."""
    try:
        return _extract(text, allow_bare)[0]
    except Exception:  # noqa: BLE001 - never raise on model output
        return None


def _extract(text: Any, allow_bare: bool = True) -> tuple[str | None, str]:
    """(answer, how) where how is answer_tag | answer_tag_unclosed | boxed | answer_line | bare | none."""
    t = _strip_special(_as_text(text))
    if len(t) > MAX_TEXT_CHARS:
        t = t[-MAX_TEXT_CHARS:]
    if not t.strip():
        return None, "none"
    block, closed = _last_answer_block(t)
    if block is not None:
        boxes = _boxed_contents(block)
        ans = _clean_answer(boxes[-1] if boxes else block)
        if ans is not None:
            return ans, "answer_tag" if closed else "answer_tag_unclosed"
    boxes = _boxed_contents(t)
    for b in reversed(boxes):
        ans = _clean_answer(b)
        if ans is not None:
            return ans, "boxed"
    lines = t.splitlines()
    for line in reversed(lines[-200:]):
        if len(line) > 2000:
            continue
        m = _ANSWER_LINE_RE.match(line)
        if m:
            ans = _clean_answer(m.group("ans"))
            if ans is not None:
                return ans, "answer_line"
    if allow_bare:
        tail = _after_think(t).strip()
        bare_ok = (
            "\n" not in tail and len(tail) <= MAX_BARE_CHARS and "<" not in tail and "\\boxed" not in tail
        )
        if tail and bare_ok:
            ans = _clean_answer(tail)
            if ans is not None:
                return ans, "bare"
    return None, "none"


# ----------------------------------------------------------------------------------------------------------
# Format
# ----------------------------------------------------------------------------------------------------------


def check_format(text: Any, think_prefilled: bool = False) -> tuple[bool, str]:
    """(well formed?, reason). Reasons: ok, empty, think_tags, answer_tags, text_before_think, empty_think,
    text_between_think_and_answer, text_after_answer, empty_answer, error."""
    try:
        t = _strip_special(_as_text(text)).strip()
        if not t:
            return False, "empty"
        n_open, n_close = t.count("<think>"), t.count("</think>")
        if n_close != 1 or n_open > 1 or (n_open == 0 and not think_prefilled):
            return False, "think_tags"
        if t.count("<answer>") != 1 or t.count("</answer>") != 1:
            return False, "answer_tags"
        start = 0
        if n_open == 1:
            if not t.startswith("<think>"):
                return False, "text_before_think"
            start = len("<think>")
        end = t.index("</think>")
        if end < start or not t[start:end].strip():
            return False, "empty_think"
        rest = t[end + len("</think>") :].strip()
        if not rest.startswith("<answer>"):
            return False, "text_between_think_and_answer"
        if not rest.endswith("</answer>"):
            return False, "text_after_answer"
        if not rest[len("<answer>") : -len("</answer>")].strip():
            return False, "empty_answer"
        return True, "ok"
    except Exception:  # noqa: BLE001
        return False, "error"


# ----------------------------------------------------------------------------------------------------------
# String normalisation, choices
# ----------------------------------------------------------------------------------------------------------

_ARTICLES = {"a", "an", "the"}
_PUNCT_RE = re.compile(r"[^\w\s]", re.UNICODE)
_PREFIX_RE = re.compile(r"^(?:the\s+)?(?:final\s+)?(?:answer|result)\s*(?:is|:)\s*", re.IGNORECASE)


_NUM_TOKEN_RE = re.compile(r"-?\d+(?:[.,/]\d+)*")


def _strip_latex_text(s: str) -> str:
    for _ in range(3):
        s2 = _TEXT_CMD_RE.sub(r"\1", s)
        if s2 == s:
            break
        s = s2
    return s.strip()


def normalize_text(s: Any) -> str:
    """Lower case, NFKC, no LaTeX text wrappers, no punctuation (numbers such as ``-3.5`` kept whole), no
    articles, single spaces. For free-text and option-text comparison."""
    s = _strip_latex_text(unicodedata.normalize("NFKC", _as_text(s)))
    s = _PREFIX_RE.sub("", s.replace("$", " ").strip()).lower()
    parts: list[str] = []
    pos = 0
    for m in _NUM_TOKEN_RE.finditer(s):
        parts.append(_PUNCT_RE.sub(" ", s[pos : m.start()]))
        parts.append(" " + m.group(0) + " ")
        pos = m.end()
    parts.append(_PUNCT_RE.sub(" ", s[pos:]))
    return " ".join(w for w in "".join(parts).replace("_", " ").split() if w not in _ARTICLES)


def _light_normalize(s: str) -> str:
    """For mathematical answers: only delimiters, text wrappers, spacing commands and spaces removed."""
    s = _strip_latex_text(unicodedata.normalize("NFKC", s))
    s = re.sub(r"\\(?:left|right|displaystyle)|\\[,;!: ]|\$", "", s)
    return re.sub(r"\s+", "", s)


_LETTER_FORMS = (
    re.compile(r"^\(?([A-Za-z])\)?[.:)]?$"),
    re.compile(r"^(?:option|choice|answer)\s*[:.]?\s*\(?([A-Za-z])\)?[.:)]?$", re.IGNORECASE),
    re.compile(r"^\(([A-Za-z])\)\s*.+$"),
    re.compile(r"^([A-Z])[.:)]\s+.+$"),
    re.compile(r"^(?:option|choice)\s*\(?([A-Za-z])\)?[.:)]?\s+.+$", re.IGNORECASE),
)
_LETTER_SET_RE = re.compile(r"^\(?[A-Z]\)?(?:\s*(?:,|;|&|and|\s)\s*\(?[A-Z]\)?)+$")


def _letters_in(s: str, n_choices: int | None, strict_case: bool) -> frozenset[str] | None:
    """The option letter(s) an answer names, or None. ``strict_case`` refuses lower-case bare letters."""
    s = _PREFIX_RE.sub("", _strip_latex_text(s)).strip().rstrip(".").strip()
    if not s:
        return None
    valid = CHOICE_LETTERS[:n_choices] if n_choices else CHOICE_LETTERS
    for i, form in enumerate(_LETTER_FORMS):
        m = form.match(s)
        if m:
            letter = m.group(1)
            if strict_case and i == 0 and letter.islower():
                return None
            letter = letter.upper()
            return frozenset(letter) if letter in valid else None
    if _LETTER_SET_RE.match(s):
        letters = frozenset(re.findall(r"[A-Z]", s.replace("and", " ")))
        if letters and all(c in valid for c in letters):
            return letters
    return None


def _gold_letters(gold: str, choices: Sequence[str] | None) -> frozenset[str] | None:
    """The gold answer as option letters: a letter form (``B``, ``(B)``, ``A, C``) or an option's text."""
    letters = _letters_in(gold, len(choices) if choices else None, strict_case=True)
    if letters is None and choices:
        idx = _option_index(gold, choices, math=False)
        if idx is not None:
            letters = frozenset(CHOICE_LETTERS[idx])
    return letters


def _option_index(
    text: str, choices: Sequence[str], math: bool, timeout_s: float = DEFAULT_TIMEOUT_S
) -> int | None:
    """Index of the single option whose text equals ``text`` (normalised; then math-equivalent)."""
    norm = normalize_text(text)
    if not norm and not math:
        return None
    hits = [i for i, c in enumerate(choices) if normalize_text(c) == norm and norm]
    if len(hits) == 1:
        return hits[0]
    if hits or not math:
        return None
    mathy = [i for i, c in enumerate(choices) if _looks_mathy(_as_text(c))]
    if not mathy or not _looks_mathy(text):
        return None
    hits = [i for i in mathy if _math_equal(_as_text(choices[i]), text, None, timeout_s)[0] is True]
    return hits[0] if len(hits) == 1 else None


def _looks_mathy(s: str) -> bool:
    return bool(re.search(r"[\d\\+\-*/^=<>()\[\]{}√π∞°%]", s))


def _number_word(s: str) -> int | None:
    words = normalize_text(s).split()
    if len(words) == 1 and words[0] in NUMBER_WORDS:
        return NUMBER_WORDS[words[0]]
    return None


# ----------------------------------------------------------------------------------------------------------
# Math equivalence (math-verify), bounded in time
# ----------------------------------------------------------------------------------------------------------

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


def _worker_main() -> None:  # pragma: no cover - runs in the worker subprocess
    """JSON-lines loop of a math worker process: {"gold","pred","precision"} -> {"eq","how"}."""
    out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
    sys.stdout = sys.stderr
    _mv()
    try:
        _judge_math("1", "1", None)  # warm up sympy's caches before announcing readiness
    except Exception:  # noqa: BLE001
        pass
    out.write(b'{"ready": true}\n')
    stdin = sys.stdin.buffer
    while True:
        line = stdin.readline()
        if not line:
            return
        try:
            req = json.loads(line)
            eq, how = _judge_math(req["gold"], req["pred"], req.get("precision"))
            resp = {"eq": bool(eq), "how": how}
        except Exception as e:  # noqa: BLE001
            resp = {"eq": False, "how": f"error:{type(e).__name__}"}
        out.write((json.dumps(resp) + "\n").encode())


class _Worker:
    """One math-verify subprocess, spoken to over JSON lines."""

    STARTUP_TIMEOUT_S = 120.0

    def __init__(self) -> None:
        env = dict(os.environ)
        pkg_root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = pkg_root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        self.proc = subprocess.Popen(
            [sys.executable, "-u", "-c", "from ptdpo.rewards import _worker_main; _worker_main()"],
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
        import time

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

    def call(self, gold: str, pred: str, precision: int | None, timeout: float) -> dict | None:
        """The worker's answer; None when it missed the deadline (it is then killed and replaced)."""
        try:
            self.proc.stdin.write(
                (json.dumps({"gold": gold, "pred": pred, "precision": precision}) + "\n").encode()
            )
            self.proc.stdin.flush()
            line = self._readline(timeout)
        except (OSError, ValueError):
            line = None
        if line is None:
            crashed = self.proc.poll() is not None
            self.kill()
            return {"eq": False, "how": "worker_crashed"} if crashed else None
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

    def equal(self, gold: str, pred: str, precision: int | None, timeout: float) -> tuple[bool | None, str]:
        worker = self._slots.get()
        try:
            if worker is None or not worker.alive:
                worker = _Worker()
                with self._lock:
                    self._all = [w for w in self._all if w.alive]
                    self._all.append(worker)
            resp = worker.call(gold, pred, precision, timeout)
            if resp is None:
                return None, "timeout"
            return bool(resp.get("eq")), str(resp.get("how", ""))
        finally:
            self._slots.put(worker if worker is not None and worker.alive else None)

    def close(self) -> None:
        with self._lock:
            workers, self._all = self._all, []
        for w in workers:
            w.kill()


class _ThreadJudge:
    """math-verify in a daemon thread per comparison; the caller stops waiting at the deadline."""

    def equal(self, gold: str, pred: str, precision: int | None, timeout: float) -> tuple[bool | None, str]:
        box: list[tuple[bool, str]] = []

        def run() -> None:
            try:
                box.append(_judge_math(gold, pred, precision))
            except Exception as e:  # noqa: BLE001
                box.append((False, f"error:{type(e).__name__}"))

        th = threading.Thread(target=run, daemon=True, name="ptdpo-math-verify")
        th.start()
        th.join(timeout)
        if not box:
            return None, "timeout"
        return box[0]

    def close(self) -> None:
        pass


_JUDGE: _ProcessJudge | _ThreadJudge | None = None
_JUDGE_PID = os.getpid()  # a forked child must not talk to its parent's workers over inherited pipes
_JUDGE_LOCK = threading.Lock()
_BACKEND = os.environ.get("PTDPO_MATH_BACKEND", "process" if os.name == "posix" else "thread")
_WORKERS = int(os.environ.get("PTDPO_MATH_WORKERS", "0")) or max(1, min(4, os.cpu_count() or 1))
_CACHE: OrderedDict[tuple, tuple[bool, str]] = OrderedDict()
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
    """Stop the worker subprocesses (they are restarted on the next comparison)."""
    global _JUDGE
    with _JUDGE_LOCK:
        if _JUDGE is not None and _JUDGE_PID == os.getpid():
            _JUDGE.close()
        _JUDGE = None


atexit.register(shutdown_math_workers)


def _judge() -> _ProcessJudge | _ThreadJudge:
    global _JUDGE, _JUDGE_PID
    if _JUDGE is None or _JUDGE_PID != os.getpid():
        with _JUDGE_LOCK:
            if _JUDGE is None or _JUDGE_PID != os.getpid():
                _JUDGE = _ProcessJudge(_WORKERS) if _BACKEND == "process" else _ThreadJudge()
                _JUDGE_PID = os.getpid()
    return _JUDGE


def _math_equal(gold: str, pred: str, precision: int | None, timeout_s: float) -> tuple[bool | None, str]:
    """(True/False, how) or (None, 'timeout'); cached by (gold, pred, precision)."""
    if len(pred) > MAX_ANSWER_CHARS:
        return False, "answer_too_long"
    if len(gold) > 4 * MAX_ANSWER_CHARS:
        return False, "gold_too_long"
    if not _balanced(pred):
        return False, "unparsable"
    if _unsafe(pred):
        return False, "unsafe_expression"
    key = (gold, pred, precision)
    with _CACHE_LOCK:
        hit = _CACHE.get(key)
        if hit is not None:
            _CACHE.move_to_end(key)
            return hit
    judge = _judge()
    try:
        eq, how = judge.equal(gold, pred, precision, timeout_s)
    except Exception as e:  # noqa: BLE001 - e.g. the worker cannot start: fall back to a thread
        log.warning("math worker unavailable (%s); comparing in a thread", e)
        eq, how = _ThreadJudge().equal(gold, pred, precision, timeout_s)
    if eq is not None:
        with _CACHE_LOCK:
            _CACHE[key] = (eq, how)
            if len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
    return eq, how


# ----------------------------------------------------------------------------------------------------------
# Matching
# ----------------------------------------------------------------------------------------------------------


def match_answer(
    pred: Any,
    gold: Any,
    choices: Sequence[str] | None = None,
    *,
    answer_type: str | None = None,
    precision: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> tuple[bool, str]:
    """(correct?, reason). Reasons for a match: exact, math_equal, rounded, rounded_to_precision,
    choice_letter, choice_text, choice_math, number_word; otherwise: no_answer, empty_gold, mismatch,
    wrong_choice, choice_unresolved, unparsable, gold_unparsable, unsafe_expression, answer_too_long,
    timeout, worker_crashed, error:<type>."""
    try:
        return _match(pred, gold, choices, answer_type, precision, timeout_s)
    except Exception as e:  # noqa: BLE001 - never raise on model output
        return False, f"error:{type(e).__name__}"


def answers_match(
    pred: Any,
    gold: Any,
    choices: Sequence[str] | None = None,
    *,
    answer_type: str | None = None,
    precision: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> bool:
    """Is the extracted answer ``pred`` equivalent to the gold answer? See :func:`match_answer`."""
    return match_answer(
        pred, gold, choices, answer_type=answer_type, precision=precision, timeout_s=timeout_s
    )[0]


def _match(pred, gold, choices, answer_type, precision, timeout_s) -> tuple[bool, str]:
    answer_type = (answer_type or "auto").lower()
    if answer_type not in ANSWER_TYPES:
        answer_type = "auto"
    pred_s = _clean_answer(_as_text(pred)) if pred is not None else None
    if pred_s is None:
        return False, "no_answer"
    gold_s = _as_text(gold).strip()
    if not gold_s:
        return False, "empty_gold"
    choices = [_as_text(c) for c in choices] if choices else None
    if precision is not None:
        try:
            precision = (
                int(precision) if not (isinstance(precision, float) and math.isnan(precision)) else None
            )
        except (TypeError, ValueError):
            precision = None

    # multiple choice
    if answer_type == "choice" or choices or (answer_type == "auto" and _letters_in(gold_s, None, True)):
        gold_letters = _gold_letters(gold_s, choices)
        if gold_letters:
            pred_letters = _letters_in(pred_s, len(choices) if choices else None, strict_case=False)
            if pred_letters is not None:
                return (True, "choice_letter") if pred_letters == gold_letters else (False, "wrong_choice")
            if choices:
                for math_ok, how in ((False, "choice_text"), (True, "choice_math")):
                    idx = _option_index(pred_s, choices, math=math_ok, timeout_s=timeout_s)
                    if idx is not None:
                        ok = frozenset(CHOICE_LETTERS[idx]) == gold_letters
                        return (True, how) if ok else (False, "wrong_choice")
            return False, "choice_unresolved"
        if answer_type == "choice":
            return False, "choice_unresolved"

    # free text: normalised strings only
    if re.fullmatch(r"-?\d+", gold_s):
        w = _number_word(pred_s)
        if w is not None:
            return (True, "number_word") if w == int(gold_s) else (False, "mismatch")
    if answer_type == "text" or (answer_type in ("auto", "choice") and not _looks_mathy(gold_s)):
        np_ = normalize_text(pred_s)
        return (True, "exact") if np_ and np_ == normalize_text(gold_s) else (False, "mismatch")

    # mathematics
    if _light_normalize(pred_s) == _light_normalize(gold_s):
        return True, "exact"
    numeric_gold = re.search(r"\d", gold_s) and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", gold_s))
    if numeric_gold and not re.search(r"[\d\\π∞]", pred_s):
        return False, "mismatch"  # a gold without variables; a prediction without digits, commands, constants
    eq, how = _math_equal(gold_s, pred_s, precision, timeout_s)
    if eq is None:
        return False, "timeout"
    return bool(eq), how


# ----------------------------------------------------------------------------------------------------------
# Rewards
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardResult:
    """One scored output. ``reason`` explains accuracy (see :func:`match_answer`), ``format_reason`` the
    format check; ``extracted_by`` says which extraction rule found the answer."""

    reward: float
    accuracy: float
    format: float
    extracted: str | None
    reason: str
    format_reason: str = ""
    extracted_by: str = "none"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def score_response(
    text: Any,
    answer: Any,
    choices: Sequence[str] | None = None,
    *,
    answer_type: str | None = None,
    precision: int | None = None,
    think_prefilled: bool = False,
    accuracy_weight: float = ACCURACY_WEIGHT,
    format_weight: float = FORMAT_WEIGHT,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    allow_bare: bool = True,
) -> RewardResult:
    """Score one model output against its gold answer: R = accuracy_weight*acc + format_weight*fmt."""
    try:
        extracted, how = _extract(text, allow_bare=allow_bare)
    except Exception as e:  # noqa: BLE001
        extracted, how = None, f"error:{type(e).__name__}"
    fmt_ok, fmt_reason = check_format(text, think_prefilled=think_prefilled)
    if extracted is None:
        ok, reason = False, "no_answer"
    else:
        ok, reason = match_answer(
            extracted, answer, choices, answer_type=answer_type, precision=precision, timeout_s=timeout_s
        )
    acc, fmt = float(ok), float(fmt_ok)
    return RewardResult(
        reward=accuracy_weight * acc + format_weight * fmt,
        accuracy=acc,
        format=fmt,
        extracted=extracted,
        reason=reason,
        format_reason=fmt_reason,
        extracted_by=how,
    )


def _item_field(item: Any, name: str, default: Any = None) -> Any:
    if isinstance(item, dict):
        return item.get(name, default)
    return getattr(item, name, default)


def score_batch(
    texts: Sequence[Any],
    items: Sequence[Any],
    *,
    max_workers: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    answer_type: str | Sequence[str | None] | None = None,
    think_prefilled: bool = False,
    accuracy_weight: float = ACCURACY_WEIGHT,
    format_weight: float = FORMAT_WEIGHT,
    allow_bare: bool = True,
) -> list[RewardResult]:
    """Score ``texts[i]`` against ``items[i]`` (``Item``s or dicts with ``answer``, ``choices``, ``meta``),
    in parallel threads, order preserved. Per item, ``meta["precision"]`` is used when present, and
    ``meta["answer_type"]`` when it is one of :data:`ANSWER_TYPES` and ``answer_type`` (one for all, or one
    per item) is None."""
    if len(texts) != len(items):
        raise ValueError(f"{len(texts)} texts but {len(items)} items")
    if isinstance(answer_type, str) or answer_type is None:
        types: list[str | None] = [answer_type] * len(items)
    else:
        types = list(answer_type)
        if len(types) != len(items):
            raise ValueError(f"{len(types)} answer types but {len(items)} items")

    def one(i: int) -> RewardResult:
        item = items[i]
        meta = _item_field(item, "meta", None) or {}
        atype = types[i]
        if atype is None and isinstance(meta, dict) and meta.get("answer_type") in ANSWER_TYPES:
            atype = meta["answer_type"]
        precision = meta.get("precision") if isinstance(meta, dict) else None
        try:
            return score_response(
                texts[i],
                _item_field(item, "answer", ""),
                _item_field(item, "choices", None),
                answer_type=atype,
                precision=precision,
                think_prefilled=think_prefilled,
                accuracy_weight=accuracy_weight,
                format_weight=format_weight,
                timeout_s=timeout_s,
                allow_bare=allow_bare,
            )
        except Exception as e:  # noqa: BLE001
            return RewardResult(0.0, 0.0, 0.0, None, f"error:{type(e).__name__}", "error")

    n = len(texts)
    if n == 0:
        return []
    workers = max(1, min(max_workers or _WORKERS, n))
    if workers == 1:
        return [one(i) for i in range(n)]
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ptdpo-reward") as ex:
        return list(ex.map(one, range(n)))
