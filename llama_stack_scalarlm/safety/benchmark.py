"""The AILuminate benchmark on any served model: sample the prompt set, generate every response
through the queue (bulk priority, all at once, so the engine stays full), have the evaluator judge
each response, and grade per hazard and overall.

A run is a folder under ``<state_dir>/safety/runs/<run id>``, the id hashing what determines its
result (the request and the prompt set's sha256) and whose run it is (each user's runs are their
own: their responses are that user's to read), so asking again resumes it: the journal
(``journal.jsonl``) records every response and verdict as it arrives, and a resumed run asks
neither again. The journal holds responses and prompt ids, never a prompt's text. A server that
starts resumes by itself every run a stopped server left unfinished, unless it was cancelled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from collections import Counter
from pathlib import Path
from ..errors import InvalidFieldError, UnknownRunError
from ..queue.schema import GenerationRequest
from ..queue.store import BULK
from ..runtime import ServerRuntime
from .grading import check_consistency, load_reference, score
from .guard import GuardVerdict, Turn
from .hazards import HAZARDS
from .judge import GuardFailure, judge, plain_judge
from .prompt_set import Prompt, PromptSetError, load_prompt_set, official_file_name, sample
from .run_schema import (
    AILuminateRecord,
    AILuminateRun,
    AILuminateRunRequest,
    Evaluator,
    GuardEvaluator,
    HazardCounts,
    Progress,
    VoteEvaluator,
)
from .vote import vote

REFERENCE_FILE = "reference-standard-v1.1.json"  # the demo and practice sets' standard, beside the prompt sets
_RUN_ID = re.compile(r"ailum-[0-9a-f]{24}")
CANCELLED = "cancelled"  # a marker in a run's folder: a restarted server leaves the run alone
GATE_OWNER = "scalarlm-safety-gate"  # the principal of the safety gate's runs, which grade shared jobs: every user reads them
log = logging.getLogger("scalarlm.safety")


class BenchmarkRuns:
    """Every run of this server: started, resumed, and looked up by id (the caller's own only)."""

    def __init__(self, runtime: ServerRuntime, root: Path, prompt_sets: Path):
        self.runtime, self.root, self.prompt_sets = runtime, root, prompt_sets
        self._tasks: dict[str, asyncio.Task] = {}
        self._progress: dict[str, Progress] = {}
        self._errors: dict[str, str] = {}

    async def start(self, request: AILuminateRunRequest, owner: str) -> AILuminateRun:
        """Starts the run, or resumes it, or returns it when it is running or finished."""
        return self.status(self._launch(request, owner), owner)

    def resume_interrupted(self) -> None:
        """Continue, on the running event loop, each run that a stopped server left unfinished and
        nobody cancelled. One that cannot go on (its prompt set or model gone) reports why."""
        for stored in sorted(self.root.glob("ailum-*/request.json")):
            folder = stored.parent
            if (folder / "record.json").exists() or (folder / CANCELLED).exists() or self._running(folder.name):
                continue
            try:
                saved = json.loads(stored.read_text())
                self._launch(AILuminateRunRequest.model_validate(saved["request"]), saved["owner"], folder.name)
                log.info("resumed AILuminate run %s", folder.name)
            except Exception as exc:  # noqa: BLE001 (the run's status says why; the others go on)
                self._errors[folder.name] = f"not resumed: {exc}"
                log.warning("AILuminate run %s not resumed: %s", folder.name, exc)

    def _launch(self, request: AILuminateRunRequest, owner: str, resuming: str | None = None) -> str:
        """The run's id, its task started unless it is running or finished."""
        path = self._prompt_set_path(request)
        prompt_set = _load(path, request.locale)
        items = _sample(prompt_set, request)
        for field, model in [("model", request.model), *_models(request.evaluator)]:  # a 404 now, not a failed run
            self.runtime.catalogue.resolve(model, field=field)
        request = _pinned(request, self.runtime.catalogue.aliases())
        run_id = "ailum-" + hashlib.sha256(json.dumps(
            [request.model_dump(mode="json"), prompt_set.sha256, owner]).encode()).hexdigest()[:24]
        if resuming is not None and run_id != resuming:
            raise InvalidFieldError("prompt_set", "the prompt set changed since the run started")
        folder = self.root / run_id
        if not (folder / "record.json").exists() and not self._running(run_id):
            self._errors.pop(run_id, None)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / CANCELLED).unlink(missing_ok=True)
            (folder / "request.json").write_text(json.dumps({"owner": owner, "request": request.model_dump(mode="json")}))
            self._tasks[run_id] = asyncio.create_task(
                self._run(run_id, folder, request, prompt_set.sha256, items, owner, path.parent))
        return run_id

    def _running(self, run_id: str) -> bool:
        """A task of this event loop, not done: the stack first lists models on a loop of its own,
        which it then drops, and a run started there must start again on the server's loop."""
        task = self._tasks.get(run_id)
        return task is not None and not task.done() and task.get_loop() is asyncio.get_running_loop()

    def groups(self, prompt_set: str, locale: str, hazards: list[str]) -> int:
        """How many (hazard, persona) groups a stratified sample of this prompt set has."""
        probe = AILuminateRunRequest(model="-", evaluator=GuardEvaluator(model="-"), prompt_set=prompt_set,
                                     locale=locale, hazards=hazards, per_group=1)
        return len(_sample(_load(self._prompt_set_path(probe), locale), probe))

    def cancel(self, run_id: str, owner: str) -> None:
        """Stops the run; what it journaled stays, so starting it again resumes it."""
        folder = self._folder(run_id, owner)
        (folder / CANCELLED).touch()
        if (task := self._tasks.get(run_id)) is not None:
            task.cancel()

    def request(self, run_id: str, owner: str) -> AILuminateRunRequest:
        """What the run was asked to do (a 404 unless it is ``owner``'s or the safety gate's)."""
        saved = json.loads((self._folder(run_id, owner, readable=True) / "request.json").read_text())
        return AILuminateRunRequest.model_validate(saved["request"])

    def generations(self, run_id: str, owner: str) -> list[dict]:
        """Each item's steps as the journal has them: prompt id, hazard, response, verdict(s); no prompt text."""
        journal = Journal(self._folder(run_id, owner, readable=True) / "journal.jsonl")
        rows = []
        for pid, response in journal.responses.items():
            verdict = journal.verdicts.get(pid, {})
            rows.append({"prompt_id": pid, "hazard": response.get("hazard"), "response": response["response"],
                         "response_error": response["error"], "safe": verdict.get("safe"),
                         "hazards": verdict.get("hazards", []), "annotation_error": verdict.get("error"),
                         "votes": verdict.get("votes", {})})
        journal.close()
        return rows

    def _folder(self, run_id: str, owner: str, readable: bool = False) -> Path:
        """The run's folder if it is ``owner``'s (or, ``readable``, the safety gate's), else a 404."""
        folder = self.root / run_id
        allowed = {owner, GATE_OWNER} if readable else {owner}
        try:
            if not _RUN_ID.fullmatch(run_id) or json.loads((folder / "request.json").read_text())["owner"] not in allowed:
                raise FileNotFoundError
        except (FileNotFoundError, ValueError):
            raise UnknownRunError(run_id) from None
        return folder

    def status(self, run_id: str, owner: str) -> AILuminateRun:
        folder = self._folder(run_id, owner, readable=True)
        if (folder / "record.json").exists():
            record = AILuminateRecord.model_validate_json((folder / "record.json").read_text())
            done = Progress(items=record.items, responses=record.items, annotations=record.items)
            return AILuminateRun(run_id=run_id, state="failed" if record.consistency else "completed",
                                 progress=done, record=record,
                                 error="; ".join(record.consistency) or None)
        progress = self._progress.get(run_id, Progress(items=0, responses=0, annotations=0))
        if (folder / CANCELLED).exists():
            return AILuminateRun(run_id=run_id, state="cancelled", progress=progress,
                                 error="cancelled: start the same run again to resume it")
        if run_id in self._errors:
            return AILuminateRun(run_id=run_id, state="failed", progress=progress, error=self._errors[run_id])
        if not self._running(run_id):  # started by a server that has since stopped: ask again to resume
            return AILuminateRun(run_id=run_id, state="failed", progress=progress,
                                 error="interrupted: start the same run again to resume it")
        return AILuminateRun(run_id=run_id, state="running", progress=progress)

    def _prompt_set_path(self, request: AILuminateRunRequest) -> Path:
        try:
            name = official_file_name(request.prompt_set, request.locale)
        except PromptSetError as exc:
            raise InvalidFieldError("locale", str(exc)) from None
        path = self.prompt_sets / name
        if not path.is_file():
            raise InvalidFieldError("prompt_set", f"{name} is not in the server's prompt-set folder "
                                                  "(ailuminate_dir in the config)")
        return path

    async def _run(self, run_id: str, folder: Path, request: AILuminateRunRequest, sha256: str,
                   items: list[Prompt], owner: str, data: Path) -> None:
        started = time.time()
        journal = Journal(folder / "journal.jsonl")
        progress = self._progress[run_id] = Progress(items=len(items), responses=len(journal.responses),
                                                     annotations=len(journal.verdicts))
        model = self.runtime.catalogue.resolve(request.model)

        async def one(prompt: Prompt) -> None:
            if prompt.id not in journal.responses:
                journal.respond(prompt, await self._respond(model, prompt, request, owner, journal))
                progress.responses += 1
            if prompt.id not in journal.verdicts:
                response = journal.responses[prompt.id]
                if response["error"] is not None:  # nothing to judge: an error, never a verdict
                    verdict, votes = GuardFailure(error=f"no response: {response['error']}"), {}
                else:
                    verdict, votes = await self._evaluate(request.evaluator, prompt, response["response"], owner)
                journal.annotate(prompt.id, request.evaluator.name, verdict, votes)
                progress.annotations += 1

        try:
            await asyncio.gather(*(one(prompt) for prompt in items))
            record = _record(run_id, request, sha256, items, journal, load_reference(data / REFERENCE_FILE),
                             started)
            (folder / "record.json.tmp").write_text(record.model_dump_json(indent=1))
            (folder / "record.json.tmp").replace(folder / "record.json")
        except Exception as exc:  # noqa: BLE001 (reported by status; starting the run again resumes it)
            self._errors[run_id] = f"{type(exc).__name__}: {exc}"
        finally:
            journal.close()
            if self._tasks.get(run_id) is asyncio.current_task():
                self._tasks.pop(run_id)

    async def _respond(self, model: str, prompt: Prompt, request: AILuminateRunRequest, owner: str,
                       journal: Journal) -> dict:
        """The response to ``prompt``: from the request journaled as submitted, when the queue still
        has it (a resumed run), else from a new one."""
        timeout_s = self.runtime.config.limits.request_timeout_s
        request_id = journal.submitted.get(prompt.id)
        if request_id is None:
            ask = GenerationRequest(kind="chat", model=model, messages=[{"role": "user", "content": prompt.text}],
                                    max_tokens=request.max_tokens, temperature=request.temperature, seed=request.seed)
            request_id = self.runtime.submit([ask], owner, BULK)[0]
            journal.submit(prompt.id, request_id)
        try:
            result = await self.runtime.queue.wait(request_id, owner, timeout_s)
        except KeyError:  # gone from the queue (expired, or never stored): ask anew
            journal.submitted.pop(prompt.id)
            return await self._respond(model, prompt, request, owner, journal)
        except TimeoutError as exc:
            return {"response": None, "error": f"TimeoutError: {exc}"}
        if result.error is not None:
            return {"response": None, "error": result.error.message}
        return {"response": result.choices[0].text, "error": None}

    async def _evaluate(self, evaluator: Evaluator, prompt: Prompt, reply: str, owner: str):
        """(the verdict, each member's verdict by name when it is a vote)."""
        if isinstance(evaluator, VoteEvaluator):
            votes = {member.name: (await self._evaluate(member, prompt, reply, owner))[0]
                     for member in evaluator.evaluators}
            return vote(list(votes.values())), votes
        model = self.runtime.catalogue.resolve(evaluator.model)
        if isinstance(evaluator, GuardEvaluator):
            conversation = [Turn(role="user", content=prompt.text), Turn(role="assistant", content=reply)]
            return (await judge(self.runtime, owner, model, [conversation], list(HAZARDS), BULK))[0], {}
        return (await plain_judge(self.runtime, owner, model, [(prompt.text, reply)], BULK))[0], {}


class Journal:
    """Append-only steps of a run, one JSON line each, read back whole on resume; a torn last line
    (a crash mid-write) is dropped, so that step is simply done again. Steps: ``submitted`` (the
    queue's request id), ``response``, ``annotation`` (with each vote of a vote)."""

    def __init__(self, path: Path):
        self.path = path
        self.submitted: dict[str, str] = {}
        self.responses: dict[str, dict] = {}
        self.verdicts: dict[str, dict] = {}
        self.steps: Counter = Counter()
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    step = json.loads(line)
                except ValueError:
                    continue
                self._apply(step)
        self._file = open(path, "a")

    def submit(self, prompt_id: str, request_id: str) -> None:
        self._write({"step": "submitted", "id": prompt_id, "request_id": request_id})

    def respond(self, prompt: Prompt, response: dict) -> None:
        self._write({"step": "response", "id": prompt.id, "hazard": prompt.hazard, **response})

    def annotate(self, prompt_id: str, evaluator: str, verdict: GuardVerdict | GuardFailure,
                 votes: dict[str, GuardVerdict | GuardFailure]) -> None:
        self._write({"step": "annotation", "id": prompt_id, "evaluator": evaluator, **_verdict(verdict),
                     "votes": {name: _verdict(v) for name, v in votes.items()}})

    def close(self) -> None:
        self._file.close()

    def _write(self, step: dict) -> None:
        self._file.write(json.dumps(step) + "\n")
        self._file.flush()
        self._apply(step)

    def _apply(self, step: dict) -> None:
        self.steps[(step["step"], step["id"])] += 1
        if step["step"] == "submitted":
            self.submitted[step["id"]] = step["request_id"]
        else:
            (self.responses if step["step"] == "response" else self.verdicts)[step["id"]] = step


def _verdict(verdict: GuardVerdict | GuardFailure) -> dict:
    if isinstance(verdict, GuardFailure):
        return {"safe": None, "error": verdict.error}
    return {"safe": verdict.safe, "hazards": verdict.hazards, "unsafe_probability": verdict.unsafe_probability}


def _pinned(request: AILuminateRunRequest, aliases: dict[str, str]) -> AILuminateRunRequest:
    """The request with ``latest`` and ``guard`` replaced by the jobs they name now: a run grades
    those weights, so the same request after a new job trained is another run, not a resume."""
    def pin(model: str) -> str:
        return aliases.get(model.removeprefix("scalarlm/"), model)

    def evaluator(member: Evaluator) -> Evaluator:
        if isinstance(member, VoteEvaluator):
            return member.model_copy(update={"evaluators": [evaluator(m) for m in member.evaluators]})
        return member.model_copy(update={"model": pin(member.model)})

    return request.model_copy(update={"model": pin(request.model), "evaluator": evaluator(request.evaluator)})


def _models(evaluator: Evaluator, field: str = "evaluator") -> list[tuple[str, str]]:
    """(the request's field, the model) of each model the evaluator asks."""
    if isinstance(evaluator, VoteEvaluator):
        return [pair for i, member in enumerate(evaluator.evaluators)
                for pair in _models(member, f"{field}.evaluators.{i}")]
    return [(f"{field}.model", evaluator.model)]


def _record(run_id: str, request: AILuminateRunRequest, sha256: str, items: list[Prompt], journal: Journal,
            reference: dict[str, float], started: float) -> AILuminateRecord:
    counts = {hazard: HazardCounts() for hazard in request.hazards}
    verdicts = []
    for prompt in items:
        response, verdict = journal.responses[prompt.id], journal.verdicts[prompt.id]
        tally = counts[prompt.hazard]
        tally.responses += 1
        tally.response_errors += response["error"] is not None
        tally.empty_responses += response["error"] is None and not (response["response"] or "").strip()
        tally.annotation_errors += verdict["safe"] is None
        verdicts.append((prompt.hazard, verdict["safe"]))
    ids = [prompt.id for prompt in items]
    evaluator = request.evaluator.name
    annotated = {pid: journal.steps[("annotation", pid)] for pid in ids}
    annotations, invalid = {evaluator: annotated}, {evaluator: sum(journal.verdicts[pid]["safe"] is None for pid in ids)}
    for member in request.evaluator.evaluators if isinstance(request.evaluator, VoteEvaluator) else ():
        annotations[member.name] = annotated  # each vote is journaled with the item's annotation
        invalid[member.name] = sum(journal.verdicts[pid]["votes"][member.name]["safe"] is None for pid in ids)
    consistency = check_consistency(ids, {pid: journal.steps[("response", pid)] for pid in ids}, annotations, invalid)
    return AILuminateRecord(
        run_id=run_id, model=request.model, evaluator=evaluator, prompt_set=request.prompt_set,
        prompt_set_sha256=sha256, locale=request.locale, per_group=request.per_group, seed=request.seed,
        items=len(items), grades=score(verdicts, {h: reference[h] for h in request.hazards}), counts=counts,
        consistency=consistency, finished=time.time(), seconds=time.time() - started)


def _load(path: Path, locale: str):
    try:
        return load_prompt_set(path, locale)
    except PromptSetError as exc:
        raise InvalidFieldError("prompt_set", str(exc)) from None


def _sample(prompt_set, request: AILuminateRunRequest) -> list[Prompt]:
    try:
        return sample(prompt_set, request.per_group, request.seed, hazards=request.hazards)
    except PromptSetError as exc:
        raise InvalidFieldError("per_group", str(exc)) from None
