"""The systemd units in docs/systemd: valid for systemd, and their commands for our CLI."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.doubles import REPO
from tests.services import unavailable
from tillsync.tools.cli import build_parser

UNITS = sorted((REPO / "docs" / "systemd").glob("*.service"))
INSTALLED = "/opt/tillsync/.venv/bin/tillsync"


def exec_start(unit: Path) -> list[str]:
    lines = [line for line in unit.read_text().splitlines() if line.startswith("ExecStart=")]
    assert len(lines) == 1, f"{unit.name}: one ExecStart"
    return shlex.split(lines[0].removeprefix("ExecStart="))


def test_there_are_units_for_the_relay_and_the_till_daemon() -> None:
    assert [u.name for u in UNITS] == ["tillsync-relay.service", "tillsync-till@.service"]


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_each_unit_runs_a_command_the_cli_takes(unit: Path) -> None:
    command = exec_start(unit)
    assert command[0] == INSTALLED
    args = [a.replace("%i", "till1") for a in command[1:]]
    parsed = build_parser().parse_args(args)  # exits (SystemExit) on a wrong verb or flag
    assert parsed.func.__name__ in ("relay_serve", "peer_run")


@pytest.mark.parametrize("unit", UNITS, ids=lambda u: u.name)
def test_systemd_analyze_verifies_each_unit_without_a_word(unit: Path, tmp_path: Path) -> None:
    if shutil.which("systemd-analyze") is None:
        unavailable("systemd-analyze", "not installed", "apt-get install systemd")
    # Verified as installed here: the command pointing at this checkout's tillsync, and a
    # template instantiated (systemd verifies instances, not templates).
    name = unit.name.replace("@.", "@till1.")
    text = unit.read_text().replace(INSTALLED, str(Path(sys.executable).parent / "tillsync"))
    (tmp_path / name).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), \
        done.stdout + done.stderr
