"""docs/protocol.md is complete: the client written in it (pyzmq + msgpack + numpy only) works."""

from __future__ import annotations

import asyncio
import re
import sys
from pathlib import Path

import pytest

from scanlens.model_files import MODEL_DIR
from scanlens.app.server import running

DOC = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"


def client_code() -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(r"<!-- client-example -->\s*```python\n(.*?)```", text, re.S)
    assert match, "protocol.md lost its client example"
    code = match.group(1)
    assert "scanlens" not in code and "from service" not in code, "the example must not use our code"
    return code


@pytest.fixture(params=["test-model", "shipped-models"])
async def any_server(request, settings):
    if request.param == "shipped-models":
        settings = settings.model_copy(update={"model_dir": MODEL_DIR})
    async with running(settings) as srv:
        yield srv


FROZEN_1_0 = Path(__file__).resolve().parent / "clients" / "protocol_1_0_client.py"


@pytest.mark.parametrize("client", ["doc", "1.0"])
async def test_client_from_the_doc_works(any_server, tmp_path, client):
    """The document's client (``doc``), and the same client as protocol 1.0 had it (``1.0``, frozen in
    tests/clients/): a 1.0 client keeps working against 1.1 (docs/protocol.md §9)."""
    script = tmp_path / "doc_client.py"
    script.write_text(client_code() if client == "doc" else FROZEN_1_0.read_text(encoding="utf-8"), encoding="utf-8")
    ep = any_server.endpoints
    proc = await asyncio.create_subprocess_exec(sys.executable, str(script), ep["ingest"], ep["publish"],
                                                ep["control"], stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    try:
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
    finally:
        if proc.returncode is None:  # timed out: do not leave the client running
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[-1].startswith("ok 32 pixels"), out.decode()
    # flat Poisson noise: the shipped EELS classifier (with novelty) flags it all and says so once; the
    # hand-made test model has no novelty and says nothing
    shipped = any_server.settings.model_dir == MODEL_DIR
    assert sum(line.startswith("event: mostly_foreign") for line in lines) == (1 if shipped else 0), lines
    assert lines[-1].endswith("novel 1.0" if shipped else "novel None"), lines[-1]
