"""One run-level prompt template (``prompt.template``) reaches every place that asks the model or grades it:
the student's rollout prompts, the hinted teacher's prompts, the rewards, and evaluation."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from ptdpo.config import PTDConfig, TrainConfig
from ptdpo.data import generate_synthetic
from ptdpo.eval.generation import GenerationConfig, messages_for
from ptdpo.hints.schema import Hint, Region
from ptdpo.prompts import PROMPT_TEMPLATES
from ptdpo.rewards import score_batch
from ptdpo.rollout.collect import encode_student_prompts
from ptdpo.run_config import RunConfigError, parse_run_config, run_config_from_dict
from ptdpo.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]


def _tiny(template: str | None = None, **extra) -> str:
    cfg = json.loads((ROOT / "configs" / "tiny-test.json").read_text())
    if template is not None:
        cfg["prompt"] = {"template": template}
    cfg.update(extra)
    return json.dumps(cfg)


@pytest.mark.parametrize("template", ["boxed", "answer_tags"])
def test_the_run_template_reaches_training_and_evaluation(template):
    rc = run_config_from_dict(parse_run_config(_tiny(template)))
    assert rc.train.prompt_template == template
    assert rc.eval.generation.prompt_template == template


def test_evaluation_cannot_set_its_own_template():
    cfg = json.loads(_tiny("boxed"))
    cfg["eval"]["generation"]["prompt_template"] = "answer_tags"
    with pytest.raises(RunConfigError, match=r"eval\.generation\.prompt_template: set prompt\.template"):
        parse_run_config(json.dumps(cfg))


@pytest.mark.parametrize("template", ["boxed", "answer_tags"])
def test_student_teacher_reward_and_evaluation_use_one_template(tiny_policy, template):
    model, processor = copy.deepcopy(tiny_policy[0]), tiny_policy[1]
    items = generate_synthetic(2, seed=0, families=["count_attr"], image_size=64)
    tmpl = PROMPT_TEMPLATES[template]
    other = PROMPT_TEMPLATES["answer_tags" if template == "boxed" else "boxed"]
    cfg = TrainConfig(policy="tiny:0.5m", group_size=2, prompts_per_step=2, max_response_length=4,
                      prompt_template=template, ptd=PTDConfig(k=4)).resolved()
    hints = {it.id: Hint(item_id=it.id, regions=[Region(bbox=[0, 0, 500, 500], label="shapes", why="look here")],
                         steps=["Look at every shape."], traps=[], generator={"name": "test"}) for it in items}
    student = encode_student_prompts(processor, items, cfg)
    rollouts = [SimpleNamespace(item_index=i, prompt=p) for i, p in enumerate(student)]
    teacher = Trainer(cfg, model, processor, items, hints=hints)._teacher_prompts(rollouts)
    evaluation = processor.apply_chat_template(messages_for(items[0], GenerationConfig(prompt_template=template)),
                                               tokenize=False)
    for text in [p.text for p in student + teacher] + [evaluation]:
        assert tmpl.instruction in text and other.instruction not in text
        assert (tmpl.system_prompt or "<no system>") in text or tmpl.system_prompt is None
        if tmpl.system_prompt is None:
            assert "<|im_start|>system" not in text
    answer = items[0].answer
    well_formed = {"boxed": f"<think>count them</think> \\boxed{{{answer}}}",
                   "answer_tags": f"<think>count them</think><answer>{answer}</answer>"}
    for written, text in well_formed.items():
        [r] = score_batch([text], [items[0]], max_workers=1, template=template)
        assert r.format == (1.0 if written == template else 0.0), (written, template, r)
