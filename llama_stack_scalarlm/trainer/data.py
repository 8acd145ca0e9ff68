"""Training data: JSONL rows → tokenized examples → packed rows → micro-batches, in a seeded order.

Row formats (one JSON object per line):
- ``{"input": str, "output": str}``: one user turn and one assistant turn;
- ``{"messages": [{"role", "content"}, ...]}``: a conversation, loss on every assistant message;
- ``{"prompt": str | messages, "chosen": str | messages, "rejected": str | messages}``: a DPO pair.

Text is rendered with the tokenizer's chat template, exactly as the server renders a chat request,
and labels come from character spans of the assistant turns (template text around them, such as
role headers, is not trained; the end-of-turn marker is). A tokenizer without a chat template (a
base model) gets plain text: the turns concatenated, EOS after each assistant turn. Labels are stored already shifted
(``labels[i]`` is the token predicted at position ``i``), so a sequence never predicts into its
neighbour when rows are packed.

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

IGNORE_INDEX = -100


@dataclass(frozen=True, eq=False)
class Sequence:
    input_ids: np.ndarray  # int64 [n]
    labels: np.ndarray  # int64 [n], shifted; IGNORE_INDEX where nothing is trained

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


def load_examples(path: Path, tokenizer: Any, method: str, max_seq_len: int) -> list[Example]:
    """Tokenize every row of a JSONL file. Rows whose labels are all cut off by truncation are dropped."""
    conversations: list[tuple[list[dict], int]] = []  # (messages, index of first message trained)
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name} line {line_no}: not JSON ({exc})") from None
            conversations.extend(_conversations(row, method, f"{path.name} line {line_no}"))
    if not conversations:
        raise ValueError(f"{path.name}: no rows")
    limit = max_seq_len // 2 if method == "dpo" else max_seq_len
    sequences = _tokenize(tokenizer, conversations, limit)
    group = 2 if method == "dpo" else 1
    examples = []
    for i in range(0, len(sequences), group):
        parts = sequences[i : i + group]
        if all(p is not None for p in parts):
            examples.append(Example(tuple(parts)))  # type: ignore[arg-type]
    if not examples:
        raise ValueError(f"{path.name}: no row has a trained token within max_seq_len={max_seq_len}")
    return examples


def _conversations(row: Any, method: str, where: str) -> list[tuple[list[dict], int]]:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object")
    if method == "dpo":
        if not {"prompt", "chosen", "rejected"} <= row.keys():
            raise ValueError(f"{where}: a DPO row needs 'prompt', 'chosen' and 'rejected'")
        prompt = _messages(row["prompt"], "user", where)
        return [(prompt + _messages(row[k], "assistant", where), len(prompt)) for k in ("chosen", "rejected")]
    if "messages" in row:
        messages = _messages(row["messages"], None, where)
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"{where}: 'messages' has no assistant message to train on")
        return [(messages, 0)]
    if "input" in row and "output" in row:
        return [(_messages(row["input"], "user", where) + _messages(row["output"], "assistant", where), 1)]
    raise ValueError(f"{where}: expected {{'input','output'}} or {{'messages'}} (method {method})")


def _messages(value: Any, role: str | None, where: str) -> list[dict]:
    if isinstance(value, str) and role is not None:
        return [{"role": role, "content": value}]
    if isinstance(value, list) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in value
    ):
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise ValueError(f"{where}: expected a string or a list of {{'role', 'content'}} messages")


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool) -> str:
    if not getattr(tokenizer, "chat_template", None):  # a base model: plain text, as a completion request sends it
        return "".join(m["content"] + (tokenizer.eos_token or "" if m["role"] == "assistant" else "") for m in messages)
    if not messages and not generation_prompt:
        return ""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _assistant_spans(tokenizer: Any, messages: list[dict], first: int, text: str) -> list[tuple[int, int]]:
    """Character spans of the trained assistant turns: from after the generation prompt to the turn's end."""
    spans = []
    cursor = 0
    for i, message in enumerate(messages):
        if i < first or message["role"] != "assistant":
            continue
        try:
            before = _render(tokenizer, messages[:i], True)
            through = _render(tokenizer, messages[: i + 1], False)
        except Exception:  # e.g. a template that refuses a conversation not starting with a user turn
            before = through = "\0"
        if text.startswith(through) and through.startswith(before):
            spans.append((len(before), len(through)))
        else:  # a template that rewrites earlier turns: fall back to the content itself (+ EOS if it follows)
            start = text.find(message["content"], cursor)
            if start < 0:
                raise ValueError("the chat template drops an assistant message's content")
            end = start + len(message["content"])
            eos = tokenizer.eos_token or ""
            if eos and text.startswith(eos, end):
                end += len(eos)
            spans.append((start, end))
        cursor = spans[-1][1]
    return spans


def _tokenize(tokenizer: Any, conversations: list[tuple[list[dict], int]], limit: int) -> list[Sequence | None]:
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("the trainer needs a fast tokenizer (offsets map assistant spans to tokens)")
    texts = [_render(tokenizer, messages, False) for messages, _ in conversations]
    spans = [_assistant_spans(tokenizer, m, first, t) for (m, first), t in zip(conversations, texts, strict=True)]
    # A chat template writes its own special tokens; plain text gets the tokenizer's (BOS), as vLLM adds them.
    plain = not getattr(tokenizer, "chat_template", None)
    encoded = tokenizer(texts, add_special_tokens=plain, return_offsets_mapping=True)
    out: list[Sequence | None] = []
    for ids, offsets, trained_spans in zip(encoded["input_ids"], encoded["offset_mapping"], spans, strict=True):
        ids = np.asarray(ids[:limit], dtype=np.int64)
        starts = np.asarray([o[0] for o in offsets[:limit]], dtype=np.int64)
        trained = np.zeros(len(ids), dtype=bool)
        for start, end in trained_spans:
            trained |= (starts >= start) & (starts < end)
        labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
        labels[:-1] = np.where(trained[1:], ids[1:], IGNORE_INDEX)
        out.append(Sequence(ids, labels) if (labels != IGNORE_INDEX).any() else None)
    return out


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
        )


def collate(rows: list[list[Example]], pad_id: int) -> MicroBatch:
    width = max(sum(e.length for e in row) for row in rows)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    labels = np.full((len(rows), width), IGNORE_INDEX, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    owner = np.full((len(rows), width), -1, dtype=np.int64)
    sequence = 0
    for r, row in enumerate(rows):
        col = 0
        for example in row:
            for seq in example.sequences:
                n = len(seq)
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
    )


@dataclass
class StepPlan:
    """One optimizer step: this rank's micro-batches and the step's totals over all ranks."""

    micro_batches: list[MicroBatch]
    loss_denominator: int  # label tokens (SFT) or pairs (DPO) over all ranks: the loss is a mean over these
    tokens: int  # non-padding tokens over all ranks


def plan_step(
    rows: list[list[Example]], replica: int, replicas: int, accumulation: int, method: str, pad_id: int
) -> StepPlan:
    """Replica ``r`` takes rows ``r, r+replicas, ...``, split into at most ``accumulation`` micro-batches.

    Every rank computes the same totals from the same rows, so normalizing needs no communication.
    """
    mine = rows[replica::replicas]
    chunks = [c for c in np.array_split(np.arange(len(mine)), min(accumulation, len(mine))) if len(c)]
    if method == "dpo":
        denominator = sum(len(row) for row in rows)
    else:
        denominator = sum(e.label_tokens for row in rows for e in row)
    return StepPlan(
        [collate([mine[i] for i in chunk], pad_id) for chunk in chunks],
        denominator,
        sum(e.length for row in rows for e in row),
    )
