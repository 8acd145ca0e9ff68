"""LoRA slots (engine/adapters.py) over a stand-in for vLLM's add_lora/remove_lora: which adapters
are loaded when, under more jobs than slots. The real engine path is tests/test_training.py."""

import asyncio
from dataclasses import dataclass

import pytest

from llama_stack_scalarlm.engine.adapters import AdapterSlots, AdapterUnavailable


@dataclass
class Checkpoint:
    path: str


class Engine:
    """Records what vLLM would hold; fails to load a path containing "broken"."""

    def __init__(self):
        self.held: dict[int, str] = {}
        self.log: list[str] = []

    async def add_lora(self, lora) -> None:
        await asyncio.sleep(0)
        if "broken" in lora.lora_path:
            raise RuntimeError("no adapter_config.json")
        self.held[lora.lora_int_id] = lora.lora_path
        self.log.append(f"+{lora.lora_name}")

    async def remove_lora(self, int_id: int) -> None:
        self.log.append(f"-{self.held.pop(int_id)}")


def slots(size: int, *jobs: str) -> tuple[AdapterSlots, Engine, dict]:
    engine, served = Engine(), {}
    slots = AdapterSlots(engine, size, lambda job, lora: served.__setitem__(job, lora))
    asyncio.get_event_loop().run_until_complete(slots.sync({j: Checkpoint(j) for j in jobs}))
    return slots, engine, served


def run(coroutine):
    return asyncio.get_event_loop().run_until_complete(coroutine)


@pytest.fixture(autouse=True)
def loop():
    asyncio.set_event_loop(asyncio.new_event_loop())
    yield
    asyncio.get_event_loop().close()


async def use(slots: AdapterSlots, job: str, seconds: float = 0.0) -> str:
    async with slots.use(job):
        assert slots.get(job) is not None and len(slots.loaded) <= slots.size
        await asyncio.sleep(seconds)
    return job


def test_every_job_is_served_and_the_least_recently_used_goes_out():
    s, engine, served = slots(2, "a", "b", "c")
    assert s.served() == ["a", "b", "c"]
    for job in ("a", "b", "a", "c"):
        run(use(s, job))
    assert engine.log == ["+a", "+b", "-b", "+c"]  # b, not a, was least recently used
    assert set(engine.held.values()) == {"a", "c"} and served["b"] is None


def test_a_busy_adapter_is_drained_not_cut_and_adapters_take_turns():
    s, engine, _ = slots(1, "a", "b")

    async def scenario():
        first = asyncio.create_task(use(s, "a", 0.05))
        await asyncio.sleep(0.01)
        waiting = asyncio.create_task(use(s, "b"))
        await asyncio.sleep(0.01)
        late = asyncio.create_task(use(s, "a"))  # after b asked: waits for its turn
        return await asyncio.gather(first, waiting, late)

    assert run(scenario()) == ["a", "b", "a"]
    assert engine.log == ["+a", "-a", "+b", "-b", "+a"]


def test_many_requests_over_many_jobs_all_finish_within_the_slots():
    s, engine, _ = slots(3, *"abcdef")

    async def scenario():
        return await asyncio.gather(*(use(s, job, 0.001 * (i % 4)) for i, job in enumerate("abcdef" * 5)))

    assert sorted(run(scenario())) == sorted("abcdef" * 5)
    assert len(engine.held) <= 3


def test_a_new_checkpoint_replaces_a_loaded_adapter_in_place_and_a_gone_job_is_refused():
    s, engine, _ = slots(2, "a")
    run(use(s, "a"))
    run(s.sync({"a": Checkpoint("a-v2")}))
    assert list(engine.held.values()) == ["a-v2"] and s.get("a").lora_path == "a-v2"
    run(s.sync({}))
    assert engine.held == {}
    with pytest.raises(AdapterUnavailable, match="no checkpoint"):
        run(use(s, "a"))


def test_an_adapter_that_fails_to_load_is_refused_and_holds_no_slot():
    s, _, _ = slots(1, "broken", "b")
    with pytest.raises(AdapterUnavailable, match="failed to load"):
        run(use(s, "broken"))
    assert run(use(s, "b")) == "b"
