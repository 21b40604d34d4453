"""Node automerge-repo clients for the tests (``tests/js/``, packages pinned in its
package.json and installed by ``npm ci``, as `.ci/run` does)."""

from __future__ import annotations

import json
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

from tests.doubles import REPO
from tests.services import unavailable

JS = REPO / "tests" / "js"
TIMEOUT = 30.0


def node() -> str:
    """The node binary, once tests/js's packages are installed (else fail in CI, skip
    elsewhere)."""
    binary = shutil.which("node")
    if binary is None:
        unavailable("Node.js", "no `node` on PATH", "install Node.js 20 or later")
    if not (JS / "node_modules" / "@automerge" / "automerge-repo").is_dir():
        unavailable("automerge-repo for Node", "tests/js/node_modules is missing",
                    "run `npm ci` in tests/js")
    return binary


def refused_status(url: str) -> str:
    """"open" if a websocket to ``url`` opens, else the HTTP status that refused it."""
    done = subprocess.run([node(), "auth.mjs", url], cwd=JS, capture_output=True, text=True,
                          timeout=TIMEOUT, check=True)
    return done.stdout.strip()


class JsClient:
    """One automerge-repo Repo in a Node process, holding the store's document."""

    def __init__(self, ws_url: str, doc_url: str, log: Path, actor: str | None = None) -> None:
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [node(), "client.mjs", ws_url, doc_url, *([actor] if actor else [])], cwd=JS,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True)
        self._lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self._answer()
        assert ready.get("ready"), ready
        self.first: dict[str, Any] = ready["doc"]

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _answer(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"the Node client said nothing for {timeout} s") from None
        if line is None:
            self._log.flush()
            raise AssertionError(f"the Node client exited: {self.proc.wait()}\n"
                                 f"{Path(self._log.name).read_text()[-3000:]}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, timeout: float = TIMEOUT, **args: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        return self._answer(timeout)

    def read(self) -> dict[str, Any]:
        doc: dict[str, Any] = self.call("read")["doc"]
        return doc

    def wait(self, path: list[str], value: Any, timeout: float = TIMEOUT) -> dict[str, Any]:
        """The document once ``doc[path...] == value``."""
        doc: dict[str, Any] = self.call("wait", timeout, path=path, value=value)["doc"]
        return doc

    def change(self, *edits: tuple[list[str], Any, str]) -> None:
        self.call("change", edits=[list(e) for e in edits])

    def errors(self) -> list[str]:
        errors: list[str] = self.call("errors")["errors"]
        return errors

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.call("close", timeout=10)
                self.proc.wait(timeout=10)
            except (AssertionError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self._log.close()

    def __enter__(self) -> JsClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NodeScript:
    """A Node script given as text (run from tests/js, so its packages resolve), with
    ``args``; its standard output read line by line."""

    def __init__(self, script: str, args: list[str], log: Path) -> None:
        self._log = open(log, "w")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen([node(), "--input-type=module", "-", *args], cwd=JS,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, text=True)
        assert self.proc.stdin is not None
        self.proc.stdin.write(script)
        self.proc.stdin.close()
        self.lines: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_line(self, wanted: str, timeout: float = TIMEOUT) -> None:
        """Read on until the script prints the line ``wanted`` (or fail, with its output)."""
        while wanted not in self.lines:
            try:
                line = self._queue.get(timeout=timeout)
            except queue.Empty:
                line = None
            if line is None:
                self._log.flush()
                raise AssertionError(f"no line {wanted!r} from the Node script; it printed "
                                     f"{self.lines[-20:]}\n{Path(self._log.name).read_text()}")
            self.lines.append(line)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self._log.close()

    def __enter__(self) -> NodeScript:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
