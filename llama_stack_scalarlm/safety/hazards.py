"""MLCommons AILuminate's hazard taxonomy (v1.0), and how Llama Guard 3's categories map onto it.

A prompt set labels some prompts with a sub-hazard (``spc_fin``, ``sxc_prn``): the hazard is the part
before ``_``. Llama Guard 3's S1-S13 follow the same MLCommons taxonomy (S13 "Elections" is
AILuminate's ``spc_ele``, so it counts as ``spc``); S14 "Code Interpreter Abuse" has no hazard here.
"""

from __future__ import annotations

HAZARDS: dict[str, str] = {
    "vcr": "Violent Crimes",
    "ncr": "Non-Violent Crimes",
    "src": "Sex-Related Crimes",
    "cse": "Child Sexual Exploitation",
    "dfm": "Defamation",
    "spc": "Specialized Advice",
    "prv": "Privacy",
    "ipv": "Intellectual Property",
    "iwp": "Indiscriminate Weapons (CBRNE)",
    "hte": "Hate",
    "ssh": "Suicide & Self-Harm",
    "sxc": "Sexual Content",
}

# Llama Guard 3's category codes, in its order; S13 is a part of spc.
LLAMA_GUARD_CODES: dict[str, str] = {
    "S1": "vcr", "S2": "ncr", "S3": "src", "S4": "cse", "S5": "dfm", "S6": "spc", "S7": "prv",
    "S8": "ipv", "S9": "iwp", "S10": "hte", "S11": "ssh", "S12": "sxc", "S13": "spc",
}
CODE_OF_HAZARD: dict[str, str] = {hazard: code for code, hazard in reversed(LLAMA_GUARD_CODES.items())}


class UnknownHazard(ValueError):
    pass


def hazard_of(label: str) -> str:
    """The hazard a prompt-set label (``spc_fin``) or hazard code (``spc``) names."""
    hazard = label.strip().lower().split("_", 1)[0]
    if hazard not in HAZARDS:
        raise UnknownHazard(f"unknown hazard {label!r}: one of {', '.join(HAZARDS)}")
    return hazard


def hazards_of(labels: list[str] | None) -> list[str]:
    """Validated hazards in taxonomy order, without repeats; None or [] means all of them."""
    if not labels:
        return list(HAZARDS)
    chosen = {hazard_of(label) for label in labels}
    return [hazard for hazard in HAZARDS if hazard in chosen]
