"""The README's two commands stay true: CI runs the README's test command, the demo command is real."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from scanlens.app.config import Settings
from scanlens.model_files import MODEL_DIR
from scanlens.testing import run_cli, serving

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


def readme_python_example() -> str:
    """The README's Python client example (its only ```python block), exactly as printed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.+?)\n```", text, flags=re.S)
    assert len(blocks) == 1, "the README has one Python example"
    return blocks[0]


@pytest.mark.timeout(180)
async def test_readme_client_example_runs_as_printed_against_the_shipped_models():
    """The example's code, unchanged, against `scanlens serve` with its defaults (the shipped models on
    ports 5555-5557): the scan is accepted by every EELS model and recognized completely. (It once used
    an axis from -10 eV to 118 eV, which the shipped models, 5-124.5 eV, refuse.)"""
    code = readme_python_example()
    assert 'Subscriber("tcp://127.0.0.1:5556"' in code and 'Instrument("tcp://127.0.0.1:5555")' in code
    settings = Settings(user_model_dir=None, inference_threads=1)  # the defaults of `scanlens serve`
    assert (settings.ingest, settings.publish, settings.model_dir) == (
        "tcp://127.0.0.1:5555", "tcp://127.0.0.1:5556", MODEL_DIR)
    async with serving(settings):
        printed = await run_cli("-c", code, timeout=150)
    state, rest = printed.strip().split(" ", 1)
    assert state == "complete", printed
    assert rest == "['eels-fit', 'eels-mlp'] (32, 32)", printed
