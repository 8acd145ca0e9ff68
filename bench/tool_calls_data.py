"""Tool-use conversations the project generates, and the score of a model's tool calls on them.

A request names its tool's task in one of several phrasings; the model sees the right tool among
distractors and must call it with arguments valid against its schema, then answer from the
tool's result. A third of the requests fit no tool offered and must be answered without a call:
small talk, and near misses that name a tool's subject (a city, a word, a currency, minutes) but
ask for something else. Held out from training: two of the tools (new names and schemas), a
phrasing of every trained tool, the argument values (cities, words, amounts) the held-out
requests use, and a third of the requests no tool fits.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

import jsonschema


def _tool(name: str, description: str, properties: dict, required: list[str]) -> dict:
    return {"type": "function", "function": {"name": name, "description": description, "parameters": {
        "type": "object", "properties": properties, "required": required, "additionalProperties": False}}}


CURRENCIES = ["USD", "EUR", "GBP", "JPY", "CHF"]
LANGUAGES = ["French", "German", "Spanish", "Italian"]


@dataclass(frozen=True)
class Task:
    tool: dict
    phrasings: tuple[str, ...]  # the last one is held out
    values: tuple[dict, ...]  # argument values; the last third is held out
    result: Any  # arguments -> the tool's JSON result
    answer: Any  # (arguments, result) -> the final answer

    @property
    def name(self) -> str:
        return self.tool["function"]["name"]


CITIES = ("Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Denver", "Hanoi", "Perth", "Dakar", "Quito", "Riga", "Austin")
TASKS = [
    Task(_tool("get_weather", "Current weather in a city", {"city": {"type": "string"}}, ["city"]),
         ("What is the weather in {city}?", "Is it raining in {city} right now?", "How warm is it in {city} today?",
          "Tell me the current weather for {city}.", "weather {city}?"),
         tuple({"city": c} for c in CITIES),
         lambda a: {"city": a["city"], "forecast": "sunny", "temperature_c": 10 + len(a["city"])},
         lambda a, r: f"It is {r['forecast']} in {a['city']}, {r['temperature_c']} °C."),
    Task(_tool("convert_currency", "Convert an amount of money between currencies",
               {"amount": {"type": "number"}, "from_currency": {"type": "string", "enum": CURRENCIES},
                "to_currency": {"type": "string", "enum": CURRENCIES}}, ["amount", "from_currency", "to_currency"]),
         ("How much is {amount} {from_currency} in {to_currency}?", "Convert {amount} {from_currency} to {to_currency}.",
          "I have {amount} {from_currency}; what is that in {to_currency}?",
          "Please change {amount} {from_currency} into {to_currency}.", "{amount} {from_currency} to {to_currency}?"),
         tuple({"amount": m, "from_currency": f, "to_currency": t} for m, f, t in
               [(10, "USD", "EUR"), (250, "GBP", "JPY"), (40, "EUR", "CHF"), (75, "CHF", "USD"), (1200, "JPY", "GBP"),
                (60, "USD", "GBP"), (15, "EUR", "USD"), (300, "GBP", "EUR"), (90, "CHF", "JPY")]),
         lambda a: {"amount": round(a["amount"] * 0.9, 2), "currency": a["to_currency"]},
         lambda a, r: f"{a['amount']} {a['from_currency']} is about {r['amount']} {r['currency']}."),
    Task(_tool("set_timer", "Start a countdown timer", {"minutes": {"type": "integer", "minimum": 1, "maximum": 180}},
               ["minutes"]),
         ("Set a timer for {minutes} minutes.", "Remind me in {minutes} minutes.", "Start a {minutes} minute countdown.",
          "Can you time {minutes} minutes for me?", "timer {minutes} min"),
         tuple({"minutes": m} for m in (5, 12, 30, 45, 3, 90, 20, 8, 60)),
         lambda a: {"timer_id": f"t{a['minutes']}", "status": "running"},
         lambda a, r: f"Your {a['minutes']} minute timer is running."),
    Task(_tool("define_word", "The dictionary definition of an English word", {"word": {"type": "string"}}, ["word"]),
         ("What does the word {word} mean?", "Define {word}.", "Give me the meaning of '{word}'.",
          "Look up {word} in the dictionary.", "meaning of {word}?"),
         tuple({"word": w} for w in ("serene", "frugal", "candid", "verbose", "nimble", "arid", "lucid", "ample",
                                      "brisk")),
         lambda a: {"word": a["word"], "definition": f"the quality of being {a['word']}"},
         lambda a, r: f"'{a['word']}' means: {r['definition']}."),
    Task(_tool("get_population", "The population of a country", {"country": {"type": "string"}}, ["country"]),
         ("How many people live in {country}?", "What is the population of {country}?",
          "Population of {country}, please.", "How big is the population of {country}?", "{country} population?"),
         tuple({"country": c} for c in ("Peru", "Kenya", "Norway", "Chile", "Nepal", "Ghana", "Spain", "Japan",
                                         "Egypt")),
         lambda a: {"country": a["country"], "population": 1000000 * len(a["country"])},
         lambda a, r: f"About {r['population']:,} people live in {a['country']}."),
]
HELD_OUT_TASKS = [  # never trained on: new names, new schemas
    Task(_tool("get_stock_price", "The latest price of a stock by its ticker symbol",
               {"symbol": {"type": "string"}}, ["symbol"]),
         ("What is the stock price of {symbol}?", "How much does one {symbol} share cost?"),
         tuple({"symbol": s} for s in ("AAPL", "MSFT", "NVDA", "IBM", "ORCL", "INTC")),
         lambda a: {"symbol": a["symbol"], "price": 100.5}, lambda a, r: f"{a['symbol']} trades at {r['price']}."),
    Task(_tool("translate_text", "Translate a text into another language",
               {"text": {"type": "string"}, "language": {"type": "string", "enum": LANGUAGES}}, ["text", "language"]),
         ("Translate '{text}' into {language}.", "How do you say '{text}' in {language}?"),
         tuple({"text": t, "language": lang} for t, lang in
               [("good morning", "French"), ("thank you", "German"), ("where is the station", "Spanish"),
                ("see you soon", "Italian"), ("good night", "German"), ("how are you", "French")]),
         lambda a: {"translation": f"[{a['language']}] {a['text']}"}, lambda a, r: f"It is: {r['translation']}."),
]
NO_TOOL = [  # (request, answer): nothing offered fits
    ("Tell me a short joke.", "Why did the scarecrow win an award? He was outstanding in his field."),
    ("Write a haiku about the sea.", "Waves fold into foam,\nsalt wind carries gull voices,\nthe tide breathes and leaves."),
    ("What is 7 times 8?", "7 times 8 is 56."),
    ("Say hello to my friend Ana.", "Hello, Ana! Nice to meet you."),
    ("Give me a synonym for happy.", "A synonym for happy is joyful."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("What colour do you get by mixing blue and yellow?", "Mixing blue and yellow gives green."),
    ("Thank you, that is all.", "You're welcome! Have a nice day."),
    ("Spell the word cat backwards.", "Backwards, cat is tac."),
    ("What is the opposite of cold?", "The opposite of cold is hot."),
    ("Name three primary colours.", "Red, yellow and blue."),
    ("How many days are in a week?", "There are seven days in a week."),
]
CAPITALS = {"Peru": "Lima", "Kenya": "Nairobi", "Norway": "Oslo", "Chile": "Santiago", "Nepal": "Kathmandu",
            "Ghana": "Accra", "Spain": "Madrid", "Japan": "Tokyo", "Egypt": "Cairo"}
CURRENCY_NAMES = {"USD": "the United States dollar", "EUR": "the euro", "GBP": "the British pound",
                  "JPY": "the Japanese yen", "CHF": "the Swiss franc"}
NEAR_MISSES = [  # (request, answer) for each value: a tool's subject, not its task
    [(f"How do you spell {c}?", f"{c} is spelled {'-'.join(c.upper())}.") for c in CITIES],
    [(f"Write one line of poetry about {c}.", f"In {c} the evening light falls softly on the streets.")
     for c in CITIES],
    [(f"What is the capital of {country}?", f"The capital of {country} is {capital}.")
     for country, capital in CAPITALS.items()],
    [(f"How many letters are in the word {w}?", f"The word {w} has {len(w)} letters.")
     for w in ("serene", "frugal", "candid", "verbose", "nimble", "arid", "lucid", "ample", "brisk")],
    [(f"How many seconds are in {m} minutes?", f"{m} minutes are {60 * m} seconds.") for m in (5, 12, 30, 45, 3, 90)],
    [(f"What does the currency code {code} stand for?", f"{code} stands for {name}.")
     for code, name in CURRENCY_NAMES.items()],
]


@dataclass(frozen=True)
class Request:
    messages: list[dict]
    tools: list[dict]
    expected: str | None  # the tool to call, None for no call
    arguments: dict | None


def _split(items: tuple, held_out: bool, fraction: float = 1 / 3) -> tuple:
    cut = len(items) - max(1, round(len(items) * fraction))
    return items[cut:] if held_out else items[:cut]


def _offer(rng: random.Random, task: Task | None, pool: list[Task]) -> list[dict]:
    others = [t.tool for t in pool if t is not task]
    offered = rng.sample(others, k=rng.randint(1, min(3, len(others))))
    if task is not None:
        offered.insert(rng.randrange(len(offered) + 1), task.tool)
    return offered


def no_tool(held_out: bool) -> list[tuple[str, str]]:
    """(request, answer) pairs no tool fits: a third of the small talk and of each near miss's values
    held out."""
    return [pair for group in (NO_TOOL, *NEAR_MISSES) for pair in _split(tuple(group), held_out)]


def requests(n: int, held_out: bool, seed: int) -> list[Request]:
    """``n`` requests: a third with no fitting tool; held out, half the tool requests use the held-out tools."""
    rng = random.Random(seed)
    out = []
    no_tool_pairs = no_tool(held_out)
    pool = TASKS + HELD_OUT_TASKS if held_out else TASKS
    for i in range(n):
        if i % 3 == 2:
            text, _ = rng.choice(no_tool_pairs)
            out.append(Request([{"role": "user", "content": text}], _offer(rng, None, pool), None, None))
            continue
        if held_out and i % 2:
            task = rng.choice(HELD_OUT_TASKS)
            phrasing, values = rng.choice(task.phrasings), rng.choice(task.values)
        else:
            task = rng.choice(TASKS)
            phrasing = task.phrasings[-1] if held_out else rng.choice(task.phrasings[:-1])
            values = rng.choice(_split(task.values, held_out))
        out.append(Request([{"role": "user", "content": phrasing.format(**values)}], _offer(rng, task, pool),
                           task.name, values))
    return out


def training_rows(n: int, seed: int = 0) -> list[dict]:
    """Whole conversations: the call, the tool's result, the answer from it (or the plain answer)."""
    rows = []
    answers = dict(no_tool(held_out=False))
    tasks = {t.name: t for t in TASKS}
    for i, request in enumerate(requests(n, held_out=False, seed=seed)):
        if request.expected is None:
            messages = request.messages + [{"role": "assistant", "content": answers[request.messages[0]["content"]]}]
        else:
            task, call_id = tasks[request.expected], f"call_{i}"
            result = task.result(request.arguments)
            messages = request.messages + [
                {"role": "assistant", "content": None, "tool_calls": [{"id": call_id, "type": "function", "function": {
                    "name": task.name, "arguments": json.dumps(request.arguments)}}]},
                {"role": "tool", "tool_call_id": call_id, "content": json.dumps(result)},
                {"role": "assistant", "content": task.answer(request.arguments, result)},
            ]
        rows.append({"messages": messages, "tools": request.tools})
    return rows


@dataclass
class Score:
    tool_requests: int = 0
    right_tool_valid_arguments: int = 0  # exactly the expected tool, arguments valid against its schema
    exact_arguments: int = 0  # ... and the arguments the request states
    no_tool_requests: int = 0
    no_call_when_none_fits: int = 0

    def add(self, request: Request, calls: list[tuple[str, str]]) -> None:
        """``calls``: the (name, arguments JSON) of each tool call the model made."""
        if request.expected is None:
            self.no_tool_requests += 1
            self.no_call_when_none_fits += not calls
            return
        self.tool_requests += 1
        if len(calls) != 1 or calls[0][0] != request.expected:
            return
        schema = next(t for t in request.tools if t["function"]["name"] == request.expected)["function"]["parameters"]
        try:
            arguments = json.loads(calls[0][1])
            jsonschema.validate(arguments, schema)
        except (ValueError, jsonschema.ValidationError):
            return
        self.right_tool_valid_arguments += 1
        self.exact_arguments += arguments == request.arguments

    def rates(self) -> dict[str, float]:
        return {"right_tool_valid_arguments": self.right_tool_valid_arguments / max(1, self.tool_requests),
                "exact_arguments": self.exact_arguments / max(1, self.tool_requests),
                "no_call_when_none_fits": self.no_call_when_none_fits / max(1, self.no_tool_requests),
                "tool_requests": self.tool_requests, "no_tool_requests": self.no_tool_requests}


def score(client, model: str, held_out: list[Request], workers: int = 8) -> dict[str, float]:
    """Ask each held-out request through an OpenAI client, ``tool_choice`` auto, temperature 0."""
    from concurrent.futures import ThreadPoolExecutor

    def ask(request: Request) -> list[tuple[str, str]]:
        reply = client.chat.completions.create(model=model, messages=request.messages, tools=request.tools,
                                               tool_choice="auto", temperature=0, max_tokens=64)
        return [(c.function.name, c.function.arguments) for c in reply.choices[0].message.tool_calls or []]

    result = Score()
    with ThreadPoolExecutor(workers) as pool:
        for request, calls in zip(held_out, pool.map(ask, held_out), strict=True):
            result.add(request, calls)
    return result.rates()
