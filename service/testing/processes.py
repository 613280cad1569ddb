"""Running scanlens' command lines as real processes (the product as an operator starts it)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CliResult:
    """How a command line ended: its exit status and what it printed."""

    returncode: int
    stdout: str
    stderr: str


async def run_cli_result(*args: str, timeout: float = 120) -> CliResult:
    """``python *args`` in a subprocess, whatever its exit status; the process is killed when it runs past
    ``timeout`` s (TimeoutError)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return CliResult(proc.returncode, out.decode(), err.decode())


async def run_cli(*args: str, timeout: float = 120) -> str:
    """``python *args`` in a subprocess; its stdout. AssertionError (with the end of stderr) when it
    exits non-zero; the process is killed when it runs past ``timeout`` s (TimeoutError)."""
    result = await run_cli_result(*args, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(result.stderr[-3000:])
    return result.stdout


@dataclass
class ServeProcess:
    """A running ``scanlens serve`` and the endpoints it logged (``ingest``, ``publish``, ``control``)."""

    proc: asyncio.subprocess.Process
    endpoints: dict[str, str]


@contextlib.asynccontextmanager
async def serve_process(model_dir: Path, tmp_dir: Path, *, timeout: float = 30,
                        args: Sequence[str] = ()) -> AsyncIterator[ServeProcess]:
    """``scanlens serve`` (with more ``args``, e.g. ``["--record", DIR]``) as a real process on free loopback
    ports, until the block ends (then killed if it still runs); stderr is left for the test to read after
    the start-up line."""
    cfg = Path(tmp_dir) / "serve.toml"
    cfg.write_text('ingest = "tcp://127.0.0.1:0"\npublish = "tcp://127.0.0.1:0"\ncontrol = "tcp://127.0.0.1:0"\n')
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "from scanlens.app.cli import main; main()", "serve", "--config", str(cfg),
        "--model-dir", str(model_dir), *args, stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            pattern = rb"ingest (tcp://\S+), publish (tcp://\S+), control (tcp://\S+);"
            while not (m := re.search(pattern, line := await proc.stderr.readline())):
                assert line, "serve exited before binding"
        names = ("ingest", "publish", "control")
        yield ServeProcess(proc, {n: g.decode().rstrip(",") for n, g in zip(names, m.groups())})
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
