"""Cron expressions checked field by field, so a schedule that would never fire (or fire wrongly) is refused
before it is submitted to an orchestrator."""

from __future__ import annotations

# (name, lowest, highest, names allowed in place of numbers)
FIELDS = (
    ("minute", 0, 59, ()),
    ("hour", 0, 23, ()),
    ("day of month", 1, 31, ()),
    ("month", 1, 12, ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")),
    ("weekday", 0, 7, ("sun", "mon", "tue", "wed", "thu", "fri", "sat")),  # 0 and 7 are both Sunday
)
EXAMPLE = "5 fields: minute hour day month weekday, e.g. '0 3 * * 1' for Mondays at 03:00"


class CronError(ValueError):
    """A cron expression that cannot be scheduled; the message is one line."""


def _number(text: str, name: str, low: int, high: int, names: tuple[str, ...]) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + (1 if name == "month" else 0)
    if not text.isdigit():
        raise CronError(f"{name} field: {text!r} is not a number" + (f" or a name ({', '.join(names)})" if names else ""))
    value = int(text)
    if not low <= value <= high:
        raise CronError(f"{name} field: {value} is outside {low}-{high}")
    return value


def check_cron(expression: str) -> None:
    """Refuse an expression that is not five valid fields (numbers, *, ranges a-b, steps /n, lists a,b).

    Raises:
        CronError: Naming the field and the value that is wrong.
    """
    fields = expression.split()
    if len(fields) != 5:
        raise CronError(f"{expression!r} is not a cron expression ({EXAMPLE})")
    for text, (name, low, high, names) in zip(fields, FIELDS):
        for part in text.split(","):
            if not part:
                raise CronError(f"{name} field: {text!r} has an empty list item")
            span, _, step = part.partition("/")
            if _ and (not step.isdigit() or int(step) < 1):
                raise CronError(f"{name} field: step {step!r} in {part!r} must be a whole number of at least 1")
            if span == "*":
                continue
            first, dash, last = span.partition("-")
            start = _number(first, name, low, high, names)
            if dash:
                end = _number(last, name, low, high, names)
                if end < start:
                    raise CronError(f"{name} field: range {span!r} runs backwards")
