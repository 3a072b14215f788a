"""The vLLM generator on CPU: lazy import, prompt rendering, engine/sampling arguments, output parsing.

vLLM itself is not installed here; a test double stands in for ``vllm.LLM`` (same ``chat`` call and
``RequestOutput`` shape). Running it for real needs a GPU (not verified in CI).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from ptdpo.data.schema import Item, ItemError
from ptdpo.hints import FAILED, OK, REJECTED, make_generator, run_generation
from ptdpo.hints.prompt import (
    PROMPT_VERSION,
    RULES,
    generator_messages,
    image_data_url,
    parse_generator_output,
    render_generator_prompt,
)
from ptdpo.hints.vllm_gen import VLLMGenerator, parse_request_output

REPO = Path(__file__).resolve().parents[1]
CLEAN = {"regions": [{"bbox": [50, 60, 500, 700], "label": "left group", "why": "the shapes to count"}],
         "steps": ["Count the shapes in the left group.", "Check the overlapping ones twice."],
         "traps": ["Orange is not red."]}


def _png() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (20, 10), (200, 0, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _item(iid="v0", **kw):
    d = dict(id=iid, images=[_png()], question="How many red shapes are there?", answer="4",
             solution="3 on the left and 1 on the right: 4.")
    d.update(kw)
    return Item(**d)


def test_importing_hints_never_imports_vllm_or_openai():
    code = ("import sys, ptdpo.hints, ptdpo.hints.vllm_gen, ptdpo.hints.openai_gen, steps.hints, steps.audit\n"
            "from ptdpo.hints import make_generator\n"
            "g = make_generator({'name': 'vllm', 'model': 'Qwen/Qwen3-VL-235B-A22B-Instruct', 'tensor_parallel_size': 8})\n"
            "print(json.dumps(sorted(m for m in ('vllm', 'openai', 'torch') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", "import json\n" + code], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_missing_vllm_is_a_clear_error_at_first_use(monkeypatch):
    monkeypatch.setitem(sys.modules, "vllm", None)  # `import vllm` raises here, installed or not
    gen = VLLMGenerator(model="Qwen/Qwen3-VL-235B-A22B-Instruct")
    with pytest.raises(ImportError, match=r"ptdpo\[gpu\]"):
        run_generation(gen, [_item()])


def test_prompt_rendering_rules_answer_schema_and_images():
    item = _item(choices=None)
    text = render_generator_prompt(item)
    assert "Question:\nHow many red shapes are there?" in text
    assert "Ground-truth answer (for you only, never reveal it): 4" in text
    assert RULES in text and '"regions"' in text and "0..1000" in text
    assert "Reference solution" not in text
    assert "3 on the left" in render_generator_prompt(item, include_solution=True)
    mc = render_generator_prompt(_item(choices=["3", "4", "5"], answer="B"))
    assert "Options:\nA. 3\nB. 4\nC. 5" in mc and "answer (for you only, never reveal it): B" in mc
    assert '{"hint":' in render_generator_prompt(item, kind="unstructured")
    msgs = generator_messages(item)
    assert [m["role"] for m in msgs] == ["system", "user"]
    img, txt = msgs[1]["content"]
    assert img["type"] == "image_url" and img["image_url"]["url"] == image_data_url(item.images[0])
    assert img["image_url"]["url"].startswith("data:image/png;base64,")
    assert txt == {"type": "text", "text": text}
    fb = generator_messages(item, feedback="- answer_value (hard) in steps[1]: 'four'", previous_raw="{...}")
    assert [m["role"] for m in fb] == ["system", "user", "assistant", "user"]
    assert fb[2]["content"] == "{...}" and "answer_value" in fb[3]["content"]
    small = image_data_url(_png(), max_side=8)
    assert small.startswith("data:image/png;base64,") and small != img["image_url"]["url"]
    with pytest.raises(ItemError, match="images\\[0\\]"):
        image_data_url("/nonexistent/image.png", "v0")


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(CLEAN),
        "<think>\nThe answer is 4; I must not say so.\n</think>\n\n```json\n" + json.dumps(CLEAN, indent=1) + "\n```",
        "Here is a hint that follows the rules:\n" + json.dumps(CLEAN) + "\nLet me know if you need more.",
    ],
)
def test_output_parsing(raw):
    gen = {"name": "vllm", "model": "m", "prompt_version": PROMPT_VERSION}
    h = parse_generator_output(raw, _item(), gen)
    assert h.steps == CLEAN["steps"] and h.generator == gen and h.raw == raw


class FakeLLM:
    """Stands in for vllm.LLM: ``chat(conversations, sampling_params=..., ...)`` -> RequestOutputs."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = []

    def chat(self, messages, sampling_params=None, use_tqdm=True, chat_template_kwargs=None):
        assert isinstance(messages, list) and all(isinstance(c, list) for c in messages)
        self.calls.append({"n": len(messages), "sampling": sampling_params, "ctk": chat_template_kwargs,
                           "messages": messages})
        outs = []
        for conv in messages:
            q = conv[1]["content"][-1]["text"]
            key = q.split("[", 1)[1].split("]", 1)[0]
            attempt = sum(1 for m in conv if m["role"] == "assistant")
            text = self.replies[key][min(attempt, len(self.replies[key]) - 1)]
            outs.append(SimpleNamespace(prompt_token_ids=[1] * 17,
                                        outputs=[SimpleNamespace(text=text, token_ids=[2] * 9, finish_reason="stop")]))
        return outs


def test_batched_generation_with_engine_double():
    leaky = {**CLEAN, "steps": ["There are four red shapes."]}
    items = [_item(f"v{i}", question=f"[v{i}] How many red shapes are there?") for i in range(5)]
    replies = {"v0": [json.dumps(CLEAN)], "v1": ["<think>hmm</think>" + json.dumps(CLEAN)], "v2": ["not json at all"],
               "v3": [json.dumps(leaky), json.dumps(CLEAN)], "v4": [json.dumps(leaky)]}
    llm = FakeLLM(replies)
    gen = make_generator({"name": "vllm", "model": "Qwen/Qwen3-VL-235B-A22B-Thinking", "tensor_parallel_size": 8,
                          "batch_size": 2, "chat_template_kwargs": {"enable_thinking": False}, "llm": llm})
    res = run_generation(gen, items, max_attempts=2)
    status = {r.item_id: r.status for r in res}
    assert status == {"v0": OK, "v1": OK, "v2": FAILED, "v3": OK, "v4": REJECTED}
    assert res[0].hint.generator == {"name": "vllm", "model": "Qwen/Qwen3-VL-235B-A22B-Thinking",
                                     "prompt_version": PROMPT_VERSION}
    assert res[0].history[0]["usage"] == {"prompt_tokens": 17, "completion_tokens": 9}
    assert res[2].raw == "not json at all" and res[2].attempts == 2
    # round 1: 5 conversations in batches of 2; round 2: the 3 that failed (v2, v3, v4) with feedback
    assert [c["n"] for c in llm.calls] == [2, 2, 1, 2, 1]
    sp = llm.calls[0]["sampling"]  # SamplingParams when vLLM is importable, else its kwargs
    get = sp.get if isinstance(sp, dict) else lambda k: getattr(sp, k)
    assert [get(k) for k in ("temperature", "top_p", "max_tokens", "seed")] == [0.2, 1.0, 1024, 0]
    assert llm.calls[0]["ctk"] == {"enable_thinking": False}
    second = [c for call in llm.calls[3:] for c in call["messages"]]
    assert all(c[2]["role"] == "assistant" and "rejected" in c[3]["content"] for c in second)


def test_engine_args_and_cache_key():
    gen = VLLMGenerator(model="Qwen/Qwen3-VL-235B-A22B-Instruct", tensor_parallel_size=8, max_model_len=16384,
                        limit_images=2, mm_processor_kwargs={"max_pixels": 1280 * 28 * 28},
                        engine_kwargs={"enforce_eager": True})
    args = gen.engine_args()
    assert args["model"] == "Qwen/Qwen3-VL-235B-A22B-Instruct" and args["tensor_parallel_size"] == 8
    assert args["limit_mm_per_prompt"] == {"image": 2} and args["max_model_len"] == 16384
    assert args["mm_processor_kwargs"] == {"max_pixels": 1003520} and args["enforce_eager"] is True
    other = VLLMGenerator(model="Qwen/Qwen3-VL-235B-A22B-Instruct", tensor_parallel_size=4)
    assert other.config_hash() == VLLMGenerator(model="Qwen/Qwen3-VL-235B-A22B-Instruct").config_hash()
    assert VLLMGenerator(model="m", temperature=0.7).config_hash() != VLLMGenerator(model="m").config_hash()
    assert parse_request_output("x", SimpleNamespace(outputs=[])).error == "vLLM returned no completion"
