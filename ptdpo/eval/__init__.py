"""Benchmark evaluation: the registry, generation backends, scoring, metrics and result tables.

Importing this package is cheap: torch, transformers and vLLM load only when a backend generates.

    from ptdpo.eval import get_benchmark, load_benchmark, run_suite, compare_models

See ``registry`` (declarative benchmark specs), ``generation`` (transformers / vLLM backends),
``metrics`` (avg@k, unbiased pass@k, tables) and ``runner`` (one model x benchmarks, crash-isolated).
Answer extraction and math-aware matching live in ``ptdpo.answers`` (the same code as the RL reward).
"""

from ptdpo.eval.generation import (
    BACKENDS,
    GenerationConfig,
    Sample,
    TransformersBackend,
    VLLMBackend,
    make_backend,
)
from ptdpo.eval.metrics import (
    OVERALL_MEAN,
    OVERALL_REL,
    PREDICTION_COLUMNS,
    RESULT_COLUMNS,
    avg_at_k,
    compare_models,
    pass_at_k,
    results_table,
    summarize_predictions,
)
from ptdpo.eval.registry import (
    ANSWER_TYPES,
    PAPER_SUITE,
    REGISTRY,
    BenchmarkError,
    BenchmarkSpec,
    get_benchmark,
    list_benchmarks,
    load_benchmark,
    parse_lettered_options,
    prompt_item,
    register,
    registry_table,
    render_question,
    resolve_benchmark,
)
from ptdpo.eval.runner import run_benchmark, run_suite, score_samples

__all__ = [
    "ANSWER_TYPES",
    "BACKENDS",
    "OVERALL_MEAN",
    "OVERALL_REL",
    "PAPER_SUITE",
    "PREDICTION_COLUMNS",
    "REGISTRY",
    "RESULT_COLUMNS",
    "BenchmarkError",
    "BenchmarkSpec",
    "GenerationConfig",
    "Sample",
    "TransformersBackend",
    "VLLMBackend",
    "avg_at_k",
    "compare_models",
    "get_benchmark",
    "list_benchmarks",
    "load_benchmark",
    "make_backend",
    "parse_lettered_options",
    "pass_at_k",
    "prompt_item",
    "register",
    "registry_table",
    "render_question",
    "resolve_benchmark",
    "results_table",
    "run_benchmark",
    "run_suite",
    "score_samples",
    "summarize_predictions",
]
