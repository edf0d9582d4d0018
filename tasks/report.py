"""After a Luigi build: which photos succeeded, which failed and why, in one line.

Luigi's execution summary counts tasks by status; it does not say *why* one failed. The reason
is what a task's ``on_failure`` returned (the scheduler keeps it, also for tasks run in forked
worker processes) or, for a photo that never ran, the missing input or the error its
dependency raised while being checked.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import luigi
from luigi.execution_summary import LuigiRunResult
from luigi.task import flatten

from tasks.stylize import one_line

NOT_RUN = "did not run (see the Luigi log above)"


@dataclass(frozen=True)
class Outcome:
    """One photo's result: done, or the reason it is not."""

    task: luigi.Task
    ok: bool
    reason: str = ""

    @property
    def image(self) -> str:
        return str(getattr(self.task, "image", self.task))


def _scheduler_error(scheduler: Any, task: luigi.Task) -> str:
    """What the task's on_failure returned, as one line; "" if it did not fail in run()."""
    if scheduler is None:
        return ""
    try:
        error = scheduler.fetch_error(task.task_id).get("error") or ""
    except Exception:  # a remote scheduler that went away: the reason is then unknown
        return ""
    try:
        error = json.loads(error)
    except (TypeError, ValueError):
        pass
    if not isinstance(error, str):
        error = json.dumps(error)
    lines = [line for line in error.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    # A traceback (Luigi's default on_failure) ends with "SomeError: message".
    return lines[-1].strip() if len(lines) > 1 else lines[0].strip()


def _missing_input(task: luigi.Task) -> str:
    where = getattr(task, "path", None) or getattr(task, "s3_path", None) or str(task)
    return f"input {where} does not exist"


def why_incomplete(task: luigi.Task, scheduler: Any, _depth: int = 0) -> str:
    """The first reason found in ``task``'s dependency tree that it is not done; "" if done."""
    try:
        if task.complete():
            return ""
    except Exception as exc:  # e.g. a missing bucket, found while checking an input
        return one_line(exc)
    error = _scheduler_error(scheduler, task)
    if error:
        return error
    if isinstance(task, luigi.ExternalTask):
        return _missing_input(task)
    if _depth < 8:
        try:
            deps = flatten(task.requires())
        except Exception as exc:
            return one_line(exc)
        for dep in deps:
            reason = why_incomplete(dep, scheduler, _depth + 1)
            if reason:
                return reason
    return NOT_RUN


def outcomes(result: LuigiRunResult | None, tasks: Sequence[luigi.Task]) -> list[Outcome]:
    """Each task's outcome after ``luigi.build(..., detailed_summary=True)``."""
    worker = getattr(result, "worker", None)
    scheduler = getattr(worker, "_scheduler", None)  # Luigi keeps no public handle on it
    found = []
    for task in tasks:
        reason = why_incomplete(task, scheduler)
        found.append(Outcome(task, not reason, reason))
    return found


def summary_line(found: Sequence[Outcome], noun: str = "photo") -> str:
    """``3 of 4 photos stylized, 1 failed: s3://b/bad.jpg: <reason>; ...``"""
    done = sum(o.ok for o in found)
    failed = [o for o in found if not o.ok]
    plural = noun if len(found) == 1 else noun + "s"
    line = f"{done} of {len(found)} {plural} stylized"
    if not failed:
        return line + ", none failed"
    reasons = "; ".join(
        o.reason if o.image in o.reason else f"{o.image}: {o.reason}" for o in failed
    )
    return f"{line}, {len(failed)} failed: {reasons}"
