"""AILuminate prompt sets: load a release CSV, validate it, and draw stratified samples from it.

The prompts are hazardous by design, so nothing here puts a prompt's text into an error message or a repr:
errors name columns, row ids, hazards and locales only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import random
import re
from collections import Counter
from pathlib import Path

from pydantic import BaseModel, Field

from .hazards import HAZARDS, UnknownHazard, hazard_of, hazards_of

COLUMNS = ("release_prompt_id", "prompt_text", "hazard", "persona", "locale")
# The official demo set exists for two locales only; practice and official (heldback) for all three.
SETS: dict[str, tuple[str, ...]] = {
    "demo": ("en_us", "fr_fr"),
    "practice": ("en_us", "fr_fr", "zh_cn"),
    "official": ("en_us", "fr_fr", "zh_cn"),
}
_OFFICIAL_NAME = re.compile(r"airr_official_1\.0_(demo|practice|official)_([a-z]{2}_[a-z]{2})_prompt_set_release\.csv")


class PromptSetError(ValueError):
    pass


class Prompt(BaseModel):
    id: str
    text: str = Field(repr=False)  # kept out of reprs so a failing assert or a log line cannot show it
    hazard: str
    label: str
    persona: str
    locale: str


class PromptSet(BaseModel):
    """A loaded prompt set; ``locale`` is lower-case (``en_us``), the form the official file names use."""

    path: Path
    sha256: str
    locale: str
    prompts: list[Prompt] = Field(repr=False)


def official_file_name(set: str, locale: str) -> str:
    """The name MLCommons publishes a prompt set under, e.g. ``airr_official_1.0_demo_en_us_prompt_set_release.csv``."""
    name, loc = set.strip().lower(), locale.strip().lower()
    if name not in SETS:
        hint = " (the heldback set is called 'official')" if name == "heldback" else ""
        raise PromptSetError(f"unknown prompt set {set!r}{hint}: one of {', '.join(SETS)}")
    if loc not in SETS[name]:
        raise PromptSetError(f"no {name} prompt set for locale {locale!r}: one of {', '.join(SETS[name])}")
    return f"airr_official_1.0_{name}_{loc}_prompt_set_release.csv"


def load_prompt_set(path: str | Path, locale: str | None = None) -> PromptSet:
    """Load and validate a prompt set CSV; every row must be of ``locale``, or else of the locale its official
    file name says, or else all of one locale. Only the columns used are required (not ``prompt_hash``)."""
    path = Path(path)
    expected = locale.strip().lower() if locale else None
    official = _OFFICIAL_NAME.fullmatch(path.name)
    if official:
        named = official.group(2)
        if expected and expected != named:
            raise PromptSetError(f"{path.name} is the {named} prompt set, not {expected}")
        expected = named
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise PromptSetError(f"prompt set {path} not found") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PromptSetError(f"{path} is not UTF-8 (byte {exc.start})") from None
    if not text.strip():
        raise PromptSetError(f"prompt set {path} is empty")

    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [column for column in COLUMNS if column not in (reader.fieldnames or [])]
    if missing:
        raise PromptSetError(f"{path} lacks the column(s) {', '.join(missing)}")
    prompts: list[Prompt] = []
    try:
        for row in reader:
            prompts.append(_prompt(row, reader.line_num, expected))
            expected = expected or prompts[0].locale
    except csv.Error as exc:
        raise PromptSetError(f"{path}: malformed CSV near line {reader.line_num}: {exc}") from None
    if not prompts:
        raise PromptSetError(f"prompt set {path} is empty: a header and no prompts")

    duplicates = sorted(pid for pid, n in Counter(p.id for p in prompts).items() if n > 1)
    if duplicates:
        raise PromptSetError(f"{path} repeats the prompt id(s) {', '.join(duplicates[:10])}")
    return PromptSet(path=path, sha256=hashlib.sha256(data).hexdigest(), locale=expected, prompts=prompts)


def _prompt(row: dict, line: int, expected: str | None) -> Prompt:
    if None in row or None in row.values():  # DictReader's marks for too many or too few fields
        raise PromptSetError(f"row ending at line {line} has the wrong number of fields")
    pid = row["release_prompt_id"].strip()
    if not pid:
        raise PromptSetError(f"row ending at line {line} has no release_prompt_id")
    label = row["hazard"].strip()
    try:
        hazard = hazard_of(label)
    except UnknownHazard:
        raise PromptSetError(f"row {pid} has the unknown hazard {label!r}: one of {', '.join(HAZARDS)}") from None
    found = row["locale"].strip().lower()
    if expected and found != expected:
        raise PromptSetError(f"row {pid} has locale {row['locale'].strip()!r}, expected {expected!r}")
    persona = row["persona"].strip()
    return Prompt(id=pid, text=row["prompt_text"], hazard=hazard, label=label.lower(), persona=persona, locale=found)


def sample(
    prompt_set: PromptSet,
    per_group: int | None,
    seed: int,
    hazards: list[str] | None = None,
    personas: list[str] | None = None,
) -> list[Prompt]:
    """Up to ``per_group`` prompts of each (hazard, persona), all of them for None, ordered by hazard (taxonomy
    order), persona, id. Each group draws from its sorted ids with its own generator seeded by (seed, hazard,
    persona), so a group's sample does not change when other hazards or personas are chosen or left out."""
    if per_group is not None and per_group <= 0:
        raise PromptSetError(f"per_group must be positive or None, not {per_group}")
    try:
        chosen_hazards = hazards_of(hazards)
    except UnknownHazard as exc:
        raise PromptSetError(str(exc)) from None
    known = sorted({p.persona for p in prompt_set.prompts})
    unknown = [persona for persona in personas or [] if persona not in known]
    if unknown:
        raise PromptSetError(f"unknown persona(s) {', '.join(map(repr, unknown))}: one of {', '.join(known)}")
    chosen_personas = personas or known

    groups: dict[tuple[str, str], list[Prompt]] = {}
    for p in prompt_set.prompts:
        if p.hazard in chosen_hazards and p.persona in chosen_personas:
            groups.setdefault((p.hazard, p.persona), []).append(p)
    picked: list[Prompt] = []
    for (hazard, persona), members in groups.items():
        members.sort(key=lambda p: p.id)
        if per_group is not None and per_group < len(members):
            members = random.Random(f"{seed}/{hazard}/{persona}").sample(members, per_group)
        picked.extend(members)
    order = {hazard: i for i, hazard in enumerate(HAZARDS)}
    return sorted(picked, key=lambda p: (order[p.hazard], p.persona, p.id))
