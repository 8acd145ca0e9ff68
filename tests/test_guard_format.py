"""The guard's prompt and reply (Llama Guard 3's format), its probability of "unsafe", and which
turns a shield asks about: no server, no model."""

import math

import pytest

from llama_stack_scalarlm.errors import InvalidFieldError
from llama_stack_scalarlm.safety.guard import (
    GuardReplyError,
    GuardVerdict,
    Turn,
    guard_prompt,
    guard_reply,
    parse_reply,
    unsafe_probability,
)
from llama_stack_scalarlm.safety.guard_data import benign_prompts, is_refusal, response_judge_rows
from llama_stack_scalarlm.safety.hazards import HAZARDS, hazards_of
from llama_stack_scalarlm.safety.shields import conversations, parse_params

ALL = list(HAZARDS)


def test_the_prompt_shows_only_the_enforced_categories_and_names_the_turn_assessed():
    prompt = guard_prompt([Turn(role="user", content="hello"), Turn(role="assistant", content="hi there")],
                          ["vcr", "spc"])
    categories = prompt.split("<BEGIN UNSAFE CONTENT CATEGORIES>\n")[1].split("\n<END")[0].splitlines()
    assert categories == ["S1: Violent Crimes.", "S6: Specialized Advice.", "S13: Elections."]
    assert "User: hello\n\nAgent: hi there" in prompt
    assert "ONLY THE LAST Agent message" in prompt
    assert "ONLY THE LAST User message" in guard_prompt([Turn(role="user", content="x")], ALL)


@pytest.mark.parametrize("reply, expected", [
    ("safe", (True, [])),
    ("  Safe\n", (True, [])),
    ("unsafe\nS1", (False, ["vcr"])),
    ("unsafe\nS10, s2", (False, ["ncr", "hte"])),
    ("unsafe\nS13", (False, ["spc"])),  # Elections is a part of Specialized Advice
])
def test_verdicts_parse(reply, expected):
    assert parse_reply(reply, ALL) == expected


@pytest.mark.parametrize("reply", ["", "maybe", "safe\nS1", "unsafe", "unsafe\nS1\nS2", "unsafe\nS99", "unsafe\nS1,"])
def test_a_reply_that_is_not_a_verdict_is_the_guards_failure(reply):
    with pytest.raises(GuardReplyError):
        parse_reply(reply, ALL)


def test_a_code_outside_the_policy_shown_is_a_failure_not_a_verdict():
    with pytest.raises(GuardReplyError, match="S1"):
        parse_reply("unsafe\nS1", ["hte"])


def test_the_training_target_parses_back_to_its_verdict():
    for verdict in (GuardVerdict(safe=True), GuardVerdict(safe=False, hazards=["cse", "sxc"])):
        assert parse_reply(guard_reply(verdict), ALL) == (verdict.safe, verdict.hazards)


def _token(text, top):
    return {"token": text, "logprob": max(top.values()), "top_logprobs": [
        {"token": t, "logprob": lp} for t, lp in top.items()]}


def test_unsafe_probability_weighs_the_first_tokens_of_both_words():
    # "unsafe" split as "un"+"safe" by one tokenizer, whole by another; whitespace first is skipped.
    first = _token("un", {"un": math.log(0.6), "unsafe": math.log(0.1), "safe": math.log(0.2), "The": math.log(0.1)})
    assert unsafe_probability([{"token": "\n", "logprob": 0.0}, first]) == pytest.approx(0.7 / 0.9)
    assert unsafe_probability([_token("safe", {"safe": 0.0})]) == 0.0
    assert unsafe_probability([_token("Hello", {"Hello": 0.0})]) is None
    assert unsafe_probability(None) is None


def test_a_shield_asks_about_the_last_user_turn_the_last_reply_or_both():
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": "one"},
                {"role": "assistant", "content": [{"type": "text", "text": "two"}]},
                {"role": "user", "content": "three"}]
    user, = conversations(messages, "user")
    assert [t.content for t in user] == ["one", "two", "three"]
    reply, = conversations(messages, "assistant")
    assert [t.content for t in reply] == ["one", "two"]
    assert len(conversations(messages, "both")) == 2
    assert conversations(messages[:2], "assistant") == []
    with pytest.raises(InvalidFieldError, match="messages.1.content"):
        conversations([messages[0], {"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "user")


@pytest.mark.parametrize("params, field", [({"hazards": ["vcr", "nope"]}, "params.hazards"),
                                           ({"check": "tool"}, "params.check"), ({"guard": "m"}, "params.guard")])
def test_bad_shield_params_name_their_field(params, field):
    with pytest.raises(InvalidFieldError, match=field):
        parse_params(params)


def test_shield_params_default_to_every_hazard_and_both_turns():
    params = parse_params(None)
    assert params.hazards == ALL and params.check == "both"
    assert parse_params({"hazards": ["spc_fin", "vcr", "spc"]}).hazards == hazards_of(["vcr", "spc"]) == ["vcr", "spc"]


def test_benign_prompts_are_distinct_and_seeded():
    prompts = benign_prompts(200, seed=3)
    assert len(set(prompts)) == 200
    assert prompts == benign_prompts(200, seed=3) != benign_prompts(200, seed=4)


@pytest.mark.parametrize(("reply", "declines"), [
    ("I can't help with that, but a local helpline can.", True), ("I'm sorry, but I cannot assist.", True),
    ("Sorry, but that is not something I will do.", True), ("I must decline this request.", True),
    ("", True), ("Sure! First, gather the following.", False), ("Here are three steps you could take.", False),
    ("Step 1: find a quiet place. I can't stress enough how easy it is.", False)])
def test_the_reply_labeller_tells_declining_from_going_along(reply, declines):
    assert is_refusal(reply) is declines


def test_a_response_judge_learns_replies_by_what_they_say_not_how_they_were_asked_for():
    """A reply to a hazardous request: safe when it declines, unsafe with the request's hazard when
    it goes along, and then paired with a written refusal of the same request, labelled safe (so the
    request alone never predicts the label); a reply to a benign request: safe whatever it says. The
    guard is asked about the Agent's turn, shown the request it answers."""
    rows = response_judge_rows([("hazardous one", "vcr", "I cannot help with that."),
                                ("hazardous two", "cse", "Sure, here is how."),
                                ("an everyday request", None, "Sure, here is how.")], list(HAZARDS))
    judged = sorted((row["messages"][0]["content"].split("User: ")[1].split("\n")[0],
                     row["messages"][0]["content"].split("Agent: ")[1].split("\n")[0], row["messages"][1]["content"])
                    for row in rows)
    assert [(request, verdict) for request, _, verdict in judged] == [
        ("an everyday request", "safe"), ("hazardous one", "safe"), ("hazardous two", "safe"),
        ("hazardous two", "unsafe\nS4")]
    paired = judged[2][1]
    assert paired != "Sure, here is how." and is_refusal(paired)
    assert all("ONLY THE LAST Agent message" in row["messages"][0]["content"] for row in rows)


def test_every_written_refusal_is_one_the_labeller_reads_as_declining():
    import random

    from llama_stack_scalarlm.safety.guard_data import written_refusal

    rng = random.Random(0)
    assert all(is_refusal(written_refusal(rng)) for _ in range(200))


def test_votes_follow_the_ensemble_rules():
    from llama_stack_scalarlm.safety.judge import GuardFailure
    from llama_stack_scalarlm.safety.vote import vote

    safe, failure = GuardVerdict(safe=True), GuardFailure(error="out of format")
    unsafe = GuardVerdict(safe=False, hazards=["vcr"])
    assert vote([safe, safe, unsafe]).safe
    assert vote([safe, unsafe]) == GuardVerdict(safe=False, hazards=["vcr"])  # a tie is unsafe
    assert vote([safe, safe, failure]).safe  # the invalid vote is dropped
    assert isinstance(vote([safe, failure, failure]), GuardFailure)  # one valid vote: invalid
    assert not vote([unsafe, GuardVerdict(safe=False, hazards=["hte", "vcr"]), safe]).safe
    assert vote([unsafe, GuardVerdict(safe=False, hazards=["hte", "vcr"]), safe]).hazards == ["vcr", "hte"]
