"""The scanlens service in a process of its own, for the benchmarks; and the parent's side of such children.

    python bench/serve_process.py SETTINGS_JSON

SETTINGS_JSON: the service's ``Settings`` as one JSON object (``Settings.model_dump_json()``; port-0 ``tcp://``
or ``ipc://`` endpoints). Starts ``scanlens.app.server.Server``; once ``server.ready`` is set, prints
``{"endpoints": {...}, "pid": N}`` as one JSON line on stdout, then serves until SIGTERM or SIGINT
(``Server.stop``: open scans end "aborted", recordings are written) and exits 0. A start-up error is one
line on stderr and exit status 1.

``Child`` (parent side) runs any benchmark child that speaks this way, one JSON line per answer on
stdout, with a timeout on every wait: a child that dies or falls silent is a ``ChildError`` naming it and
the last line of its stderr, never a hang. ``ServiceProcess`` is this launcher as a ``Child``.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


class ChildError(RuntimeError):
    """A benchmark child process failed, exited early or did not answer in time."""


class Child:
    """A child process ``python ARGV...`` whose stdout is JSON lines; its stderr is kept (the last 50 lines)
    for the error message. Use as a context manager: a child still running on exit is terminated."""

    def __init__(self, name: str, argv: Sequence[Any]):
        self.name = name
        self.proc = subprocess.Popen([sys.executable, *map(str, argv)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._err: collections.deque[str] = collections.deque(maxlen=50)
        self._readers = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._readers:
            t.start()

    def _read_out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.strip():
                self._lines.put(line)
        self._lines.put(None)

    def _read_err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._err.append(line.rstrip())

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _why(self) -> str:
        if self.proc.poll() is not None:
            self._readers[1].join(timeout=2)  # its last words, once it has exited
        lines = [ln for ln in self._err if ln.strip()]
        return f": {lines[-1].strip()}" if lines else " (nothing on stderr)"

    def _exited(self, rc: int) -> ChildError:
        how = f"was killed by signal {-rc}" if rc < 0 else f"exited with status {rc}"
        return ChildError(f"{self.name} {how}{self._why()}")

    def check(self) -> None:
        """ChildError if the process has already exited with a failure."""
        rc = self.proc.poll()
        if rc is not None and rc != 0:
            raise self._exited(rc)

    def line(self, timeout: float, *, watch: Iterable[Child] = ()) -> dict:
        """The child's next JSON line; ChildError when it exits first, stays silent for ``timeout`` s, or
        one of the children in ``watch`` fails meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            for other in watch:
                other.check()
            left = deadline - time.monotonic()
            if left <= 0:
                raise ChildError(f"{self.name} gave no answer within {timeout:g} s")
            try:
                text = self._lines.get(timeout=min(left, 0.2))
            except queue.Empty:
                continue
            if text is None:
                try:
                    rc = self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self.kill()
                    raise ChildError(f"{self.name} closed its stdout without an answer and was killed") from None
                raise self._exited(rc) if rc else ChildError(f"{self.name} exited without an answer{self._why()}")
            try:
                return json.loads(text)
            except json.JSONDecodeError:
                raise ChildError(f"{self.name} printed something that is not JSON: {text.strip()[:200]!r}") from None

    def wait(self, timeout: float) -> None:
        """Wait for the child to end by itself; ChildError if it fails or takes longer than ``timeout`` s."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise ChildError(f"{self.name} did not exit within {timeout:g} s") from None
        if rc:
            raise self._exited(rc)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM, then wait up to ``timeout`` s (killed after that); ChildError unless it ended cleanly."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def __enter__(self) -> Child:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()


def peak_rss_mb(pid: int) -> float:
    """A live process's peak resident memory (``VmHWM`` of /proc/PID/status) in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise ChildError(f"no VmHWM in /proc/{pid}/status")


class ServiceProcess(Child):
    """The service with ``settings`` in its own process (this file's ``main``); ``endpoints`` once it is up."""

    def __init__(self, settings: Any, *, start_timeout: float = 60.0, name: str = "service"):
        super().__init__(name, [HERE / "serve_process.py", settings.model_dump_json()])
        try:
            self.endpoints: dict[str, str] = self.line(start_timeout)["endpoints"]
        except BaseException:
            self.__exit__()
            raise

    def peak_rss_mb(self) -> float:
        self.check()
        return peak_rss_mb(self.pid)


# --------------------------------------------------------------------------- the child


async def _serve(settings_json: str) -> None:
    import asyncio

    from scanlens.app.config import Settings
    from scanlens.app.server import Server

    server = Server(Settings(**json.loads(settings_json)))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.stop)
    task = asyncio.create_task(server.run(), name="scanlens-server")
    ready = asyncio.create_task(server.ready.wait())
    done, _ = await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if ready not in done:
        ready.cancel()
        task.result()  # the start-up error
        raise RuntimeError("the server stopped before it was ready")
    print(json.dumps({"endpoints": server.endpoints, "pid": os.getpid()}), flush=True)
    await task


def main(argv: list[str]) -> int:
    import asyncio
    import logging

    if len(argv) != 1:
        print("usage: python bench/serve_process.py SETTINGS_JSON", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="service: %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(_serve(argv[0]))
    except Exception as exc:  # one clear line for the parent's error message
        print(f"{type(exc).__name__}: {exc}".replace("\n", " "), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main(sys.argv[1:]))
