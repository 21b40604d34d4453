"""The fenced code blocks of the project's markdown, for tests that run them as written."""

from __future__ import annotations

from pathlib import Path

from tests.doubles import REPO


def blocks_under(heading: str, path: Path = REPO / "README.md") -> list[list[str]]:
    """The fenced blocks of ``path``'s section ``heading``: each a list of lines."""
    text = path.read_text()
    start = text.index(f"\n{heading}\n")
    end = text.find("\n## ", start + 1)
    lines = text[start:end if end != -1 else None].splitlines()
    found, block = [], None
    for line in lines:
        if line.startswith("```"):
            if block is None:
                block = []
            else:
                found.append(block)
                block = None
        elif block is not None:
            block.append(line)
    return found
