"""Hint generation through any OpenAI-compatible chat-completions endpoint (a vLLM server, a hosted model).

Uses the official ``openai`` client with ``base_url``; images go as base64 data URLs. The API key is read
from the environment variable named by ``api_key_env`` when the client is built and is never stored in a
hint, a config hash, a cache line or a log message (a local server without auth gets the placeholder
"EMPTY").

Requests run in a thread pool of ``concurrency`` workers; results stream back as they finish. Each
request is retried by our own bounded loop (the client's built-in retries are off so the bound is
explicit and testable): on timeouts, connection errors, HTTP 408/409/429 and 5xx, at most
``max_retries`` times, sleeping ``Retry-After`` when the server sends one (capped at ``backoff_max_s``),
else ``backoff_s * 2**k`` (capped). Other errors (400, 401, 404...) fail the item at once. A failed item
is recorded (error + raw text), never aborting the batch. Worst case per item:
``(max_retries + 1) * timeout_s + max_retries * backoff_max_s`` seconds.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Any

from ptdpo.data.schema import ItemError
from ptdpo.hints.generator_base import GenerationRequest, HintGenerator, RawOutput
from ptdpo.hints.prompt import PROMPT_VERSION, generator_messages
from ptdpo.hints.schema import STRUCTURED, UNSTRUCTURED

log = logging.getLogger(__name__)

RETRYABLE_STATUS = (408, 409, 429)


class RequestFailed(Exception):
    """A request that failed for good (non-retryable error, or retries exhausted)."""

    def __init__(self, message: str, tries: int, raw: str = ""):
        super().__init__(message)
        self.tries = tries
        self.raw = raw


def _retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds; an HTTP date is ignored)."""
    if headers is None:
        return None
    for key, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(key)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except (TypeError, ValueError):
            continue
    return None


def _error_message(err: Any) -> str:
    body = getattr(err, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and inner.get("message"):
            return str(inner["message"])
    return str(getattr(err, "message", "") or err)


class OpenAIGenerator(HintGenerator):
    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 8,
        max_retries: int = 4,
        timeout_s: float = 60.0,
        backoff_s: float = 1.0,
        backoff_max_s: float = 30.0,
        temperature: float = 0.2,
        top_p: float = 1.0,
        max_tokens: int = 1024,
        seed: int | None = None,
        prompt_version: str = PROMPT_VERSION,
        kind: str = STRUCTURED,
        include_solution: bool = False,
        image_max_side: int | None = None,
        extra_body: dict[str, Any] | None = None,
    ):
        if kind not in (STRUCTURED, UNSTRUCTURED):
            raise ValueError(f"kind must be {STRUCTURED!r} or {UNSTRUCTURED!r}")
        if concurrency < 1 or max_retries < 0 or timeout_s <= 0:
            raise ValueError("need concurrency >= 1, max_retries >= 0, timeout_s > 0")
        if api_key_env and not api_key_env.replace("_", "").isalnum():
            raise ValueError("api_key_env is the NAME of an environment variable, not the key itself")
        self.model = model
        self.base_url = base_url
        self.api_key_env = api_key_env
        self.concurrency = int(concurrency)
        self.max_retries = int(max_retries)
        self.timeout_s = float(timeout_s)
        self.backoff_s = float(backoff_s)
        self.backoff_max_s = float(backoff_max_s)
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = int(max_tokens)
        self.seed = seed
        self.prompt_version = prompt_version
        self.kind = kind
        self.include_solution = include_solution
        self.image_max_side = image_max_side
        self.extra_body = dict(extra_body or {})
        self._client = None
        self._lock = threading.Lock()
        self.requests_sent = 0  # HTTP requests issued (tries), for tests and logs

    def __repr__(self) -> str:
        return f"OpenAIGenerator(model={self.model!r}, base_url={self.base_url!r}, api_key_env={self.api_key_env!r})"

    def cache_params(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.seed,
            "include_solution": self.include_solution, "image_max_side": self.image_max_side,
            "extra_body": self.extra_body,
        }

    def client(self):
        with self._lock:
            if self._client is None:
                import openai

                key = os.environ.get(self.api_key_env) if self.api_key_env else None
                if not key:
                    if self.base_url is None:
                        raise ValueError(f"no API key: set the environment variable {self.api_key_env}")
                    log.info("environment variable %s not set; using a placeholder key for %s",
                             self.api_key_env, self.base_url)
                    key = "EMPTY"
                self._client = openai.OpenAI(base_url=self.base_url, api_key=key, max_retries=0,
                                             timeout=self.timeout_s)
            return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _delay(self, k: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max_s)
        return min(self.backoff_s * (2 ** k), self.backoff_max_s) * random.uniform(0.75, 1.0)

    def complete(self, messages: list[dict[str, Any]]) -> tuple[str, dict[str, Any], int]:
        """(content, usage, tries) for one chat completion, or RequestFailed."""
        import openai

        client = self.client()
        kwargs: dict[str, Any] = {
            "model": self.model, "messages": messages, "temperature": self.temperature, "top_p": self.top_p,
            "max_tokens": self.max_tokens, "timeout": self.timeout_s,
        }
        if self.seed is not None:
            kwargs["seed"] = self.seed
        if self.extra_body:
            kwargs["extra_body"] = self.extra_body
        last = "no request made"
        for k in range(self.max_retries + 1):
            retry_after = None
            with self._lock:
                self.requests_sent += 1
            try:
                resp = client.chat.completions.create(**kwargs)
            except openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}: {_error_message(e)}"
                if status not in RETRYABLE_STATUS and status < 500:
                    raise RequestFailed(last, k + 1) from None
                retry_after = _retry_after(getattr(e.response, "headers", None))
            except openai.APITimeoutError:
                last = f"timed out after {self.timeout_s:g}s"
            except openai.APIConnectionError as e:
                last = f"connection error: {e}"
            else:
                choices = getattr(resp, "choices", None) or []
                content = choices[0].message.content if choices and choices[0].message else None
                if content is None:
                    raise RequestFailed("response without choices[0].message.content", k + 1)
                usage = resp.usage.model_dump() if getattr(resp, "usage", None) is not None else {}
                return content, usage, k + 1
            if k < self.max_retries:
                delay = self._delay(k, retry_after)
                log.info("hint request failed (%s); retry %d/%d in %.2fs", last, k + 1, self.max_retries, delay)
                time.sleep(delay)
        raise RequestFailed(f"gave up after {self.max_retries + 1} tries: {last}", self.max_retries + 1)

    def _one(self, req: GenerationRequest) -> RawOutput:
        try:
            messages = generator_messages(req.item, self.kind, req.feedback, req.previous_raw,
                                          self.include_solution, self.image_max_side)
            text, usage, tries = self.complete(messages)
            return RawOutput(req.item.id, text=text, usage=usage, notes={"tries": tries})
        except RequestFailed as e:
            return RawOutput(req.item.id, text=e.raw, error=str(e), notes={"tries": e.tries})
        except ItemError as e:
            return RawOutput(req.item.id, error=str(e))
        except Exception as e:  # noqa: BLE001 - one bad item never aborts the batch
            return RawOutput(req.item.id, error=f"{type(e).__name__}: {e}")

    def generate_stream(self, requests: Sequence[GenerationRequest]) -> Iterator[RawOutput]:
        if not requests:
            return
        self.client()  # a missing key fails loudly once, before any request
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="hints")
        try:
            # submit lazily, at most 2x concurrency in flight: memory stays flat for huge shards
            it = iter(requests)
            inflight = set()
            for req in it:
                inflight.add(pool.submit(self._one, req))
                if len(inflight) >= 2 * self.concurrency:
                    break
            while inflight:
                done, inflight = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in done:
                    yield fut.result()
                    nxt = next(it, None)
                    if nxt is not None:
                        inflight.add(pool.submit(self._one, nxt))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
