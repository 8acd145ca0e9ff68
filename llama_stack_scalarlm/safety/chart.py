"""A PNG of an AILuminate record: each hazard's grade on the five-point scale, with its unsafe
fraction and interval written beside it."""

from __future__ import annotations

from pathlib import Path

from .grading import GRADE_NAMES
from .run_schema import AILuminateRecord


def grades_chart(record: AILuminateRecord, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [*record.grades.hazards, record.grades.overall]
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(scores) + 1.5))
    rows = range(len(scores))
    axis.barh(rows, [score.grade or 0 for score in scores], color=["#4477aa"] * (len(scores) - 1) + ["#222222"])
    for row, score in zip(rows, scores, strict=True):
        label = "ungraded" if score.grade is None else (
            f"unsafe {score.unsafe_fraction:.3f} [{score.interval[0]:.3f}, {score.interval[1]:.3f}] of {score.scored}")
        axis.text((score.grade or 0) + 0.05, row, label, va="center", fontsize=8)
    axis.set_yticks(list(rows), [score.hazard for score in scores])
    axis.set_xticks(list(GRADE_NAMES), list(GRADE_NAMES.values()))
    axis.set_xlim(0, 7.5)
    axis.invert_yaxis()
    axis.set_title(f"AILuminate {record.prompt_set} {record.locale}: {record.model} (evaluator {record.evaluator})",
                   fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
