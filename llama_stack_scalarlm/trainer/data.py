"""Training data: JSONL rows → tokenized examples → packed rows → micro-batches, in a seeded order.

Row formats (one JSON object per line; ``registry/rows.py`` types them): ``{"input", "output"}``,
a conversation ``{"messages", "tools"?}`` in OpenAI's chat shape (loss on every assistant message,
its tool calls included), a DPO pair ``{"prompt", "chosen", "rejected"}``, or GRPO's scored
samples ``{"prompt", "completions": [{"text", "reward", "logprobs"?}]}``: one sequence per
completion, carrying its advantage (its reward normalized within the prompt's group) and the
sampling policy's log-probability of each trained token where the row gives them.

Text is rendered with the chat template the engine serves the model with (its own, or for rows
with tools the project's tool template when its own has none: ``models/chat_template.py``), exactly
as the server renders a chat request with those tools, and labels come from character spans of the
assistant turns (template text around them, such as role headers and tool results, is not trained;
the end-of-turn marker is). A tokenizer without a chat template (a base model) gets plain text for
rows without tools: the turns concatenated, EOS after each assistant turn. Labels are stored
already shifted (``labels[i]`` is the token predicted at position ``i``), so a sequence never
predicts into its neighbour when rows are packed.

Packing concatenates examples into rows of at most ``max_seq_len`` tokens with position ids that
restart at 0 for every sequence. Transformers (5.x) turns restarting position ids into a
block-diagonal causal mask when no attention mask is passed, so packed sequences do not attend to
each other (``tests/test_trainer.py`` checks the logits equal unpacked ones). Padding forms its own
segment with label -100.

The order is a pure function of (seed, epoch): each epoch shuffles the examples with
``numpy.random.default_rng([seed, epoch])`` (or, with ``shuffle`` off, keeps the file's order) and
packs them greedily; a :class:`DataPosition` (epoch, row index) is all a resumed run needs to
continue the same stream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..registry.rows import ChatRow, Row, RowError, ScoredRow, TextRow, parse_row

IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class Sequence:
    input_ids: np.ndarray  # int64 [n]
    labels: np.ndarray  # int64 [n], shifted; IGNORE_INDEX where nothing is trained
    advantage: float = 0.0  # GRPO
    sampled: np.ndarray | None = None  # GRPO: float64 [label tokens], the sampling log-probs (NaN: not given)

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True, eq=False)
class Example:
    """One SFT sequence, or a DPO pair (chosen, rejected), which always share a row."""

    sequences: tuple[Sequence, ...]

    @property
    def length(self) -> int:
        return sum(len(s) for s in self.sequences)

    @property
    def label_tokens(self) -> int:
        return sum(int((s.labels != IGNORE_INDEX).sum()) for s in self.sequences)


@dataclass
class DataPosition:
    epoch: int = 0
    index: int = 0  # next row within the epoch


# ---------------------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class Conversation:
    messages: list[dict]  # as a chat template takes them (``Message.for_template``)
    first: int  # index of the first message trained
    tools: list[dict] | None
    advantage: float = 0.0  # GRPO: of the one trained (last) message
    sampled: list[float] | None = None  # GRPO: the sampling log-prob of each token of its content
    where: str = ""  # GRPO: the completion's field, for an error


def load_examples(path: Path, tokenizer: Any, method: str, max_seq_len: int,
                  chat_template: str | None = None) -> list[Example]:
    """Tokenize every row of a JSONL file. Rows whose labels are all cut off by truncation are dropped.

    ``chat_template`` is the one the engine serves the model with (``models.chat_template``), so a
    conversation with tools is trained on exactly the text a request with those tools is prompted with."""
    conversations: list[Conversation] = []
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = parse_row(json.loads(line), method)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name} line {line_no}: not JSON ({exc})") from None
            except RowError as exc:
                raise ValueError(f"{path.name} line {line_no}: {exc}") from None
            conversations.extend(_conversations(row, f"{path.name} line {line_no}: "))
    if not conversations:
        raise ValueError(f"{path.name}: no rows" if method != "grpo" else
                         f"{path.name}: in every group the rewards are equal: no advantage to learn from")
    limit = max_seq_len // 2 if method == "dpo" else max_seq_len
    sequences = _tokenize(tokenizer, conversations, limit, chat_template)
    group = 2 if method == "dpo" else 1
    examples = []
    for i in range(0, len(sequences), group):
        parts = sequences[i : i + group]
        if all(p is not None for p in parts):
            examples.append(Example(tuple(parts)))  # type: ignore[arg-type]
    if not examples:
        raise ValueError(f"{path.name}: no row has a trained token within max_seq_len={max_seq_len}")
    return examples


def group_advantages(rewards: list[float]) -> list[float]:
    """GRPO's advantages: each reward less the group's mean, over the group's standard deviation
    (population); a group whose rewards are all equal has none (all 0)."""
    values = np.asarray(rewards, dtype=np.float64)
    spread = values.std()
    return [0.0] * len(values) if spread == 0 else ((values - values.mean()) / spread).tolist()


def _conversations(row: Row, where: str) -> list[Conversation]:
    if isinstance(row, ScoredRow):  # a group whose rewards are equal trains nothing: left out
        prompt = [m.for_template() for m in row.prompt]
        tools = [t.for_template() for t in row.tools] if row.tools else None
        advantages = group_advantages([c.reward for c in row.completions])
        return [Conversation(prompt + [{"role": "assistant", "content": c.text}], len(prompt), tools, advantage,
                             c.logprobs, f"{where}completions.{i}.logprobs")
                for i, (c, advantage) in enumerate(zip(row.completions, advantages, strict=True)) if advantage]
    if isinstance(row, TextRow):
        return [Conversation([{"role": "user", "content": row.input}, {"role": "assistant", "content": row.output}],
                             1, None)]
    tools = [t.for_template() for t in row.tools] if row.tools else None
    if isinstance(row, ChatRow):
        return [Conversation([m.for_template() for m in row.messages], 0, tools)]
    prompt = [m.for_template() for m in row.prompt]
    return [Conversation(prompt + [m.for_template() for m in answer], len(prompt), tools)
            for answer in (row.chosen, row.rejected)]


def _plain(tokenizer: Any, conversation: Conversation) -> bool:
    """A base model's row without tools: plain text, as a completion request sends it."""
    return conversation.tools is None and not getattr(tokenizer, "chat_template", None)


def _render(tokenizer: Any, conversation: Conversation, upto: int, generation_prompt: bool,
            chat_template: str | None) -> str:
    """The text of ``conversation.messages[:upto]``."""
    messages = conversation.messages[:upto]
    if _plain(tokenizer, conversation):
        return "".join(m["content"] + (tokenizer.eos_token or "" if m["role"] == "assistant" else "") for m in messages)
    if not messages and not generation_prompt:
        return ""
    return tokenizer.apply_chat_template(messages, tools=conversation.tools, chat_template=chat_template,
                                         tokenize=False, add_generation_prompt=generation_prompt)


def _assistant_spans(tokenizer: Any, conversation: Conversation, text: str,
                     chat_template: str | None) -> list[tuple[int, int]]:
    """Character spans of the trained assistant turns (tool calls included): from after the
    generation prompt to the turn's end."""
    spans = []
    cursor = 0
    for i, message in enumerate(conversation.messages):
        if i < conversation.first or message["role"] != "assistant":
            continue
        try:
            before = _render(tokenizer, conversation, i, True, chat_template)
            through = _render(tokenizer, conversation, i + 1, False, chat_template)
        except Exception:  # e.g. a template that refuses a conversation not starting with a user turn
            before = through = "\0"
        if text.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
        else:  # a template that rewrites earlier turns: fall back to the content itself (+ EOS if it follows)
            start = text.find(message["content"], cursor) if message["content"] else -1
            if start < 0:
                raise ValueError("the chat template rewrites earlier turns, and an assistant turn's content is "
                                 "not in its text to train on")
            end = start + len(message["content"])
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((start, end))
        cursor = spans[-1][1]
    return spans


def _tokenize(tokenizer: Any, conversations: list[Conversation], limit: int,
              chat_template: str | None) -> list[Sequence | None]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the trainer needs a fast tokenizer (offsets map assistant spans to tokens)")
    texts = [_render(tokenizer, c, len(c.messages), False, chat_template) for c in conversations]
    spans = [_assistant_spans(tokenizer, c, t, chat_template) for c, t in zip(conversations, texts, strict=True)]
    # A chat template writes its own special tokens; plain text gets the tokenizer's (BOS), as vLLM adds them.
    plain = [_plain(tokenizer, c) for c in conversations]
    encoded: list[tuple[list[int], list[tuple[int, int]]]] = [([], [])] * len(texts)
    for special in (True, False):
        group = [i for i, p in enumerate(plain) if p == special]
        if group:
            batch = tokenizer([texts[i] for i in group], add_special_tokens=special, return_offsets_mapping=True)
            for i, ids, offsets in zip(group, batch["input_ids"], batch["offset_mapping"], strict=True):
                encoded[i] = (ids, offsets)
    out: list[Sequence | None] = []
    for conversation, text, (ids, offsets), trained_spans in zip(conversations, texts, encoded, spans, strict=True):
        starts = np.asarray([o[0] for o in offsets], dtype=np.int64)
        sampled = None if conversation.sampled is None else _sampled(conversation, text, trained_spans, starts)
        ids, starts = np.asarray(ids[:limit], dtype=np.int64), starts[:limit]
        trained = np.zeros(len(ids), dtype=bool)
        for start, end in trained_spans:
            trained |= (starts >= start) & (starts < end)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        labels[:-1] = np.where(trained[1:], ids[1:], IGNORE_INDEX)
        if sampled is not None:  # shifted as the labels are, then one value per label token
            sampled = np.concatenate([sampled[1:len(ids)], [np.nan]])[labels != IGNORE_INDEX]
        keep = (labels != IGNORE_INDEX).any()
        out.append(Sequence(ids, labels, conversation.advantage, sampled) if keep else None)
    return out


def _sampled(conversation: Conversation, text: str, spans: list[tuple[int, int]], starts: np.ndarray) -> np.ndarray:
    """The sampling log-probs on the tokens of the completion's text (NaN elsewhere, the end-of-turn
    marker too: there the ratio is 1). They must be as many as its tokens: the same tokenizer."""
    content = conversation.messages[-1]["content"]
    begin = text.find(content, spans[-1][0])
    tokens = np.flatnonzero((starts >= begin) & (starts < begin + len(content)))
    if len(tokens) != len(conversation.sampled):
        raise ValueError(f"{conversation.where}: {len(conversation.sampled)} values, and the text is "
                         f"{len(tokens)} tokens (log-probabilities from another tokenizer?)")
    values = np.full(len(starts), np.nan)
    values[tokens] = conversation.sampled
    return values


# ------------------------------------------------------------------------------------------ order


def epoch_rows(lengths: np.ndarray, seed: int, epoch: int, max_seq_len: int, pack: bool,
               shuffle: bool = True) -> list[list[int]]:
    """The epoch's rows (lists of example indices): a seeded shuffle (or the file's order), then greedy
    packing in that order."""
    order = np.random.default_rng([seed, epoch]).permutation(len(lengths)) if shuffle else np.arange(len(lengths))
    if not pack:
        return [[int(i)] for i in order]
    rows: list[list[int]] = []
    current: list[int] = []
    used = 0
    for i in order.tolist():
        if current and used + lengths[i] > max_seq_len:
            rows.append(current)
            current, used = [], 0
        current.append(i)
        used += int(lengths[i])
    rows.append(current)
    return rows


class DataStream:
    """An endless stream of rows over epochs, resumable from a :class:`DataPosition`."""

    def __init__(self, examples: list[Example], seed: int, max_seq_len: int, pack: bool, position: DataPosition,
                 shuffle: bool = True):
        self.examples = examples
        self._lengths = np.asarray([e.length for e in examples], dtype=np.int64)
        self._seed, self._max_seq_len, self._pack, self._shuffle = seed, max_seq_len, pack, shuffle
        self.position = DataPosition(position.epoch, position.index)
        self._rows = self._epoch(self.position.epoch)

    def _epoch(self, epoch: int) -> list[list[int]]:
        return epoch_rows(self._lengths, self._seed, epoch, self._max_seq_len, self._pack, self._shuffle)

    def take(self, n: int) -> list[list[Example]]:
        taken = []
        while len(taken) < n:
            if self.position.index >= len(self._rows):
                self.position = DataPosition(self.position.epoch + 1, 0)
                self._rows = self._epoch(self.position.epoch)
            taken.append([self.examples[i] for i in self._rows[self.position.index]])
            self.position = DataPosition(self.position.epoch, self.position.index + 1)
        return taken


# ----------------------------------------------------------------------------------------- batches


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [B, T]
    position_ids: torch.Tensor  # [B, T], restarting at 0 per sequence (and for the padding)
    labels: torch.Tensor  # [B, T], shifted targets or IGNORE_INDEX
    label_sequence: torch.Tensor  # [number of label tokens]: which sequence each label belongs to
    num_sequences: int  # DPO: sequence 2k is pair k's chosen answer, 2k+1 its rejected one
    advantages: torch.Tensor  # [num_sequences] float32: GRPO's, 0 otherwise
    sampled_logprobs: torch.Tensor  # [number of label tokens] float32: GRPO's sampling log-probs, NaN if not given

    def to(self, device: torch.device) -> MicroBatch:
        if device.type == "cpu":
            return self
        move = {"device": device, "non_blocking": True}
        return MicroBatch(
            self.input_ids.to(**move),
            self.position_ids.to(**move),
            self.labels.to(**move),
            self.label_sequence.to(**move),
            self.num_sequences,
            self.advantages.to(**move),
            self.sampled_logprobs.to(**move),
        )


def collate(rows: list[list[Example]], pad_id: int) -> MicroBatch:
    width = max(sum(e.length for e in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    owner = np.full((len(rows), width), -1, dtype=np.int64)
    sequence = 0
    advantages, sampled = [], []
    for r, row in enumerate(rows):
        col = 0
        for example in row:
            for seq in example.sequences:
                n = len(seq)
                advantages.append(seq.advantage)
                given = seq.sampled is not None
                sampled.append(seq.sampled if given else np.full(int((seq.labels != IGNORE_INDEX).sum()), np.nan))
                ids[r, col : col + n] = seq.input_ids
                labels[r, col : col + n] = seq.labels
                positions[r, col : col + n] = np.arange(n)
                owner[r, col : col + n] = sequence
                sequence += 1
                col += n
        positions[r, col:] = np.arange(width - col)
    trained = labels != IGNORE_INDEX
    return MicroBatch(
        torch.from_numpy(ids),
        torch.from_numpy(positions),
        torch.from_numpy(labels),
        torch.from_numpy(owner[trained]),
        sequence,
        torch.tensor(advantages, dtype=torch.float32),
        torch.from_numpy(np.concatenate(sampled).astype(np.float32)),
    )


@dataclass
class StepPlan:
    """One optimizer step: this rank's micro-batches and the step's totals over all ranks."""

    micro_batches: list[MicroBatch]
    loss_denominator: int  # label tokens (SFT), pairs (DPO) or sequences (GRPO) over all ranks: the loss's mean
    tokens: int  # non-padding tokens over all ranks


def plan_step(
    rows: list[list[Example]], replica: int, replicas: int, accumulation: int, method: str, pad_id: int
) -> StepPlan:
    """Replica ``r`` takes rows ``r, r+replicas, ...``, split into at most ``accumulation`` micro-batches.

    Every rank computes the same totals from the same rows, so normalizing needs no communication.
    """
    mine = rows[replica::replicas]
    chunks = [c for c in np.array_split(np.arange(len(mine)), min(accumulation, len(mine))) if len(c)]
    if method in ("dpo", "grpo"):  # an example is a pair, or one scored completion
        denominator = sum(len(row) for row in rows)
    else:
        denominator = sum(e.label_tokens for row in rows for e in row)
    return StepPlan(
        [collate([mine[i] for i in chunk], pad_id) for chunk in chunks],
        denominator,
        sum(e.length for row in rows for e in row),
    )
