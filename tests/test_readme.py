"""The README's two commands stay true: CI runs the README's test command, the demo command is real."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", section)


def test_two_commands_and_ci_runs_the_test_one():
    demo, tests = readme_commands()
    assert demo.endswith("scanlens demo") and "pip install" in demo
    assert "pytest" in tests
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert tests in ci.splitlines(), ".ci/run must run the README's test command verbatim"


def test_readme_picture_is_committed():
    assert (ROOT / "docs" / "img" / "demo-eels.png").stat().st_size > 10_000
