"""The flow's config files: every file parses and validates, the recipes carry the paper's values
(METHOD.md 5), baselines differ from their parent only where they should, and bad configs are rejected
with a message that names the problem."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from ptdpo.run_config import (
    AUDIT_RUN_KEYS,
    RunConfigError,
    kubernetes_attributes,
    load_config_dict,
    load_config_file,
    parse_run_config,
    run_config_from_dict,
)

ROOT = Path(__file__).resolve().parents[1]

# The configs of flows/ptdpo_flow.py (configs/study*.json belong to flows/study_flow.py, another schema).
CONFIGS = sorted(
    p.relative_to(ROOT / "configs").as_posix()
    for pattern in ("tiny.json", "tiny-*.json", "qwen3vl-*.json", "baselines/*.json", "ablations/*.json")
    for p in (ROOT / "configs").glob(pattern)
)
RECIPES = {"qwen3vl-2b.json": ("2B", 0.05), "qwen3vl-4b.json": ("4B", 0.5), "qwen3vl-8b.json": ("8B", 0.05)}


def cfg_of(name: str) -> dict:
    return load_config_file(ROOT / "configs" / name)


def test_expected_config_files_exist():
    for name in ["tiny.json", "tiny-2node.json", "qwen3vl-8b-2node.json", *RECIPES, "baselines/tiny-grpo.json", "baselines/tiny-answer-distill.json",
                 "baselines/qwen3vl-2b-grpo.json", "baselines/qwen3vl-2b-answer-distill.json"]:
        assert name in CONFIGS, name


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_validates(name):
    from ptdpo.config import train_config_from_dict

    cfg = cfg_of(name)
    rc = run_config_from_dict(cfg)
    train = train_config_from_dict({**copy.deepcopy(cfg["train"]), "prompt_template": rc.prompt.template})
    assert train.policy == cfg["train"]["policy"] == rc.train.policy
    assert rc.train == train  # the run config's train section is the resolved TrainConfig (+ prompt.template)
    # every step with configurable resources has them, and the hint generator's kwargs bind
    for step in ("prepare_data", "generate_hints", "audit", "train", "evaluate", "report"):
        assert {"cpu", "memory"} <= set(cfg["resources"][step]), step
    if "hints" in cfg:
        gen = rc.hints.generator_config()
        assert gen["name"] in ("oracle", "openai", "vllm")
        assert "floor" not in gen["audit"] and "max_attempts" not in gen["audit"]
        assert not set(AUDIT_RUN_KEYS) & set(gen["audit"])  # the run keys of hints.audit stay with the run
        assert rc.hints.audit.max_attempts == cfg["hints"].get("audit", {}).get("max_attempts", 1)


def test_tiny_is_small_and_local():
    cfg = cfg_of("tiny-test.json")  # the fast test config (tiny.json, the default run: test_main_job_config)
    assert cfg["train"]["policy"] == "tiny:0.5m"
    assert cfg["data"]["train"]["format"] == "synthetic"
    assert cfg["hints"]["generator"]["name"] == "oracle"
    assert cfg["train"]["max_steps"] <= 10 and cfg["train"]["checkpoint_every"] >= 1
    assert cfg["train"]["max_steps"] > cfg["train"]["checkpoint_every"]  # a checkpoint before the end
    names = [b["name"] if isinstance(b, dict) else b for b in cfg["eval"]["benchmarks"]]
    assert names == ["synthetic_id", "synthetic_ood"]
    assert cfg["eval"]["models"] == ["base", "trained"]
    assert all(not r.get("gpu") for r in cfg["resources"].values())


@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_follow_the_paper(name):
    """METHOD.md 5: Qwen3-VL-{2B,4B,8B}-Thinking, ViRL39K, 384 prompts/step, G=8, mini-batch 128, lr 1e-6
    constant, AdamW wd 0.01, clip 1.0, response 4096, pixels 256*28^2..1280*28^2, bf16, FSDP, lambda 0.05
    (2B/8B) or 0.5 (4B), K=100, tau=1, KL 0.01, temperature 1.0, top_p 0.99, vLLM rollouts, 2 epochs."""
    from ptdpo.config import train_config_from_dict

    size, lam = RECIPES[name]
    cfg = cfg_of(name)
    t = train_config_from_dict(copy.deepcopy(cfg["train"]))
    assert t.policy == f"Qwen/Qwen3-VL-{size}-Thinking"
    assert cfg["data"]["train"]["path"] == "TIGER-Lab/ViRL39K"
    assert (t.algorithm, t.group_size, t.prompts_per_step, t.mini_batch_prompts) == ("grpo", 8, 384, 128)
    assert (t.lr, t.lr_schedule, t.weight_decay, t.grad_clip) == (1e-6, "constant", 0.01, 1.0)
    assert t.max_response_length == 4096
    assert (t.min_pixels, t.max_pixels) == (256 * 28 * 28, 1280 * 28 * 28)
    assert (t.precision, t.sharding, t.rollout_backend) == ("bf16", "fsdp", "vllm")
    assert (t.ptd.enabled, t.ptd.lambda_ptd, t.ptd.k, t.ptd.tau_ptd, t.ptd.teacher_context) == (True, lam, 100, 1.0, "hint")
    assert (t.kl_coef, t.temperature, t.top_p, t.epochs) == (0.01, 1.0, 0.99, 2)
    assert not t.freeze_vision
    # the released RL details and the paper's prompt (METHOD.md 2.7, 5)
    assert (t.clip_low, t.clip_high, t.dual_clip_c, t.kl_direction, t.kl_normalizer) == (0.2, 0.3, 3.0, "forward",
                                                                                          "all_tokens")
    assert t.prompt_template == "boxed" and run_config_from_dict(cfg).prompt.template == "boxed"
    assert t.max_prompt_length == (4096 if size == "8B" else 8192)
    assert t.vllm.max_model_len >= t.max_prompt_length + t.max_response_length
    # the same hint generator at every size: Qwen3-VL-235B-A22B-Thinking through vLLM
    assert cfg["hints"] == cfg_of("qwen3vl-2b.json")["hints"]
    assert cfg["hints"]["generator"]["model"] == "Qwen/Qwen3-VL-235B-A22B-Thinking"
    gen = cfg["eval"]["generation"]
    assert (gen["max_new_tokens"], gen["temperature"], gen["top_p"], gen["k"]) == (4096, 1.0, 1.0, 8)  # avg@8
    from ptdpo.eval import PAPER_SUITE

    assert tuple(cfg["eval"]["benchmarks"]) == PAPER_SUITE  # PAPO's suite (METHOD.md 5)
    assert cfg["hints"]["generator"]["name"] == "vllm"
    mount = next(iter(cfg["kubernetes"]["persistent_volume_claims"].values()))
    assert cfg["hints"]["cache_dir"].startswith(mount + "/")  # shard caches survive pod retries
    # hardware: GPUs for training and evaluation, an image, GPU nodes, shared memory, the cache PVC
    assert cfg["resources"]["train"]["gpu"] >= 8 and cfg["resources"]["evaluate"]["gpu"] >= 1
    attrs, env = kubernetes_attributes(cfg, "train")
    assert attrs["image"] and attrs["node_selector"] and attrs["tolerations"]
    assert attrs["persistent_volume_claims"] == {"ptdpo-model-cache": "/cache"}
    assert env["HF_HOME"].startswith("/cache")
    assert cfg["schedule"]["cron"]


def test_baselines_change_only_the_objective():
    base = cfg_of("qwen3vl-2b.json")
    grpo = cfg_of("baselines/qwen3vl-2b-grpo.json")
    ans = cfg_of("baselines/qwen3vl-2b-answer-distill.json")
    assert grpo["train"]["ptd"]["enabled"] is False and grpo["train"]["ptd"]["lambda_ptd"] == 0
    assert ans["train"]["ptd"]["teacher_context"] == "answer"
    for variant in (grpo, ans):
        for key in ("data", "eval", "resources", "kubernetes"):
            assert variant[key] == base[key]
        rest = {k: v for k, v in variant["train"].items() if k != "ptd"}
        assert rest == {k: v for k, v in base["train"].items() if k != "ptd"}
    tiny_grpo = cfg_of("baselines/tiny-grpo.json")
    assert tiny_grpo["train"]["ptd"]["enabled"] is False
    assert cfg_of("baselines/tiny-answer-distill.json")["train"]["ptd"]["teacher_context"] == "answer"


def test_two_node_configs_differ_from_their_parent_only_in_the_node_count():
    for name, parent in (("tiny-2node.json", "tiny-test.json"), ("qwen3vl-8b-2node.json", "qwen3vl-8b.json")):
        cfg, base = cfg_of(name), cfg_of(parent)
        assert run_config_from_dict(cfg).train_nodes == 2 and run_config_from_dict(base).train_nodes == 1
        assert {k: v for k, v in cfg["resources"]["train"].items() if k != "nodes"} == base["resources"]["train"]
        for key in ("data", "hints", "train", "eval", "retry", "timeout"):
            assert cfg[key] == base[key], (name, key)
    attrs, env = kubernetes_attributes(cfg_of("qwen3vl-8b-2node.json"), "train")
    assert env["NCCL_SOCKET_IFNAME"] == "eth0" and attrs["node_selector"]["ptdpo.io/pool"] == "gpu-h100"


def test_hints_come_from_the_235b_thinking_model_on_vllm_or_any_endpoint():
    """METHOD.md 5: Qwen3-VL-235B-Thinking writes the hints for every policy size; by default with the vLLM
    generator inside the hint steps (8 GPUs, tensor parallel 8), or from any OpenAI-compatible server with
    the configs/hints/openai-endpoint.json overlay (which drops the vLLM engine keys and the GPUs)."""
    for name in RECIPES:
        rc = run_config_from_dict(cfg_of(name))
        gen = rc.hints.generator_config()
        assert (gen["name"], gen["model"], gen["tensor_parallel_size"]) == ("vllm", "Qwen/Qwen3-VL-235B-A22B-Thinking", 8)
        assert rc.resources["generate_hints"].gpu == 8 and rc.hints.structured
        endpoint = run_config_from_dict(load_config_dict(json.dumps({"extends": [name, "hints/openai-endpoint.json"]})))
        gen = endpoint.hints.generator_config()
        assert (gen["name"], gen["model"]) == ("openai", "Qwen/Qwen3-VL-235B-A22B-Thinking")
        assert gen["base_url"].startswith("http://hint-server.ptdpo.svc") and "tensor_parallel_size" not in gen
        assert not endpoint.resources["generate_hints"].gpu
        assert endpoint.train == rc.train and endpoint.eval == rc.eval  # only how hints are made changes


def test_kubernetes_step_settings_overlay_the_defaults():
    cfg = cfg_of("qwen3vl-2b.json")
    cpu_attrs, _ = kubernetes_attributes(cfg, "audit")
    gpu_attrs, _ = kubernetes_attributes(cfg, "train")
    assert cpu_attrs["node_selector"] == {"ptdpo.io/pool": "cpu"} and "tolerations" not in cpu_attrs
    assert gpu_attrs["node_selector"]["ptdpo.io/pool"] == "gpu-h100"
    assert gpu_attrs["image"] == cpu_attrs["image"]
    hints_attrs, _ = kubernetes_attributes(cfg, "generate_hints")
    assert hints_attrs["node_selector"]["ptdpo.io/pool"] == "gpu-h100"  # the 235B model runs in the hint step
    endpoint = load_config_dict(json.dumps({"extends": ["qwen3vl-2b.json", "hints/openai-endpoint.json"]}))
    hints_attrs, _ = kubernetes_attributes(endpoint, "generate_hints")
    assert "ptdpo-hint-api" in hints_attrs["secrets"] and hints_attrs["node_selector"] == {"ptdpo.io/pool": "cpu"}


# ------------------------------------------------------------------------------------- rejections
def _broken(mutate) -> dict:
    cfg = copy.deepcopy(cfg_of("tiny-test.json"))
    mutate(cfg)
    return cfg


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.update(trian={}), "unknown top-level key"),
    (lambda c: c["train"].update(lamda_ptd=0.1), "lamda_ptd"),
    (lambda c: c["train"]["ptd"].update(lambda_ptd=-1), "lambda_ptd"),
    (lambda c: c["resources"].pop("train"), "resources.train"),
    (lambda c: c["resources"]["evaluate"].update(gpus=1), "unknown key 'gpus'"),
    (lambda c: c["kubernetes"].update(node_selectr={"a": "b"}), "node_selectr"),
    (lambda c: c.update(schedule={"cron": "daily"}), "schedule.cron"),
    (lambda c: c["retry"].update(audit={"times": 1}), "retry.audit"),
    (lambda c: c["eval"].update(benchmarks=["no_such_benchmark"]), "no_such_benchmark"),
    (lambda c: c["eval"].update(models=["base", "finetuned"]), "eval.models"),
    (lambda c: c["data"]["train"].update(fromat="jsonl"), "fromat"),
    (lambda c: c["hints"]["generator"].update(name="gpt"), "hints.generator.name"),
    (lambda c: c["hints"]["generator"].update(temprature=0.1), "temprature"),
    (lambda c: c.update(project="My Project"), "project"),
    (lambda c: c["resources"]["train"].update(nodes=0), "resources.train.nodes: the number of training nodes"),
    (lambda c: c["resources"]["train"].update(nodes="2"), "resources.train.nodes"),
    (lambda c: c["resources"]["train"].update(nodes=1.5), "resources.train.nodes"),
    (lambda c: c["resources"]["train"].update(nodes=True), "resources.train.nodes"),
    (lambda c: c["resources"]["evaluate"].update(nodes=2), "resources.evaluate.nodes: only training"),
    (lambda c: c.update(parallel={"nodes": 2}), "resources.train.nodes"),
])
def test_bad_configs_are_rejected_with_the_problem_named(mutate, message):
    with pytest.raises(RunConfigError, match=message):
        run_config_from_dict(_broken(mutate))


def test_all_problems_are_reported_at_once():
    def two(c):
        c["train"]["lamda_ptd"] = 1
        c["resources"].pop("audit")

    with pytest.raises(RunConfigError, match="2 problem") as err:
        run_config_from_dict(_broken(two))
    assert "lamda_ptd" in str(err.value) and "resources.audit" in str(err.value)


def test_extends_merges_as_a_json_merge_patch(tmp_path):
    child = {"extends": "tiny.json", "name": "child", "train": {"max_steps": 2, "ptd": {"k": 8}},
             "kubernetes": {"env": None}}
    cfg = parse_run_config(json.dumps(child))
    tiny = cfg_of("tiny.json")
    assert cfg["name"] == "child" and cfg["train"]["max_steps"] == 2 and cfg["train"]["ptd"]["k"] == 8
    assert cfg["train"]["ptd"]["lambda_ptd"] == tiny["train"]["ptd"]["lambda_ptd"]  # merged, not replaced
    assert "env" not in cfg["kubernetes"] and cfg["kubernetes"]["image"] == tiny["kubernetes"]["image"]
    assert cfg["extends_chain"] == ["tiny.json"]
    # a path outside configs/ works too, and cycles are caught
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"extends": str(b)}))
    b.write_text(json.dumps({"extends": str(a)}))
    with pytest.raises(RunConfigError, match="cycle"):
        load_config_dict(a.read_text())
    with pytest.raises(RunConfigError, match="cannot find"):
        load_config_dict(json.dumps({"extends": "nope.json"}))
    with pytest.raises(RunConfigError, match="not valid JSON"):
        parse_run_config("{not json")


def test_extends_a_list_applies_overlays_in_order():
    cfg = load_config_dict(json.dumps({"extends": ["qwen3vl-4b.json", "overlays/tiny-smoke.json"],
                                       "train": {"max_steps": 3}}))
    assert cfg["extends_chain"] == ["qwen3vl-4b.json", "qwen3vl-2b.json", "overlays/tiny-smoke.json"]
    rc = run_config_from_dict(cfg)
    assert rc.train.policy == "tiny:0.5m" and rc.train.max_steps == 3  # the file's own keys come last
    assert rc.train.ptd.lambda_ptd == 0.5 and rc.train.mini_batch_prompts is None  # 4B's lambda; null removed
    assert rc.hints.generator == {"name": "oracle"} and rc.data.train.format == "synthetic"
    with pytest.raises(RunConfigError, match="non-empty list"):
        load_config_dict(json.dumps({"extends": []}))
    with pytest.raises(RunConfigError, match="non-empty list"):
        load_config_dict(json.dumps({"extends": ["tiny.json", 3]}))


def test_one_prompt_template_for_the_run():
    assert run_config_from_dict(cfg_of("tiny.json")).train.prompt_template == "boxed"
    tags = _broken(lambda c: c.update(prompt={"template": "answer_tags"}))
    assert run_config_from_dict(tags).train.prompt_template == "answer_tags"
    with pytest.raises(RunConfigError, match="train.prompt_template: set prompt.template instead"):
        run_config_from_dict(_broken(lambda c: c["train"].update(prompt_template="boxed")))
    with pytest.raises(RunConfigError, match="prompt.template"):
        run_config_from_dict(_broken(lambda c: c.update(prompt={"template": "xml"})))
    with pytest.raises(RunConfigError, match="prompt"):
        run_config_from_dict(_broken(lambda c: c.update(prompt={"tmplate": "boxed"})))
