"""PTD-PO as a Metaflow flow: data -> hints -> audit -> train -> evaluate -> report.

    python flows/ptdpo_flow.py run                                     # tiny config, local CPU, minutes
    python flows/ptdpo_flow.py --config config configs/qwen3vl-2b.json --with kubernetes run
    python flows/ptdpo_flow.py --config config configs/qwen3vl-2b.json argo-workflows create
    python flows/ptdpo_flow.py --config config configs/qwen3vl-8b-2node.json --with kubernetes run   # 2 nodes
    python flows/ptdpo_flow.py resume                                  # continue a failed run

The flow is wiring only: each step reads artifacts, makes one call into ``steps/`` and stores the results.
Requirements (CPU, memory, GPUs, disk, shared memory), retries and timeouts come from the config; so do
the Kubernetes pod settings, applied only when a step runs on Kubernetes (see ``flows/_common.py``).

Training takes one of two branches, chosen by ``audit`` (a switch on ``train_layout``) from
``resources.train.nodes``::

    audit --one_node---> train ---------------------------------------------> trained -> evaluate (foreach)
          --multi_node-> launch_nodes -> train_nodes (@parallel) -> join_nodes -^

- one node (the default): ``train`` runs in the step process (CPU, one GPU) or ``torchrun`` over the
  node's GPUs; no JobSet controller is needed on the cluster for this branch;
- N nodes: ``launch_nodes`` fans out ``num_parallel=N``; ``train_nodes`` is a ``@parallel`` step (a JobSet
  on Kubernetes / Argo, N local processes in a local run): every node runs one ``torchrun`` agent over its
  GPUs, rendezvous at node 0 (``current.parallel.main_ip``); global rank 0 on node 0 writes checkpoints
  (saved by node 0's step process through ``@checkpoint``) and the final weights (``@model``), and before
  training every node restores the same checkpoint itself (``@retry``: node 0's earlier attempt;
  ``resume``: the origin run's). ``join_nodes`` takes node 0's results and carries the training card;
- ``trained`` is where the branches meet: Metaflow accepts ``train`` and ``join_nodes`` both fanning out
  ``evaluate`` in a local run, but its Argo compiler then emits the evaluation twice and an empty foreach
  template; a join step cannot fan out itself. So one bookkeeping step fans out ``evaluate`` for both.

Artifacts a script may rely on: ``config`` (the config file, ``extends`` resolved), ``run_config`` (the
same, typed and checked: ``ptdpo.run_config.RunConfig``, what the steps read), ``data_manifest``,
``hints`` (table) with ``hints_hash`` and ``hint_cache`` (per shard: hints reused from the cache, of
them from the datastore copy, and generated), ``audit_report`` (with ``audit_verdicts``), ``train_metrics`` (one
row per step), ``tensorboard_logs`` (the same as TensorBoard event files: ``ptdpo.tracking``), ``policy``
(the ``@model`` reference of the trained weights), ``eval_results`` (benchmark, model, metric, value, n),
``eval_comparison``, ``eval_samples`` (a few predictions per benchmark and model), ``eval_item_scores``
(each item's score per benchmark and model), ``summary`` (with ``accuracy_intervals``); also
``versions``, ``train_config``, ``resumed_from_step``, ``resumed_from``, ``resume_chain`` (every run, task
attempt and checkpoint the restore looked at, what it found and why it skipped it), ``final_step`` and
``train_world_size`` (processes that trained together), the same on both branches (``run.data.<name>``);
multi-node runs add ``nodes_resumed_from`` (per node).

Faults and what to do after each: docs/reliability.md. Training never silently starts over: a resume (or
a retry) that finds saved checkpoints but none usable fails, naming each; starting from the base policy
then is an explicit choice (``--restart_training True`` when starting a run; ``resume --tag
restart_training``, since ``resume`` keeps the origin run's Parameters)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # flows/_common.py when imported by a Runner

from _common import (  # noqa: E402
    DEFAULT_CONFIG,
    ensure_import_path,
    parse_config,
    ptdpo_platform,
    run_workers_with_this_python,
    step_resources,
    step_retry,
    step_timeout,
)
from metaflow import (  # noqa: E402
    Config,
    FlowSpec,
    Parameter,
    card,
    checkpoint,
    config_expr,
    current,
    model,
    package_sources,
    parallel,
    project,
    resources,
    retry,
    step,
    timeout,
)

ensure_import_path()
run_workers_with_this_python()  # local @parallel workers are started as "python ..." from PATH


@ptdpo_platform
@project(name=config_expr("config.project"))
@package_sources(["../ptdpo", "../steps"], suffixes=[".py", ".txt", ".json"])
class PTDPOFlow(FlowSpec):
    """RL post-training of a vision-language model with Privileged Tutoring Distillation (PTD-PO)."""

    config = Config("config", default=str(DEFAULT_CONFIG), parser=parse_config,
                    help="Config file (JSON); see configs/. Default: configs/tiny.json.")
    fail_after_step = Parameter(
        "fail_after_step", default=-1, type=int,
        help="TESTING ONLY: make train raise after this step (once its checkpoint is saved) to exercise "
             "@retry and resume. -1 disables it.",
    )
    restart_training = Parameter(
        "restart_training", default=False, type=bool,
        help="When training was expected to continue from a checkpoint (a retry or a resume after checkpoints "
             "were saved) and none is usable, start from the base policy instead of failing. Kept by every "
             "resume of this run; a resume alone can ask for it with `resume --tag restart_training`.",
    )
    fault = Parameter(
        "fault", default="",
        help="TESTING ONLY: faults to inject, one comma-separated entry per run of a resume chain "
             "(<step>:raise|kill[@N], or -); see flows/_faults.py. Empty: none.",
    )

    # ------------------------------------------------------------------------------------- start
    @step
    def start(self):
        """Type the config once (``run_config``, which every later step reads), fix the seed, record
        versions."""
        from ptdpo.run_config import run_config_from_dict

        rc = run_config_from_dict(self.config.to_dict())
        self.run_config = rc
        self.train_config = rc.train.to_dict()
        self.versions = _versions()
        self.seed = rc.seed
        n = rc.hints.shards if rc.hints is not None else 1
        self.hint_shards = list(range(n))
        print(f"config {rc.name!r}: policy {rc.train.policy}, {n} hint shard(s)")
        if self.fault:
            from _faults import parse_faults

            parse_faults(self.fault, {node.name for node in self._graph})  # a typo fails here, not never
        _maybe_fail(self)
        self.next(self.prepare_data)

    @resources(**step_resources("prepare_data"))
    @step
    def prepare_data(self):
        """Load the training set (over-long prompts dropped and counted), resolve the benchmarks, write the
        manifest."""
        from steps.data import eval_branches, prepare_data

        rc = self.run_config
        prepared = prepare_data(rc.data, rc.eval, seed=self.seed, train=rc.train)
        self.train_items = prepared.train_items
        self.benchmarks = prepared.benchmarks
        self.data_manifest = prepared.manifest
        self.eval_branches = eval_branches(prepared.benchmarks, rc.eval.models)
        m = self.data_manifest["train"]
        print(f"train: {m['count']} items ({m['filtered_overlong']} over max_prompt_length dropped), "
              f"hash {m['content_hash'][:12]}")
        _maybe_fail(self)
        self.next(self.generate_hints, foreach="hint_shards")

    # ------------------------------------------------------------------------------------- hints
    @retry(**step_retry("generate_hints"))
    @timeout(**step_timeout("generate_hints"))
    @resources(**step_resources("generate_hints"))
    @step
    def generate_hints(self):
        """One hint per item of this shard, audited with feedback, cached per shard (a retry or a resume
        reuses the finished items)."""
        from _faults import fault_here
        from _hint_store import hint_cache_for

        from steps.hints import generate_hints_shard, shard_items

        rc = self.run_config
        self.shard = self.input
        items = shard_items(self.train_items, len(self.hint_shards))[self.shard]
        self.shard_cache = None
        if rc.train.ptd.uses_hints:
            cache_dir, mirror = hint_cache_for(self, current, rc.hints.cache_dir)
            fault = fault_here(self.fault, current, self.index)
            on_result = None
            if fault is not None and fault.at is not None:
                done = []

                def on_result(_result, fault=fault, done=done):
                    done.append(1)
                    if len(done) == fault.at:
                        fault.fire(f"after {fault.at} hint(s) of shard {self.shard}")

            self.shard_cache = {}
            self.shard_hints, failures = generate_hints_shard(
                items, rc.hints, cache_dir, shard_index=self.shard, mirror=mirror,
                sync_every_s=rc.hints.cache_sync_s, on_result=on_result, report=self.shard_cache,
            )
            print(f"shard {self.shard}: {len(self.shard_hints)} items, {len(failures)} not usable; cache: "
                  f"{self.shard_cache}")
        else:
            self.shard_hints = []
            print("train.ptd does not use hints (baseline): no hints generated")
        _maybe_fail(self)
        self.next(self.join_hints)

    @step
    def join_hints(self, inputs):
        """One hints table for the whole training set (``hints``) and its hash (``hints_hash``)."""
        from steps.hints import hints_table, join_hint_shards

        self.hints, self.hints_hash = hints_table(join_hint_shards([inp.shard_hints for inp in inputs]))
        self.hint_cache = [inp.shard_cache for inp in inputs]
        self.merge_artifacts(inputs, exclude=["shard", "shard_hints", "shard_cache"])
        print(f"hints: {len(self.hints)} rows, hash {self.hints_hash[:12]}")
        _maybe_fail(self)
        self.next(self.audit)

    @card(type="blank", id="audit")
    @timeout(**step_timeout("audit"))
    @resources(**step_resources("audit"))
    @step
    def audit(self):
        """Zero-spoiler audit: pass/reject with reasons; fails the run below the pass-rate floor."""
        from _cards import audit_components

        from steps.audit import run_audit

        rc = self.run_config
        if rc.train.ptd.uses_hints:
            try:
                self.audit_verdicts, self.audit_report = run_audit(
                    self.train_items, self.hints.to_dict("records"), rc.hints.audit
                )
            except Exception as e:
                self.audit_report = getattr(e, "report", {"error": str(e)})  # kept with the failed task
                raise
            print(self.audit_report.get("summary", ""))
        else:
            self.audit_verdicts, self.audit_report = None, {"skipped": "train.ptd does not use hints"}
        for c in audit_components(self.audit_report, self.audit_verdicts, self.hints):
            current.card["audit"].append(c)
        self.train_nodes_count = rc.train_nodes
        self.train_layout = "multi_node" if self.train_nodes_count > 1 else "one_node"
        _maybe_fail(self)
        self.next({"one_node": self.train, "multi_node": self.launch_nodes}, condition="train_layout")

    # ------------------------------------------------------------------------------------- train
    @card(type="blank", id="training", refresh_interval=1)  # live: refreshed every tracking.card_refresh_s
    @model
    @checkpoint(load_policy="none")  # restore_for_training loads (and verifies) what to continue from
    @retry(**step_retry("train"))
    @timeout(**step_timeout("train"))
    @resources(**step_resources("train"))
    @step
    def train(self):
        """RL with PTD from the newest valid checkpoint, if any: this task's earlier attempts (``@retry``),
        then the runs this one resumes, back to the first (``resume``). Every checkpoint is saved through
        ``@checkpoint``; the final weights through ``@model`` (``self.policy``). The temporary training
        folder is removed when training ends, success or failure. While it trains, the ``training`` card
        shows the steps so far and every step goes to the configured trackers (TensorBoard event files
        stored as ``tensorboard_logs``)."""
        from _card_parts import LiveTrainingCard
        from _cards import training_components
        from _checkpoints import restore_for_training, train_with_checkpoints

        from steps.report import CURVES
        from steps.train import training_workdir

        live = LiveTrainingCard(current.card["training"], self._total_steps(), self.run_config.tracking.card_refresh_s,
                                CURVES)
        with training_workdir() as work, self._tracking(work / "tensorboard") as tracker:
            restored = restore_for_training(current, self.__class__.__name__, work / "restore",
                                            restart=self._restart_requested())
            self.resume_chain = restored.chain
            fail_after, after_checkpoint = self._train_faults()
            out = train_with_checkpoints(
                current, self.run_config, self.train_items, self.hints, self.audit_verdicts, restored.path,
                work, fail_after_step=fail_after, after_checkpoint=after_checkpoint,
                on_step=lambda result: (tracker(result), live(result)),
            )
            self._store_training(out, restored)
        live.finish()
        _maybe_fail(self)
        for c in training_components(self.train_metrics, info=self._training_info(), train_config=self.train_config):
            current.card["training"].append(c)
        self.next(self.trained)

    @step
    def launch_nodes(self):
        """Fan out one task per training node (``resources.train.nodes``)."""
        self.next(self.train_nodes, num_parallel=self.train_nodes_count)

    @model
    @checkpoint(load_policy="none")  # every node restores node 0's checkpoint itself (restore_for_training)
    @retry(**step_retry("train"))
    @timeout(**step_timeout("train"))
    @resources(**step_resources("train"))
    @parallel
    @step
    def train_nodes(self):
        """One node of multi-node training: restore the checkpoint to continue from (the same on every
        node), then one torchrun agent over this node's GPUs in the job of all nodes. Node 0 (global rank 0)
        saves the checkpoints and the final weights."""
        from _checkpoints import Gang, restore_for_training, train_with_checkpoints

        from steps.train import training_workdir

        gang = Gang.from_current(current)
        with training_workdir() as work, self._tracking(work / "tensorboard", enabled=gang.node_index == 0) as tracker:
            restored = restore_for_training(current, self.__class__.__name__, work / "restore", current.step_name,
                                            control_task_id=current.parallel.control_task_id,
                                            restart=self._restart_requested())
            print(f"[ptdpo] node {gang.node_index}: continuing from {restored.source or 'the base policy'}")
            fail_after, after_checkpoint = self._train_faults()
            out = train_with_checkpoints(  # node 0 follows rank 0's steps for the trackers
                current, self.run_config, self.train_items, self.hints, self.audit_verdicts, restored.path,
                work, fail_after_step=fail_after, gang=gang, after_checkpoint=after_checkpoint,
                on_step=tracker if gang.node_index == 0 else None,
            )
            self.node_index = gang.node_index
            self.node_resumed_from = restored.source  # what this node restored (the same on every node)
            if out is not None:  # node 0
                self.resume_chain = restored.chain
                self._store_training(out, restored)
        self.next(self.join_nodes)

    @card(type="blank", id="training")
    @step
    def join_nodes(self, inputs):
        """Node 0's results (``train_metrics``, ``policy``, ``final_step``, ``resumed_from_step``,
        ``resumed_from``, ``train_world_size``) as the run's training results, and the training card."""
        from _cards import training_components

        node0 = next(inp for inp in inputs if inp.node_index == 0)
        for name in TRAINING_ARTIFACTS:
            setattr(self, name, getattr(node0, name))
        self.nodes_resumed_from = [inp.node_resumed_from for inp in sorted(inputs, key=lambda i: i.node_index)]
        self.merge_artifacts(inputs, exclude=["node_index", "node_resumed_from", *TRAINING_ARTIFACTS])
        for c in training_components(self.train_metrics, info=self._training_info(), train_config=self.train_config):
            current.card["training"].append(c)
        self.next(self.trained)

    @step
    def trained(self):
        """Where the one-node and the multi-node branches meet; fans out the evaluation."""
        _maybe_fail(self)
        self.next(self.evaluate, foreach="eval_branches")

    # ---------------------------------------------------------------------------------- evaluate
    @model
    @retry(**step_retry("evaluate"))
    @timeout(**step_timeout("evaluate"))
    @resources(**step_resources("evaluate"))
    @step
    def evaluate(self):
        """One (benchmark, model) pair: the base policy or the trained weights (loaded from ``@model``)."""
        from steps.evaluate import evaluate_benchmark

        rc = self.run_config
        self.branch = {"benchmark": self.input["benchmark"]["name"], "model": self.input["model"]}
        model_ref = rc.train.policy if self.input["model"] == "base" else current.model.load(self.policy)
        self.predictions, self.branch_results, self.branch_error = evaluate_benchmark(
            model_ref, self.input["benchmark"], rc.eval.generation, model_name=self.input["model"],
        )
        if self.branch_error:
            print(f"evaluation of {self.branch} failed: {self.branch_error}", file=sys.stderr)
        _maybe_fail(self)
        self.next(self.join_eval)

    @step
    def join_eval(self, inputs):
        """The long results table of every branch."""
        from steps.evaluate import join_results
        from steps.report import item_scores, pick_samples

        self.eval_results = join_results([inp.branch_results for inp in inputs])
        self.eval_samples = pick_samples([inp.predictions for inp in inputs])  # a few per branch, for the report
        # every item's score per branch: the paired interval of trained - base needs the items, not the mean
        self.eval_item_scores = item_scores([inp.predictions for inp in inputs])
        self.eval_errors = {f"{i.branch['benchmark']}/{i.branch['model']}": i.branch_error
                            for i in inputs if i.branch_error}
        self.merge_artifacts(inputs, exclude=["branch", "predictions", "branch_results", "branch_error"])
        _maybe_fail(self)
        self.next(self.report)

    # ------------------------------------------------------------------------------------ report
    @card(type="blank", id="report")
    @resources(**step_resources("report"))
    @step
    def report(self):
        """Results against the base model (and baseline runs named in ``config.report.baselines``)."""
        from _cards import results_components

        from steps.report import build_summary, comparison_table, sample_images, truncation_notes

        rc = self.run_config
        baselines = _baseline_results(rc.report.baselines)
        self.eval_comparison = comparison_table(self.eval_results, baselines)
        self.summary = build_summary(
            self.config.to_dict(), self.data_manifest, self.audit_report, self.train_metrics, self.eval_results,
            self.eval_comparison,
            train_info={"final_step": self.final_step, "resumed_from_step": self.resumed_from_step},
            train_config=self.train_config, item_scores=self.eval_item_scores,
        )
        max_new = rc.eval.generation.max_new_tokens if rc.eval.generation is not None else None
        notes = truncation_notes(self.eval_results, max_new, self.train_metrics, rc.train.max_response_length)
        for c in results_components(self.summary, self.eval_comparison, self.eval_results, self.train_metrics,
                                    samples=self.eval_samples, images=sample_images(self.eval_samples, self.benchmarks),
                                    notes=notes, config=self.config.to_dict()):
            current.card["report"].append(c)
        _maybe_fail(self)
        self.next(self.end)

    @step
    def end(self):
        """Done: print where to look."""
        from steps.report import end_of_run_lines

        for line in end_of_run_lines(f"{current.flow_name}/{current.run_id}", self.summary):
            print(line)
        _maybe_fail(self)


    # ------------------------------------------------------------------------- training results
    def _store_training(self, out, restored) -> None:
        """The training artifacts (:data:`TRAINING_ARTIFACTS`) from a ``steps.train.TrainOutput`` and the
        ``_checkpoints.Restored`` it continued from; the final weights through ``@model``."""
        if int(out.resumed_from_step) != restored.step:  # the artifacts must never tell two stories
            raise RuntimeError(f"training continued from step {out.resumed_from_step}, but the checkpoint "
                               f"restored was {restored.source or 'none'} (step {restored.step})")
        self.train_metrics = out.metrics
        self.resumed_from_step = int(out.resumed_from_step)
        self.resumed_from = restored.source
        self.final_step = int(out.final_step)
        self.train_world_size = int(out.world_size)
        self.policy = current.model.save(
            str(out.model_dir), label="policy",
            metadata={"policy": self.run_config.train.policy, "step": self.final_step, "config": self.run_config.name},
        )

    def _total_steps(self) -> int:
        """How many steps this run trains (``train.epochs`` turned into steps as the trainer does)."""
        import math

        tc = self.run_config.train
        return math.ceil(tc.epochs * len(self.train_items) / tc.prompts_per_step) if tc.epochs else tc.max_steps

    @contextmanager
    def _tracking(self, logdir: Path, enabled: bool = True):
        """The trackers of ``config.tracking`` while training runs (``ptdpo.tracking``), TensorBoard writing
        under ``logdir`` (inside the training folder, removed with it); afterwards the event files are stored
        with the run as ``tensorboard_logs`` (``ptdpo.tracking.export_tensorboard`` writes them out for
        ``tensorboard --logdir``)."""
        from ptdpo.tracking import Tracker, open_tracker, tensorboard_files

        tracker = Tracker([])
        if enabled:
            tracker = open_tracker(self.run_config.tracking, f"{current.flow_name}-{current.run_id}",
                                   str(logdir), params=self.train_config)
        try:
            yield tracker
        finally:
            tracker.close()
            self.tensorboard_logs = tensorboard_files(tracker.tensorboard_dir)

    def _restart_requested(self) -> bool:
        """The user's explicit choice to start over when no checkpoint is usable: the Parameter (set when
        the run started), or the tag ``restart_training`` on this run (``resume --tag restart_training``)."""
        if self.restart_training:
            return True
        from metaflow import Run

        try:
            tags = Run(f"{current.flow_name}/{current.run_id}", _namespace_check=False).user_tags
        except Exception:  # noqa: BLE001 - no metadata for the run yet: no tags either
            tags = set()
        return "restart_training" in tags

    def _train_faults(self):
        """(fail_after_step, after_checkpoint hook) for train: ``fail_after_step``, or a ``fault`` entry
        ``train:raise@N`` / ``train:kill@N`` of this run (TESTING ONLY)."""
        from _faults import fault_here

        fail_after = self.fail_after_step if self.fail_after_step >= 0 else None
        fault = fault_here(self.fault, current)
        if fault is None or fault.at is None:
            return fail_after, None
        if fault.at == 0:
            fault.fire("after the restore, before any training step")
        if fault.kind == "raise":
            return fault.at, None

        def after_checkpoint(step: int) -> None:
            if step == fault.at:
                fault.fire(f"after checkpoint {step} was saved")

        return fail_after, after_checkpoint

    def _training_info(self) -> dict:
        rc = self.run_config
        return {"config": rc.name, "policy": rc.train.policy, "final step": self.final_step,
                "resumed from step": self.resumed_from_step, "resumed from": self.resumed_from or "scratch",
                "nodes": rc.train_nodes, "processes": self.train_world_size}


TRAINING_ARTIFACTS = ("train_metrics", "policy", "final_step", "resumed_from_step", "resumed_from",
                      "resume_chain", "train_world_size", "tensorboard_logs")


# ---------------------------------------------------------------------------------------- helpers
def _maybe_fail(flow) -> None:
    """TESTING ONLY: the ``fault`` Parameter's entry for this run and step, if any (flows/_faults.py)."""
    if flow.fault:
        from _faults import maybe_fail

        maybe_fail(flow.fault, current, getattr(flow, "index", None))


def _versions() -> dict[str, str]:
    import platform
    import subprocess
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("ptdpo", "metaflow", "metaflow-checkpoint", "torch", "transformers", "vllm"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    root = Path(__file__).resolve().parents[1]
    if (root / ".git").exists():
        try:
            sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                                 text=True, timeout=10).stdout.strip()
            dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            out["git"] = sha + ("-dirty" if dirty else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def _baseline_results(refs: dict) -> dict:
    """``{"grpo": "PTDPOFlow/123"}`` -> ``{"grpo": eval_results of that run}``."""
    from metaflow import Run, namespace

    out = {}
    if refs:
        namespace(None)
    for label, pathspec in refs.items():
        out[label] = Run(pathspec).data.eval_results
    return out


if __name__ == "__main__":
    PTDPOFlow()
