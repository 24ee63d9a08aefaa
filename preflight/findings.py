"""One line per check: OK, WARN (the deploy may still work) or BLOCKER (it will not)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["OK", "WARN", "BLOCKER"]


@dataclass(frozen=True)
class Finding:
    """The outcome of one check.

    Attributes:
        level: ``OK``, ``WARN`` or ``BLOCKER``.
        check: Short name of what was checked (``bootstrap``, ``concurrency``, ...).
        message: What was found, with the numbers that decided it.
        fix: What to do about it (WARN and BLOCKER only).
    """

    level: Level
    check: str
    message: str
    fix: str | None = None

    def line(self) -> str:
        text = f"{self.level:<8} {self.check:<12} {self.message}"
        return f"{text} -> fix: {self.fix}" if self.fix else text


def ok(check: str, message: str) -> Finding:
    return Finding("OK", check, message)


def warn(check: str, message: str, fix: str | None = None) -> Finding:
    return Finding("WARN", check, message, fix)


def blocker(check: str, message: str, fix: str) -> Finding:
    return Finding("BLOCKER", check, message, fix)
