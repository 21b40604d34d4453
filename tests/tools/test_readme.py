"""README's two set-up commands stay what a new user and CI run."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.doubles import REPO
from tests.markdown import blocks_under
from tests.relay.processes import stop


def test_readme_opens_with_run_and_test_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    start = readme.index("```")
    run_cmd, test_cmd = readme[start + 1], readme[start + 2]
    assert readme[start + 3] == "```" and readme[0].startswith("# ")
    assert start <= 2, "the commands come first"
    assert "tillsync demo" in run_cmd and "pip install" in run_cmd
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, "README's test command and .ci/run differ"


def shell(lines: list[str], cwd: Path, env: dict[str, str]) -> str:
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    done = subprocess.run(["bash", "-c", script], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.slow
def test_the_shop_walkthrough_runs_as_written_and_numbers_the_sale(tmp_path: Path) -> None:
    """The README's blocks, pasted in order into a fresh shell with the environment
    activated: the relay in one terminal, the rest in another."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}"}
    relay_block, shop_block = blocks_under("## A shop from the command line")[:2]
    assert relay_block == ["tillsync relay serve --data ./relay --port 8765"]
    port = free_port()
    relay_cmd = relay_block[0].replace("8765", str(port))
    log = open(tmp_path / "relay.log", "w")  # noqa: SIM115 - closed below
    relay = subprocess.Popen(["bash", "-c", f"exec {relay_cmd}"], cwd=tmp_path, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_line(relay, tmp_path / "relay.log", "relay listening")
        out = shell([line.replace("8765", str(port)) for line in shop_block], tmp_path, env)
        assert re.search(r"TILL1-000001\s.*INV-000001", out), out
        # The reports section reads the same relay folder.
        (reports,) = [b for b in blocks_under("## Central reports")
                      if b and all(line.startswith("tillsync report ") for line in b)]
        shell([line.replace("TILL1-000042", "TILL1-000001") for line in reports], tmp_path,
              env)
        api_block_runs_against_the_daemon(tmp_path, env)
    finally:
        stop(relay)
        log.close()


def api_block_runs_against_the_daemon(shop: Path, env: dict[str, str]) -> None:
    """The HTTP API section's curl block, pasted while ``peer run ./till1`` serves it."""
    (block,) = blocks_under("## The till's HTTP API")
    port = str(free_port())
    with open(shop / "till1.log", "w") as log:
        daemon = subprocess.Popen(
            ["tillsync", "peer", "run", "./till1", "--no-lan", "--no-relay", "--api-port",
             port], cwd=shop, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)
        try:
            wait_for_line(daemon, shop / "till1.log", "serving the till's API")
            lines = [line.replace("8767", port) for line in block]
            assert lines[-1].startswith("curl -N ")  # the live events: endless, so bounded
            lines[-1] = lines[-1].replace("curl -N ", "curl -N --max-time 2 ") + " || true"
            out = shell(lines, shop, env)
        finally:
            stop(daemon)
    assert '"ticket": "TILL1-000002"' in out and '"full":false' in out, out
    assert ": connected" in out, out


def test_a_till_from_the_command_line_runs_as_written(tmp_path: Path) -> None:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}"
           f"{os.environ.get('PATH', '')}"}
    (block,) = blocks_under("## A till from the command line")[:1]
    out = shell(block, tmp_path, env)
    assert "ok:" in out and "TILL1-000001" in out, out


def wait_for_line(proc: subprocess.Popen[bytes], log: Path, text: str) -> None:
    deadline = time.monotonic() + 60
    while text not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port
