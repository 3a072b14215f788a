"""The run config typed once (``ptdpo.run_config``): every bad value is rejected by the flow's Config parser,
naming its key path and the value; all problems are reported together; a bad file stops ``run`` before any
step, with one readable block and no traceback; and the "uses hints" rule has exactly one definition."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from ptdpo.config import ConfigError, LossAgg, PTDConfig, TrainConfig, train_config_from_dict
from ptdpo.config_fields import FieldProblems, PositiveInt, Probability, build, problems_for
from ptdpo.run_config import RunConfigError, load_run_config, parse_run_config

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny-test.json"

# (patch over tiny.json as a user writes it, the key path the message must name, the value as shown)
BAD_VALUES = [
    # the twelve values of issue 14
    ({"train": {"ptd": {"enabled": "false"}}}, "train.ptd.enabled", '"false" (a string)'),
    ({"train": {"precision": "fp16"}}, "train.precision", '"fp16"'),
    ({"train": {"rollout_backend": "sglang"}}, "train.rollout_backend", '"sglang"'),
    ({"train": {"lr_schedule": "cosin"}}, "train.lr_schedule", '"cosin"'),
    ({"train": {"lr": -0.001}}, "train.lr", "-0.001"),
    ({"train": {"max_steps": "4"}}, "train.max_steps", '"4" (a string)'),
    ({"train": {"group_size": 4.5}}, "train.group_size", "4.5 (a number)"),
    ({"train": {"policy": None}}, "train.policy", "missing"),
    ({"train": {"ptd": {"lambda_ptd": "0.05"}}}, "train.ptd.lambda_ptd", '"0.05" (a string)'),
    ({"train": {"temperature": 0}}, "train.temperature", "0"),
    ({"train": {"kl_estimator": "k4"}}, "train.kl_estimator", '"k4"'),
    ({"train": {"adam_betas": [0.9]}}, "train.adam_betas", "[0.9]"),
    # more of the same kinds, in every section
    ({"train": {"algorithm": "ppo"}}, "train.algorithm", '"ppo"'),
    ({"train": {"ptd": {"support": "both"}}}, "train.ptd.support", '"both"'),
    ({"train": {"ptd": {"beta": 1}}}, "train.ptd.beta", "1"),
    ({"train": {"ptd": {"mask_only": 1}}}, "train.ptd.mask_only", "1 (an integer)"),
    ({"train": {"top_p": 0}}, "train.top_p", "0"),
    ({"train": {"loss_agg": "mean"}}, "train.loss_agg", '"mean"'),
    ({"train": {"weight_decay": -0.1}}, "train.weight_decay", "-0.1"),
    ({"train": {"checkpoint_every": True}}, "train.checkpoint_every", "true (a boolean)"),
    ({"train": {"mini_batch_prompts": 3}}, "train.mini_batch_prompts", "3"),
    ({"seed": "0"}, "seed", '"0" (a string)'),
    ({"data": {"train": {"n": "16"}}}, "data.train.n", '"16"'),
    ({"data": {"shuffle": "yes"}}, "data.shuffle", '"yes"'),
    ({"hints": {"shards": 0}}, "hints.shards", "0"),
    ({"hints": {"structured": "true"}}, "hints.structured", '"true"'),
    ({"hints": {"audit": {"floor": 1.5}}}, "hints.audit.floor", "1.5"),
    ({"hints": {"audit": {"max_chars": "1200"}}}, "hints.audit.max_chars", '"1200"'),
    ({"hints": {"generator": {"pad": "wide"}}}, "hints.generator.pad", '"wide"'),
    ({"eval": {"generation": {"k": 0}}}, "eval.generation.k", "0"),
    ({"eval": {"generation": {"temperature": "0"}}}, "eval.generation.temperature", '"0"'),
    ({"eval": {"benchmarks": [{"name": "synthetic_id", "limit": "2"}]}}, "eval.benchmarks[0].limit", '"2"'),
    ({"resources": {"train": {"gpu": -1}}}, "resources.train.gpu", "-1"),
    ({"retry": {"train": {"times": "1"}}}, "retry.train.times", '"1"'),
    ({"timeout": {"train": 1.5}}, "timeout.train", "1.5"),
    ({"kubernetes": {"env": {"HF_HOME": 1}}}, "kubernetes.env.HF_HOME", "1"),
    ({"report": {"baselines": {"grpo": 123}}}, "report.baselines.grpo", "123"),
]


def _patched(patch: dict) -> str:
    return json.dumps({"extends": str(TINY), "name": "bad", **patch})


@pytest.mark.parametrize("patch, key, shown", BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_each_bad_value_is_rejected_by_the_parser_naming_its_key_and_value(patch, key, shown):
    with pytest.raises(RunConfigError) as err:
        parse_run_config(_patched(patch))
    msg = str(err.value)
    assert "has 1 problem" in msg, msg  # exactly this value, nothing else of tiny.json
    assert f"- {key}: " in msg and shown in msg, msg
    assert err.value.problems[0].startswith(f"{key}: ")


def test_every_problem_of_a_config_is_reported_at_once():
    issue = BAD_VALUES[:12]
    patch: dict = {}
    for p, _, _ in issue:
        for section, values in p.items():
            for k, v in values.items():
                if isinstance(v, dict):
                    patch.setdefault(section, {}).setdefault(k, {}).update(v)
                else:
                    patch.setdefault(section, {})[k] = v
    with pytest.raises(RunConfigError) as err:
        parse_run_config(_patched(patch))
    assert len(err.value.problems) == len(issue), err.value.problems
    for _, key, _ in issue:
        assert any(p.startswith(f"{key}: ") for p in err.value.problems), key


def test_literal_messages_list_the_allowed_values_and_unknown_keys_the_known_ones():
    with pytest.raises(RunConfigError) as err:
        parse_run_config(_patched({"train": {"precision": "fp16", "ptd": {"lamda_ptd": 0.1}}}))
    msg = str(err.value)
    assert "['fp32', 'bf16']" in msg
    assert "train.ptd: unknown key 'lamda_ptd'" in msg and "'lambda_ptd'" in msg


def test_a_config_built_in_code_gets_the_same_checks():
    with pytest.raises(ConfigError, match=r"train\.lr: must be > 0, got -1"):
        TrainConfig(lr=-1).resolved()
    with pytest.raises(ConfigError, match=r"train\.ptd\.enabled: expected true or false"):
        TrainConfig(ptd=PTDConfig(enabled="false")).resolved()
    # the library's default policy stays for code; a run config must name one
    assert train_config_from_dict({}).policy == "tiny:0.5m"
    with pytest.raises(ConfigError, match=r"train\.policy: missing"):
        train_config_from_dict({}, require_policy=True)


def test_loss_agg_names_are_the_objectives_own():
    from ptdpo.objectives import LOSS_AGG_MODES

    assert typing.get_args(LossAgg) == tuple(LOSS_AGG_MODES)


def test_the_typed_config_is_what_the_steps_read():
    rc = load_run_config(TINY)
    assert rc.train.policy == "tiny:0.5m" and rc.train.clip_low == 0.2  # resolved
    assert rc.train.ptd.uses_hints and rc.hints.shards == 2 and rc.hints.audit.floor == 0.9
    assert rc.hints.audit.max_attempts == 2 and rc.hints.generator_config()["max_attempts"] == 2
    assert [b.name for b in rc.eval.benchmarks] == ["synthetic_id", "synthetic_ood"]
    assert rc.eval.generation.max_new_tokens == 8 and rc.eval.models == ["base", "trained"]
    assert rc.data.train.format == "synthetic" and rc.data.train.n == 16
    assert rc.train_nodes == 1 and rc.resources["train"].cpu == 2 and rc.retry["train"].times == 1
    grpo = load_run_config(ROOT / "configs" / "baselines" / "tiny-grpo.json")
    assert not grpo.train.ptd.uses_hints
    # the KL-masking ablation needs the hints its mask is made of
    masked = run_config_from_patch({"train": {"ptd": {"mask_only": True, "lambda_ptd": 0}}})
    assert masked.train.ptd.uses_hints and masked.train.ptd.selects_rollouts and not masked.train.ptd.distills


def run_config_from_patch(patch: dict):
    from ptdpo.run_config import run_config_from_dict

    return run_config_from_dict(parse_run_config(_patched(patch)))


# ----------------------------------------------------------------------------- the field checker
@dataclass
class _Inner:
    share: Probability = 0.5
    mode: Literal["a", "b"] = "a"


@dataclass
class _Outer:
    count: PositiveInt
    flag: bool = False
    ratio: float = 1.0
    pair: tuple[int, int] = (1, 2)
    maybe: PositiveInt | None = None
    names: list[str] = field(default_factory=list)
    inner: _Inner = field(default_factory=_Inner)


@pytest.mark.parametrize("data, problem", [
    ({"count": True}, 'x.count: expected an integer, got true (a boolean)'),
    ({"count": 2.0}, "x.count: expected an integer, got 2.0 (a number)"),
    ({"count": 0}, "x.count: must be >= 1, got 0 (an integer)"),
    ({"count": 1, "flag": "false"}, 'x.flag: expected true or false, got "false" (a string)'),
    ({"count": 1, "flag": 0}, "x.flag: expected true or false, got 0 (an integer)"),
    ({"count": 1, "ratio": True}, "x.ratio: expected a number, got true (a boolean)"),
    ({"count": 1, "pair": [1]}, "x.pair: expected an array of 2 integers"),
    ({"count": 1, "pair": [1, "2"]}, 'x.pair[1]: expected an integer, got "2" (a string)'),
    ({"count": 1, "maybe": 0}, "x.maybe: must be >= 1, got 0 (an integer)"),
    ({"count": 1, "maybe": "3"}, 'x.maybe: expected an integer or null, got "3" (a string)'),
    ({"count": 1, "names": ["a", 2]}, "x.names[1]: expected a string, got 2 (an integer)"),
    ({"count": 1, "inner": {"share": 2}}, "x.inner.share: must be in [0, 1], got 2 (an integer)"),
    ({"count": 1, "inner": {"mode": "c"}}, "x.inner.mode: \"c\" (a string) is not one of ['a', 'b']"),
    ({"count": 1, "inner": []}, "x.inner: expected an object, got [] (an array)"),
    ({}, "x.count: missing (an integer)"),
    ({"count": 1, "cuont": 1}, "x: unknown key 'cuont'; known: ["),
])
def test_field_checks_follow_the_annotations(data, problem):
    problems = problems_for(_Outer, data, "x")
    assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_field_checker_builds_the_declared_types_and_collects_every_problem():
    obj = build(_Outer, {"count": 2, "ratio": 3, "pair": [3, 4], "inner": {"share": 1}}, "x")
    assert obj.pair == (3, 4) and isinstance(obj.inner, _Inner) and obj.inner.share == 1 and obj.ratio == 3
    with pytest.raises(FieldProblems) as err:
        build(_Outer, {"count": "1", "flag": "no", "inner": {"mode": "z"}}, "x")
    assert len(err.value.problems) == 3


# ------------------------------------------------------------------------------ the flow's parser
def _flow_env(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "mfhome"
    home.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update({"USERNAME": "ptdpo-test", "METAFLOW_USER": "ptdpo-test", "METAFLOW_HOME": str(home),
                "METAFLOW_DEFAULT_DATASTORE": "local", "METAFLOW_DEFAULT_METADATA": "local",
                "PYTHONPATH": os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])})
    return env


def test_a_bad_config_stops_run_before_any_step_with_one_readable_block(tmp_path):
    """``python flows/ptdpo_flow.py --config config bad.json run``: the parser rejects the file, so no run
    and no step (``prepare_data`` included) starts; the user sees every bad key and value, plainly."""
    (tmp_path / ".metaflow").mkdir()
    issue = BAD_VALUES[:12]
    bad = {"train": {"ptd": {"enabled": "false", "lambda_ptd": "0.05"}, "precision": "fp16", "policy": None,
                     "rollout_backend": "sglang", "lr_schedule": "cosin", "lr": -0.001, "max_steps": "4",
                     "group_size": 4.5, "temperature": 0, "kl_estimator": "k4", "adam_betas": [0.9]}}
    path = tmp_path / "bad.json"
    path.write_text(_patched(bad))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "flows" / "ptdpo_flow.py"), "--config", "config", str(path), "run"],
        cwd=tmp_path, env=_flow_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Bad run config" in out and "config 'bad' has 12 problem(s)" in out, out
    for _, key, shown in issue:
        assert f"- {key}: " in out and shown in out, (key, out)
    assert "Traceback" not in out and "Internal error" not in out, out
    # nothing ran: no run of the flow was recorded, so no step (start, prepare_data) either
    assert not (tmp_path / ".metaflow" / "PTDPOFlow").exists() or not [
        p for p in (tmp_path / ".metaflow" / "PTDPOFlow").iterdir() if p.name[:1].isdigit()], out
    assert "prepare_data" not in out


# ------------------------------------------------------------------------- one "uses hints" rule
RULE_FIELDS = ("mask_only", "lambda_ptd", "teacher_context")
RULE_NAMES = ("uses_hints", "needs_hints", "ptd_needs_hints", "selects_rollouts", "distills", "ptd_on")


def _decisions_outside_ptdconfig(path: Path) -> list[str]:
    """Places in ``path`` that decide from the PTD fields themselves instead of asking PTDConfig: a
    function named like the rule, ``mask_only`` or ``ptd.enabled`` read at all, ``lambda_ptd`` compared
    or tested for truth, a raw ``["mask_only"]`` / ``.get("lambda_ptd")`` key."""
    tree = ast.parse(path.read_text())
    found: list[str] = []

    def where(node) -> str:
        return f"{path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}:{node.lineno}"

    def visit(node, in_ptdconfig: bool, in_test: bool) -> None:
        if isinstance(node, ast.ClassDef) and node.name == "PTDConfig" and path.name == "config.py":
            in_ptdconfig = True
        if not in_ptdconfig:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in RULE_NAMES:
                found.append(f"{where(node)} defines {node.name}")
            if isinstance(node, ast.Attribute):
                if node.attr == "mask_only":
                    found.append(f"{where(node)} reads .mask_only")
                if node.attr == "enabled" and isinstance(node.value, ast.Attribute) and node.value.attr == "ptd":
                    found.append(f"{where(node)} reads .ptd.enabled")
                if node.attr == "lambda_ptd" and in_test:
                    found.append(f"{where(node)} tests .lambda_ptd")
            if isinstance(node, ast.Constant) and node.value in RULE_FIELDS and in_test:
                found.append(f"{where(node)} tests the key {node.value!r}")
            if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant) \
                    and node.slice.value in RULE_FIELDS:
                found.append(f"{where(node)} reads the key {node.slice.value!r}")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                    and node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value in RULE_FIELDS:
                found.append(f"{where(node)} reads the key {node.args[0].value!r}")
        for name, child in ast.iter_fields(node):
            children = child if isinstance(child, list) else [child]
            for c in children:
                if isinstance(c, ast.AST):
                    tested = in_test or isinstance(node, ast.Compare | ast.BoolOp) or (
                        name == "test" and isinstance(node, ast.If | ast.IfExp | ast.While | ast.Assert)) or (
                        isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not)) or (
                        isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "bool")
                    visit(c, in_ptdconfig, tested and not isinstance(c, ast.FunctionDef | ast.Lambda))

    visit(tree, False, False)
    return found


def test_the_uses_hints_rule_is_defined_once(tmp_path):
    sources = sorted(p for d in ("ptdpo", "steps", "flows") for p in (ROOT / d).rglob("*.py"))
    found = [f for p in sources for f in _decisions_outside_ptdconfig(p)]
    assert not found, "decide through PTDConfig.selects_rollouts / distills / uses_hints:\n" + "\n".join(found)
    definitions = [p for p in sources if "def uses_hints" in p.read_text()]
    assert definitions == [ROOT / "ptdpo" / "config.py"]
    # the checker does see a second copy of the rule (the one flows/_common.py had)
    probe = tmp_path / "copy_of_the_rule.py"
    probe.write_text("def ptd_needs_hints(cfg):\n    p = cfg['train']['ptd']\n"
                     "    return p.get('enabled', True) and p['lambda_ptd'] > 0\n"
                     "def ptd_on(c):\n    return c.ptd.enabled and (c.ptd.lambda_ptd > 0 or c.ptd.mask_only)\n")
    found = _decisions_outside_ptdconfig(probe)
    assert {"defines ptd_needs_hints", "reads the key 'lambda_ptd'", "defines ptd_on", "reads .ptd.enabled",
            "tests .lambda_ptd", "reads .mask_only"} <= {f.split(":", 1)[1].split(" ", 1)[1] for f in found}, found


def test_a_key_written_twice_in_one_object_is_an_error():
    text = '{"name": "dup", "train": {"lr": 0.1, "max_steps": 2, "lr": 0.2}}'
    with pytest.raises(RunConfigError, match=r"lr: appears twice"):
        parse_run_config(text)
    for path in sorted(Path(__file__).resolve().parents[1].joinpath("configs").rglob("*.json")):
        json.loads(path.read_text(), object_pairs_hook=lambda kv, p=path: _unique(kv, p))


def _unique(pairs, path):
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"{path}: duplicate keys {sorted({k for k in keys if keys.count(k) > 1})}"
    return dict(pairs)
