"""README's two set-up commands stay what a new user and CI run."""

from __future__ import annotations

from tests.doubles import REPO


def test_readme_opens_with_run_and_test_commands_and_ci_runs_the_test_one() -> None:
    readme = (REPO / "README.md").read_text().splitlines()
    start = readme.index("```")
    run_cmd, test_cmd = readme[start + 1], readme[start + 2]
    assert readme[start + 3] == "```" and readme[0].startswith("# ")
    assert start <= 2, "the commands come first"
    assert "tillsync demo" in run_cmd and "pip install" in run_cmd
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert test_cmd in ci, "README's test command and .ci/run differ"
