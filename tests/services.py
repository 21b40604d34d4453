"""System services some tests need (PostgreSQL, Chromium): what happens without them.

In CI (``CI`` set, as `.ci/run` runs) a missing service fails the test loudly, so CI
cannot go green without proving what needs it.  Elsewhere, on a newcomer's machine, the
test is skipped with the reason and the fix, and pytest's summary (``-ra``) lists it.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def unavailable(what: str, why: str, fix: str) -> NoReturn:
    """Fail (in CI) or skip (elsewhere) the running test: ``what`` is missing."""
    message = f"{what} is not available ({why}); {fix}"
    if in_ci():
        pytest.fail(f"{message} [CI fails a test whose service is missing]", pytrace=False)
    pytest.skip(f"{message} [skipped outside CI; set CI=1 to make this a failure]")
