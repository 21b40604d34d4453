"""One installed name: the folders install as ``tillsync.peer``, ``tillsync.relay``,
``tillsync.schemas`` and ``tillsync.tools``, and nothing else of tillsync's is importable
by a top-level name a project of its own may use (``tools``, ``schemas``)."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from tests.doubles import REPO

FOLDERS = ("peer", "relay", "schemas", "tools")


def test_every_folder_with_code_or_data_is_a_listed_package() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    listed = set(config["tool"]["setuptools"]["packages"])
    mapping = config["tool"]["setuptools"]["package-dir"]
    assert mapping == {f"tillsync.{f}": f for f in FOLDERS}
    wanted = set()
    for folder in FOLDERS:
        for path in [REPO / folder, *(REPO / folder).rglob("*")]:
            if path.is_dir() and path.name != "__pycache__" and any(
                    p.is_file() for p in path.iterdir()):
                wanted.add("tillsync." + ".".join(path.relative_to(REPO).parts))
    assert listed == wanted, (f"add to pyproject.toml: {sorted(wanted - listed)}; "
                              f"remove: {sorted(listed - wanted)}")


def test_only_the_tillsync_name_is_installed(tmp_path: Path) -> None:
    """Run from elsewhere, with no path of the repository's own: what a project that
    installed tillsync sees."""
    code = """
import importlib, importlib.util, json
from importlib.resources import files
out = {name: importlib.util.find_spec(name) is not None
       for name in ("peer", "relay", "schemas", "tools")}
import tillsync.tools.cli, tillsync.relay.server, tillsync.peer.store
out["sale schema"] = (files("tillsync.schemas") / "entries" / "sale.json").is_file()
out["page"] = (files("tillsync.peer.http") / "static" / "index.html").is_file()
out["dashboard"] = (files("tillsync.relay") / "dashboard.html").is_file()
print(json.dumps(out))
"""
    result = subprocess.run([sys.executable, "-I", "-c", code], cwd=tmp_path,
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == (
        '{"peer": false, "relay": false, "schemas": false, "tools": false, '
        '"sale schema": true, "page": true, "dashboard": true}'), result.stderr
