"""The one error a user's own files can cause: :class:`ConfigError`.

Everything a user writes (a catalog, a job, a preset, overrides on the
command line) is validated before any rendering starts. Validation does not
stop at the first problem: it collects every problem it can find into one
:class:`ConfigError`, so a label fixes its spreadsheet in one go. Each
problem is one line that names the file, the row (for catalogs), the field,
and what is allowed, e.g.::

    catalog.csv row 3 (line 4), field 'isrc': 'US-AB1-2X-00001' is not an ISRC
    (CC-XXX-YY-NNNNN: 2 letters, 3 letters/digits, 2 digits, 5 digits, dashes optional)

Problems with the *audio* a row points to (a missing or unreadable file) are
not config errors: they fail that one track at render time (see
:mod:`farm.catalog`).
"""
from __future__ import annotations

import difflib
import os
from collections.abc import Iterable


class ConfigError(ValueError):
    """One or more problems in user-written configuration.

    ``problems`` holds one self-contained line per problem; ``str(err)`` lists
    them all (with a count when there is more than one).
    """

    def __init__(self, problems: str | Iterable[str]):
        self.problems: list[str] = [problems] if isinstance(problems, str) else list(problems)
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__(_format(self.problems))


def _format(problems: list[str]) -> str:
    if len(problems) == 1:
        return problems[0]
    return f"{len(problems)} problems:\n" + "\n".join(f"  - {p}" for p in problems)


class Problems:
    """Collects problem lines while validating; raise them all at the end.

    ::

        problems = Problems()
        ...
        problems.add(f"{where}, field 'isrc': ...")
        problems.raise_if_any()
    """

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, message: str) -> None:
        self.items.append(message)

    def extend(self, err: ConfigError | Iterable[str]) -> None:
        self.items.extend(err.problems if isinstance(err, ConfigError) else err)

    def __bool__(self) -> bool:
        return bool(self.items)

    def __len__(self) -> int:
        return len(self.items)

    def raise_if_any(self) -> None:
        if self.items:
            raise ConfigError(self.items)


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' (did you mean 'x'?)' for a close match among ``choices``, else ''."""
    close = difflib.get_close_matches(str(word), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def display_path(path: str | os.PathLike) -> str:
    """A path as a message should show it: relative to the working folder
    when it lies below it, else absolute."""
    p = os.path.abspath(os.fspath(path))
    try:
        rel = os.path.relpath(p)
    except ValueError:  # another drive on Windows
        return p
    return p if rel.startswith(os.pardir) else rel
