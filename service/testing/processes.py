"""Running scanlens' command lines as real processes (the product as an operator starts it)."""

from __future__ import annotations

import asyncio
import sys


async def run_cli(*args: str, timeout: float = 120) -> str:
    """``python *args`` in a subprocess; its stdout. AssertionError (with the end of stderr) when it
    exits non-zero; the process is killed when it runs past ``timeout`` s (TimeoutError)."""
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(timeout):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    if proc.returncode != 0:
        raise AssertionError(err.decode()[-3000:])
    return out.decode()
