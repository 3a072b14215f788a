"""The OpenAI-compatible generator against a real chat-completions HTTP server on 127.0.0.1.

The server (``ScriptedServer``) speaks the protocol (JSON request; ``choices[0].message.content`` and
``usage`` in the response; OpenAI-style error bodies with 429/500/503 and ``Retry-After``) and follows a
per-item script, counting requests per item. Items are recognised by a ``[Q-<id>]`` tag in the question.
"""

from __future__ import annotations

import base64
import io
import json
import re
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ptdpo.data.schema import Item
from ptdpo.hints import FAILED, OK, REJECTED, ShardCache, make_generator, run_generation, shard_cache_path
from steps.hints import generate_hints_shard

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-secret-0123456789"
CLEAN = {"regions": [{"bbox": [100, 100, 400, 400], "label": "table", "why": "the objects stand here"}],
         "steps": ["Count the objects row by row.", "Do not skip the partly hidden ones."], "traps": []}
LEAKY = {"regions": CLEAN["regions"], "steps": ["Count the objects row by row.", "You should find 7 of them."],
         "traps": []}


class ScriptedServer:
    """Chat-completions server; ``script[item] = [action per request]`` (then ``default``). Actions:
    "ok", "leak", "malformed", "fenced", ("sleep", s), ("status", code, retry_after or None), "block"."""

    def __init__(self, script=None, default="ok"):
        self.script = script or {}
        self.default = default
        self.counts: Counter = Counter()
        self.times: dict[str, list[float]] = defaultdict(list)
        self.bodies: dict[str, list[dict]] = defaultdict(list)
        self.auth: list[str] = []
        self.reached = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def _send(self, code, payload, headers=None):
                data = json.dumps(payload).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout): fine

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if self.path != "/v1/chat/completions":
                    return self._send(404, {"error": {"message": "not found", "type": "invalid_request_error"}})
                text = " ".join(p.get("text", "") for m in body["messages"] if m["role"] == "user"
                                for p in (m["content"] if isinstance(m["content"], list) else [{"text": m["content"]}]))
                key = re.search(r"\[Q-([\w-]+)\]", text).group(1)
                with server.lock:
                    server.counts[key] += 1
                    n = server.counts[key]
                    server.times[key].append(time.monotonic())
                    server.bodies[key].append(body)
                    server.auth.append(self.headers.get("Authorization", ""))
                actions = server.script.get(key, [])
                action = actions[n - 1] if n <= len(actions) else server.default
                if isinstance(action, tuple) and action[0] == "sleep":
                    time.sleep(action[1])
                    action = "ok"
                if action == "block":
                    server.reached.set()
                    server.release.wait(30)
                    action = "ok"
                if isinstance(action, tuple) and action[0] == "status":
                    _, code, retry_after = action
                    kind = {429: "rate_limit_error", 500: "server_error", 503: "service_unavailable", 400: "invalid_request_error"}
                    headers = {"Retry-After": retry_after} if retry_after is not None else {}
                    return self._send(code, {"error": {"message": f"scripted {code}", "type": kind.get(code, "error"),
                                                       "param": None, "code": None}}, headers)
                content = {"ok": json.dumps(CLEAN), "leak": json.dumps(LEAKY),
                           "malformed": "Sure! {regions: [oops this is not JSON",
                           "fenced": "Here you go:\n```json\n" + json.dumps(CLEAN) + "\n```"}[action]
                self._send(200, {
                    "id": f"chatcmpl-{key}-{n}", "object": "chat.completion", "created": int(time.time()),
                    "model": body["model"],
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": 11, "completion_tokens": 22, "total_tokens": 33},
                })

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self):
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def _png(seed=0) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (32, 32), (10 * seed % 255, 100, 200))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _items(keys, with_image=True):
    return [Item(id=k, images=[_png(i)] if with_image else [], question=f"[Q-{k}] How many objects are on the table?",
                 answer="7") for i, k in enumerate(keys)]


def _config(server, **kw):
    cfg = {"name": "openai", "model": "test-model", "base_url": server.base_url, "api_key_env": "PTDPO_TEST_KEY",
           "concurrency": 4, "max_retries": 2, "timeout_s": 5, "backoff_s": 0.01, "backoff_max_s": 2}
    cfg.update(kw)
    return cfg


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv("PTDPO_TEST_KEY", SECRET)


def test_ok_path_protocol_images_key_and_usage(tmp_path):
    items = _items(["a0", "a1", "a2"])
    with ScriptedServer({"a1": ["fenced"]}) as srv:
        rows, failures = generate_hints_shard(items, _config(srv), tmp_path, 0)
    assert failures == [] and [r["status"] for r in rows] == [OK] * 3
    assert all(r["usable"] and r["hint"]["generator"]["name"] == "openai" for r in rows)
    assert rows[0]["hint"]["generator"] == {"name": "openai", "model": "test-model", "prompt_version": "ptd-hint-v1"}
    assert rows[1]["raw"].startswith("Here you go")  # fenced output parsed, raw kept
    assert rows[0]["history"][0]["usage"]["total_tokens"] == 33
    assert srv.counts == Counter({"a0": 1, "a1": 1, "a2": 1})
    assert set(srv.auth) == {f"Bearer {SECRET}"}
    body = srv.bodies["a0"][0]
    assert body["model"] == "test-model" and body["messages"][0]["role"] == "system"
    parts = body["messages"][1]["content"]
    url = parts[0]["image_url"]["url"]
    assert url.startswith("data:image/png;base64,") and base64.b64decode(url.split(",", 1)[1]) == items[0].images[0]
    assert "Ground-truth answer" in parts[-1]["text"] and "7" in parts[-1]["text"]
    # the key is never written anywhere
    for f in tmp_path.iterdir():
        assert SECRET not in f.read_text()
    assert SECRET not in json.dumps(rows)
    assert SECRET not in repr(make_generator(_config(srv)))


def test_timeout_then_success_and_timeout_recorded_as_failure(tmp_path):
    items = _items(["t0", "t1", "t2"])
    # generous margins (the machine is shared): the client gives up after 1.5 s, the server sleeps 4 s
    with ScriptedServer({"t0": [("sleep", 4.0)], "t1": [("sleep", 4.0)] * 5}) as srv:
        cfg = _config(srv, timeout_s=1.5, max_retries=2)
        rows, failures = generate_hints_shard(items, cfg, tmp_path, 0)
    by = {r["item_id"]: r for r in rows}
    assert by["t0"]["status"] == OK and by["t0"]["history"][-1]["notes"]["tries"] == 2
    assert by["t1"]["status"] == FAILED and "timed out" in by["t1"]["error"] and "3 tries" in by["t1"]["error"]
    assert by["t2"]["status"] == OK
    assert srv.counts["t0"] == 2 and srv.counts["t1"] == 3 and srv.counts["t2"] == 1  # bounded: max_retries + 1
    assert [f["item_id"] for f in failures] == ["t1"]


def test_rate_limit_and_server_errors_are_retried_with_backoff(tmp_path):
    items = _items(["r429", "r500", "r503", "r400"], with_image=False)
    script = {"r429": [("status", 429, "0.3"), "ok"], "r500": [("status", 500, None), ("status", 500, None), "ok"],
              "r503": [("status", 503, "0"), "ok"], "r400": [("status", 400, None)]}
    with ScriptedServer(script) as srv:
        rows, failures = generate_hints_shard(items, _config(srv, max_retries=3), tmp_path, 0)
    by = {r["item_id"]: r for r in rows}
    assert by["r429"]["status"] == OK and srv.counts["r429"] == 2
    t = srv.times["r429"]
    assert t[1] - t[0] >= 0.28  # Retry-After honoured
    assert by["r500"]["status"] == OK and srv.counts["r500"] == 3
    assert by["r503"]["status"] == OK and srv.counts["r503"] == 2
    assert by["r400"]["status"] == FAILED and srv.counts["r400"] == 1  # not retryable
    assert "HTTP 400" in by["r400"]["error"] and "scripted 400" in by["r400"]["error"]
    assert [f["item_id"] for f in failures] == ["r400"]


def test_retries_exhausted_on_429(tmp_path):
    with ScriptedServer({"x": [("status", 429, "0")] * 10}) as srv:
        rows, failures = generate_hints_shard(_items(["x"], False), _config(srv, max_retries=2), tmp_path, 0)
    assert rows[0]["status"] == FAILED and srv.counts["x"] == 3 and "HTTP 429" in rows[0]["error"]


def test_malformed_output_recorded_with_raw_text(tmp_path):
    with ScriptedServer({"m0": ["malformed"]}) as srv:
        rows, failures = generate_hints_shard(_items(["m0", "m1"], False), _config(srv), tmp_path, 0)
    m0 = rows[0]
    assert m0["status"] == FAILED and m0["hint"] is None and not m0["usable"]
    assert m0["raw"] == "Sure! {regions: [oops this is not JSON"
    assert "unparseable output" in m0["error"] and "m0" in m0["error"]
    assert rows[1]["status"] == OK and [f["item_id"] for f in failures] == ["m0"]


def test_feedback_loop_regenerates_rejected_and_malformed(tmp_path):
    with ScriptedServer({"l0": ["leak", "ok"], "m0": ["malformed", "ok"], "l1": ["leak", "leak"]}) as srv:
        rows, failures = generate_hints_shard(_items(["l0", "m0", "l1"], False), _config(srv, max_attempts=2),
                                              tmp_path, 0)
    by = {r["item_id"]: r for r in rows}
    assert by["l0"]["status"] == OK and by["l0"]["attempts"] == 2
    assert by["l0"]["history"][0]["passed"] is False and "answer_string" in by["l0"]["history"][0]["reasons"]
    second = srv.bodies["l0"][1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "user"]
    assert second[2]["content"] == json.dumps(LEAKY)
    assert "rejected" in second[3]["content"] and "answer_string" in second[3]["content"]
    assert by["m0"]["status"] == OK and "unparseable" in srv.bodies["m0"][1]["messages"][3]["content"]
    # still leaking after the last attempt: kept, marked, not usable
    assert by["l1"]["status"] == REJECTED and by["l1"]["hint"] is not None and not by["l1"]["usable"]
    assert by["l1"]["verdict"]["passed"] is False and len(by["l1"]["history"]) == 2
    assert [f["item_id"] for f in failures] == ["l1"]


_CHILD = """
import json, sys
from ptdpo.data.schema import Item
from steps.hints import generate_hints_shard
items = [Item.from_dict(d) for d in json.load(open(sys.argv[1]))]
generate_hints_shard(items, json.load(open(sys.argv[2])), sys.argv[3], 7)
"""


def test_restart_in_the_middle_of_a_shard_reuses_finished_items(tmp_path):
    keys = [f"k{i}" for i in range(6)]
    items = _items(keys, with_image=False)
    (tmp_path / "items.json").write_text(json.dumps([it.to_dict() for it in items]))
    cache_dir = tmp_path / "cache"
    with ScriptedServer({"k3": ["block"]}) as srv:
        cfg = _config(srv, concurrency=1, max_retries=0, timeout_s=60)
        (tmp_path / "cfg.json").write_text(json.dumps(cfg))
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "items.json"), str(tmp_path / "cfg.json"),
                                 str(cache_dir)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        gen = make_generator(cfg)
        path = shard_cache_path(cache_dir, 7, gen.config_hash())
        try:
            assert srv.reached.wait(60), proc.stderr.read().decode() if proc.poll() is not None else "no request"
            deadline = time.monotonic() + 20  # k2's line is written right after k3's request went out
            while time.monotonic() < deadline and (not path.exists() or path.read_text().count("\n") < 3):
                time.sleep(0.05)
            proc.kill()  # crash while k3 is in flight
            proc.wait(10)
        finally:
            if proc.poll() is None:
                proc.kill()
        srv.release.set()
        lines = path.read_text().splitlines()
        assert [json.loads(x)["item_id"] for x in lines] == ["k0", "k1", "k2"]
        with path.open("a") as f:  # and a crash in the middle of writing a line
            f.write('{"item_id": "k3", "status": "ok", "hi')
        srv.script = {}
        rows, failures = generate_hints_shard(items, cfg, cache_dir, 7)
    assert failures == [] and [r["item_id"] for r in rows] == keys
    assert srv.counts == Counter({"k0": 1, "k1": 1, "k2": 1, "k3": 2, "k4": 1, "k5": 1})
    cache = ShardCache(path, gen.config_hash())
    done = cache.load()
    assert cache.skipped_lines == 1 and sorted(done) == keys and all(r.status == OK for r in done.values())
    # a third run requests nothing
    with ScriptedServer() as srv2:
        cfg2 = {**cfg, "base_url": srv2.base_url}  # base_url is not part of the cache key
        rows2, _ = generate_hints_shard(items, cfg2, cache_dir, 7)
    assert sum(srv2.counts.values()) == 0 and [r["hint"] for r in rows2] == [r["hint"] for r in rows]


def test_failures_are_retried_on_rerun_and_sampling_changes_the_key(tmp_path):
    items = _items(["f0", "f1"], with_image=False)
    with ScriptedServer({"f0": [("status", 400, None)]}) as srv:
        cfg = _config(srv)
        rows, failures = generate_hints_shard(items, cfg, tmp_path, 0)
        assert [f["item_id"] for f in failures] == ["f0"]
        rows, failures = generate_hints_shard(items, cfg, tmp_path, 0)
        assert failures == [] and srv.counts == Counter({"f0": 2, "f1": 1})
        rows, _ = generate_hints_shard(items, {**cfg, "temperature": 0.9}, tmp_path, 0)
        assert srv.counts == Counter({"f0": 3, "f1": 2})  # another config: another cache file
    assert len(list(tmp_path.glob("hints-shard00000-*.jsonl"))) == 2


def test_missing_key_without_base_url_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("PTDPO_TEST_KEY")
    gen = make_generator({"name": "openai", "model": "m", "api_key_env": "PTDPO_TEST_KEY"})
    with pytest.raises(ValueError, match="PTDPO_TEST_KEY"):
        run_generation(gen, _items(["z"], False))
    with pytest.raises(ValueError, match="NAME of an environment variable"):
        make_generator({"name": "openai", "model": "m", "api_key_env": "sk-abc.def"})
    with pytest.raises(ValueError, match="bad config"):
        make_generator({"name": "openai", "model": "m", "temprature": 0.1})
