"""Where the tests find MLCommons' AILuminate files (never committed here: hazardous by design):
``$SCALARLM_AILUMINATE_DIR``, else ``../shared/data/ailuminate`` beside this checkout, or beside the
checkout it was cloned from (a fresh clone in a temporary folder)."""

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO_NAME = "airr_official_1.0_demo_en_us_prompt_set_release.csv"
REFERENCE_NAME = "reference-standard-v1.1.json"


def _candidates() -> list[Path]:
    if "SCALARLM_AILUMINATE_DIR" in os.environ:
        return [Path(os.environ["SCALARLM_AILUMINATE_DIR"])]
    roots = [ROOT]
    origin = subprocess.run(["git", "-C", str(ROOT), "remote", "get-url", "origin"], capture_output=True, text=True)
    if origin.returncode == 0 and Path(origin.stdout.strip()).is_dir():
        roots.append(Path(origin.stdout.strip()).resolve())
    return [root.parent / "shared" / "data" / "ailuminate" for root in roots]


def find_ailuminate_dir() -> Path | None:
    """The folder with the demo prompt set and the reference standard, if there is one."""
    return next((folder for folder in _candidates() if (folder / DEMO_NAME).is_file()), None)


def ailuminate_dir() -> Path:
    """:func:`find_ailuminate_dir`, or skip (visibly)."""
    if folder := find_ailuminate_dir():
        return folder
    pytest.skip(f"no AILuminate data (set SCALARLM_AILUMINATE_DIR); looked in {', '.join(map(str, _candidates()))}")
