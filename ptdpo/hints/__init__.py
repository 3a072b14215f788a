"""Privileged hints (METHOD.md 4): schema, rendering into the teacher prompt, generators, spoiler audit.

Nothing here imports vLLM, openai or pandas at import time; the generators and the batch report import
what they need when used.
"""

from ptdpo.hints.audit import REASONS, AuditConfig, Verdict, audit, audit_text, item_facts
from ptdpo.hints.generation import ShardCache, regenerate_with_feedback, run_generation, shard_cache_path
from ptdpo.hints.generator_base import (
    FAILED,
    OK,
    REJECTED,
    GenerationRequest,
    HintGenerator,
    HintResult,
    HintSourceError,
    RawOutput,
)
from ptdpo.hints.generators import GENERATORS, check_generator_config, generator_class, make_generator
from ptdpo.hints.openai_gen import OpenAIGenerator
from ptdpo.hints.oracle import OracleGenerator
from ptdpo.hints.render import (
    format_box,
    render_answer,
    render_context,
    render_hint,
    render_region,
    render_solution,
    student_messages,
    teacher_messages,
)
from ptdpo.hints.report import (
    LEAK_REASONS,
    AuditFloorError,
    audit_batch,
    audit_report,
    audit_table,
    check_pass_rate,
    format_report,
    usable_hints,
)
from ptdpo.hints.schema import STRUCTURED, UNSTRUCTURED, Hint, HintError, Region, parse_hint, to_unstructured
from ptdpo.hints.vllm_gen import VLLMGenerator

__all__ = [
    "FAILED", "GENERATORS", "LEAK_REASONS", "OK", "REASONS", "REJECTED", "STRUCTURED", "UNSTRUCTURED",
    "AuditConfig", "AuditFloorError", "GenerationRequest", "Hint", "HintError", "HintGenerator", "HintResult",
    "HintSourceError",
    "OpenAIGenerator", "OracleGenerator", "RawOutput", "Region", "ShardCache", "VLLMGenerator", "Verdict",
    "audit", "audit_batch", "audit_report", "audit_table", "audit_text", "check_generator_config",
    "check_pass_rate", "format_box", "format_report", "generator_class", "item_facts", "make_generator",
    "parse_hint", "regenerate_with_feedback", "render_answer", "render_context", "render_hint",
    "render_region", "render_solution", "run_generation", "shard_cache_path", "student_messages",
    "teacher_messages", "to_unstructured", "usable_hints",
]
