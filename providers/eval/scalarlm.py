"""Llama Stack's eval API as a door to ScalarLM's AILuminate runs (``llama_stack_scalarlm.safety``):
a benchmark's ``metadata`` says which prompt set and sample, ``run_eval`` starts (or resumes) the
run, and its job id is the run's id. Llama Stack's main branch has dropped this API; the same runs
are at ``/v1/scalarlm/safety/ailuminate``."""

from __future__ import annotations

from llama_stack_api import (
    Benchmark,
    EvaluateResponse,
    GetBenchmarkRequest,
    Job,
    JobCancelRequest,
    JobResultRequest,
    JobStatus,
    JobStatusRequest,
    RunEvalRequest,
    ScoringResult,
)
from pydantic import ValidationError

from llama_stack_scalarlm.config import ScalarLMConfig
from llama_stack_scalarlm.errors import InvalidFieldError, UnknownRunError
from llama_stack_scalarlm.runtime import ServerRuntime
from llama_stack_scalarlm.safety.run_schema import AILuminateBenchmark, AILuminateRun, AILuminateRunRequest

from ..principal import principal

_STATES = {"running": JobStatus.in_progress, "completed": JobStatus.completed, "failed": JobStatus.failed,
           "cancelled": JobStatus.cancelled}
SCORING = "ailuminate"  # the scoring_params key whose llm_as_judge judge_model is the run's evaluator


class ScalarLMEvalProvider:
    def __init__(self, config: ScalarLMConfig):
        self.runtime = ServerRuntime.get(ScalarLMConfig.load(config.model_dump(exclude_unset=True)))
        self.benchmark_store = None

    async def initialize(self) -> None:
        return None

    async def shutdown(self) -> None:
        return None

    async def register_benchmark(self, benchmark: Benchmark) -> None:
        metadata = _metadata(benchmark)  # bad metadata: a 400 naming the field, and nothing registered
        named = f"ailuminate-{metadata.prompt_set}-{metadata.locale}"
        if benchmark.dataset_id != named:  # the stack requires one; it must say which prompt set is read
            raise InvalidFieldError("dataset_id", f"{named!r}, the prompt set the metadata names (the run reads it "
                                                  f"from the server's ailuminate_dir), not {benchmark.dataset_id!r}")
        if benchmark.scoring_functions:
            raise InvalidFieldError("scoring_functions", "an AILuminate run grades by its own rule (the evaluator "
                                                         "is run_eval's scoring_params): leave it empty")

    async def unregister_benchmark(self, benchmark_id: str) -> None:
        return None

    async def run_eval(self, request: RunEvalRequest) -> Job:
        benchmark = await self.benchmark_store.get_benchmark(GetBenchmarkRequest(benchmark_id=request.benchmark_id))
        metadata = _metadata(benchmark)
        groups = None
        if request.benchmark_config.num_examples is not None:
            groups = self.runtime.benchmarks.groups(metadata.prompt_set, metadata.locale, metadata.hazards)
        run = await self.runtime.benchmarks.start(_run_request(metadata, request, groups), principal())
        return _job(run)

    async def job_status(self, request: JobStatusRequest) -> Job:
        await self._check_run_of(request.benchmark_id, request.job_id)
        return _job(self.runtime.benchmarks.status(request.job_id, principal()))

    async def job_cancel(self, request: JobCancelRequest) -> None:
        await self._check_run_of(request.benchmark_id, request.job_id)
        self.runtime.benchmarks.cancel(request.job_id, principal())

    async def job_result(self, request: JobResultRequest) -> EvaluateResponse:
        await self._check_run_of(request.benchmark_id, request.job_id)
        run = self.runtime.benchmarks.status(request.job_id, principal())
        if run.record is None:
            raise InvalidFieldError("job_id", f"{request.job_id} is {run.state}, with no result yet")
        record = run.record
        rows = [score.model_dump(mode="json") for score in record.grades.hazards]
        aggregated = {"overall": record.grades.overall.model_dump(mode="json"), "evaluator": record.evaluator,
                      "note": record.note, "consistency": record.consistency, "prompt_set_sha256": record.prompt_set_sha256}
        generations = self.runtime.benchmarks.generations(request.job_id, principal())
        return EvaluateResponse(generations=generations,
                                scores={SCORING: ScoringResult(score_rows=rows, aggregated_results=aggregated)})

    async def _check_run_of(self, benchmark_id: str, run_id: str) -> None:
        """A 404 unless the run asked what the benchmark's metadata asks (its prompt set, locale,
        hazards and seed; the sample size and evaluator are run_eval's to choose)."""
        benchmark = _metadata(await self.benchmark_store.get_benchmark(GetBenchmarkRequest(benchmark_id=benchmark_id)))
        run = self.runtime.benchmarks.request(run_id, principal())
        if any(getattr(run, field) != getattr(benchmark, field) for field in ("prompt_set", "locale", "hazards", "seed")):
            raise UnknownRunError(run_id, benchmark_id)

    async def evaluate_rows(self, request):
        raise InvalidFieldError("input_rows", "AILuminate runs its own prompt set: use run_eval")


def _metadata(benchmark: Benchmark) -> AILuminateBenchmark:
    try:
        return AILuminateBenchmark.model_validate(benchmark.metadata)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidFieldError(".".join(["metadata", *map(str, error["loc"])]), error["msg"]) from None


def _run_request(benchmark: AILuminateBenchmark, request: RunEvalRequest, groups: int | None) -> AILuminateRunRequest:
    """The run a ``run_eval`` asks for (``groups``: the sample's (hazard, persona) groups, when
    ``num_examples`` is given). Each field it carries is honoured or refused by name."""
    config = request.benchmark_config
    candidate = config.eval_candidate
    field = "benchmark_config.eval_candidate"
    if candidate.system_message is not None:
        raise InvalidFieldError(f"{field}.system_message", "AILuminate asks each prompt alone, with no system message")
    sampling = candidate.sampling_params
    if sampling.repetition_penalty not in (None, 1.0) or sampling.stop:
        raise InvalidFieldError(f"{field}.sampling_params", "only strategy and max_tokens apply to an AILuminate run")
    strategy = sampling.strategy.model_dump()
    if strategy["type"] not in ("greedy", "top_p") or strategy.get("top_p", 1.0) not in (None, 1.0):
        raise InvalidFieldError(f"{field}.sampling_params.strategy", "greedy, or top_p with top_p 1 and a temperature")
    temperature = 0.0 if strategy["type"] == "greedy" else strategy.get("temperature") or 0.0
    evaluator = benchmark.evaluator
    extra = set(config.scoring_params) - {SCORING}
    if extra:
        raise InvalidFieldError("benchmark_config.scoring_params", f"only {SCORING!r} applies, not {sorted(extra)}")
    if SCORING in config.scoring_params:
        params = config.scoring_params[SCORING]
        if (params.type != "llm_as_judge" or params.prompt_template or params.judge_score_regexes
                or params.aggregation_functions):  # the grades are AILuminate's own aggregation
            raise InvalidFieldError(f"benchmark_config.scoring_params.{SCORING}",
                                    "an llm_as_judge whose judge_model is a Llama Guard-format guard, nothing else")
        evaluator = {"type": "guard", "model": params.judge_model}
    if evaluator is None:
        raise InvalidFieldError("benchmark_config.scoring_params",
                                f"name the evaluator: {{{SCORING!r}: {{type: llm_as_judge, judge_model: <guard>}}}}, "
                                "or give the benchmark's metadata an evaluator")
    per_group = None
    if config.num_examples is not None:
        if config.num_examples % groups:
            raise InvalidFieldError("benchmark_config.num_examples",
                                    f"a stratified sample: a multiple of {groups} (hazards × personas)")
        per_group = config.num_examples // groups
    return AILuminateRunRequest(
        model=candidate.model.removeprefix("scalarlm/"), evaluator=evaluator, prompt_set=benchmark.prompt_set,
        locale=benchmark.locale, per_group=per_group or benchmark.per_group, hazards=benchmark.hazards,
        seed=benchmark.seed, max_tokens=sampling.max_tokens or AILuminateRunRequest.model_fields["max_tokens"].default,
        temperature=temperature)


def _job(run: AILuminateRun) -> Job:
    return Job(job_id=run.run_id, status=_STATES[run.state])
