"""A client of a running daemon's HTTP API for tests: every answer is checked against
the schema the daemon's own OpenAPI document declares for its route and status."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from tillsync.peer.files import MEDIA_TYPES


@dataclass
class Answer:
    status: int
    body: Any
    content_type: str


@dataclass
class Api:
    base: str
    token: str | None
    document: dict[str, Any] = field(default_factory=dict)
    checked: set[tuple[str, str, int]] = field(default_factory=set)

    @classmethod
    def of(cls, store: Path) -> Api:
        base = json.loads((store / "api.json").read_text())["url"]
        api = cls(base, (store / "api.token").read_text().strip())
        api.document = api.call("GET", "/openapi.json").body
        return api

    def with_token(self, token: str | None) -> Api:
        return Api(self.base, token, self.document, self.checked)

    def call(self, method: str, template: str, body: Any = None, *, raw: bytes | None = None,
             content_type: str = "application/json", query: str = "",
             **params: str) -> Answer:
        """One request; the answer's body is parsed JSON, text, or bytes (a file)."""
        path = template.format(**params)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        request = urllib.request.Request(self.base + path + (f"?{query}" if query else ""),
                                         data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        if self.token is not None:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                status, kind, text = response.status, response.headers.get_content_type(), \
                    response.read()
        except urllib.error.HTTPError as error:
            status, kind, text = error.code, error.headers.get_content_type(), error.read()
        parsed: Any = text  # a file: its bytes, only its media type is checked
        if kind == "application/json":
            parsed = json.loads(text)
        elif kind not in MEDIA_TYPES:
            parsed = text.decode()
        if template in self.document.get("paths", {}):
            self._check(method, template, status, kind, parsed)
        return Answer(status, parsed, kind)

    def _check(self, method: str, template: str, status: int, kind: str, body: Any) -> None:
        operation = self.document["paths"][template][method.lower()]
        declared = operation["responses"].get(str(status))
        assert declared is not None, f"{method} {template} answered {status}, undeclared"
        content = declared["content"]
        assert kind in content, f"{method} {template} {status}: {kind} not declared"
        if isinstance(body, bytes):
            self.checked.add((method, template, status))
            return
        schema = {**content[kind]["schema"], "components": self.document["components"]}
        errors = sorted(Draft202012Validator(schema).iter_errors(body), key=str)
        assert not errors, (f"{method} {template} {status} does not match its schema: "
                            f"{[e.message for e in errors]}\n{body}")
        self.checked.add((method, template, status))


class Events:
    """The daemon's Server-Sent Events, read on a thread into a list."""

    def __init__(self, api: Api) -> None:
        request = urllib.request.Request(api.base + "/api/events")
        request.add_header("Authorization", f"Bearer {api.token}")
        self.response = urllib.request.urlopen(request, timeout=120)
        assert self.response.headers.get_content_type() == "text/event-stream"
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        kind = ""
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\n")
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("data: "):
                    self.received.append((kind, json.loads(line[6:])))
        except (OSError, ValueError, AttributeError):
            pass  # closed by ``close`` (http.client drops its file under the reader)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [data for k, data in list(self.received) if k == kind]

    def close(self) -> None:
        self.response.close()
        self._thread.join(10)
