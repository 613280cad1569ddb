"""``scanlens keys``: create and list CurveZMQ key pairs (pyzmq certificate files).

A pair NAME is two files: ``NAME.key`` (the public certificate, to hand out) and ``NAME.key_secret``
(public and secret key, mode 0600, to keep). The service reads its own ``server.key_secret``
(``curve_secret_key``) and a directory of the clients' ``*.key`` files (``curve_allowed_keys``); a
client needs its own ``.key_secret`` and the service's ``server.key`` (docs/operations.md).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="CurveZMQ key pairs for authenticated scanlens sockets: `keys create NAME` writes NAME.key (public, "
         "hand it out) and NAME.key_secret (secret, mode 0600, keep it); `keys list` shows a directory's pairs.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEFAULT_DIR = Path("keys")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

KeyDir = Annotated[Path, typer.Option("--dir", help="directory of the key files (created if missing, mode 0700)",
                                      file_okay=False)]


@app.callback()
def _group() -> None:
    """CurveZMQ key pairs (pyzmq certificate files)."""


@app.command()
def create(
    name: Annotated[str, typer.Argument(help="name of the pair, e.g. server or an instrument's name: NAME.key and "
                                             "NAME.key_secret")],
    key_dir: KeyDir = DEFAULT_DIR,
) -> None:
    """Create a CURVE key pair NAME.key (public) and NAME.key_secret (secret, mode 0600) in --dir (default ./keys).

    An existing pair is never overwritten.

    The service reads its server.key_secret (config key curve_secret_key).

    Each client's NAME.key goes into the service's directory of allowed keys (curve_allowed_keys).

    A client needs its own NAME.key_secret and the service's server.key (--client-key, --server-key).
    """
    import zmq.auth

    if not _NAME.fullmatch(name) or name.endswith((".key", ".key_secret")):
        typer.echo(f"error: {name!r} is not a key name (letters, digits, '.', '_', '-'; up to 64; "
                   "without .key)", err=True)
        raise typer.Exit(2)
    public, secret = key_dir / f"{name}.key", key_dir / f"{name}.key_secret"
    if existing := [str(p) for p in (public, secret) if p.exists()]:
        typer.echo(f"error: {' and '.join(existing)} already {'exists' if len(existing) == 1 else 'exist'}; "
                   "not overwritten (remove the old pair first, or choose another name)", err=True)
        raise typer.Exit(1)
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # written in a private directory, modes set, then moved into place: the secret is never readable by others
        staging = Path(tempfile.mkdtemp(prefix=".keys-", dir=key_dir))
        try:
            made_public, made_secret = (Path(p) for p in zmq.auth.create_certificates(staging, name))
            os.chmod(made_secret, 0o600)
            os.chmod(made_public, 0o644)
            for made, final in ((made_secret, secret), (made_public, public)):
                _place(made, final)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:
        typer.echo(f"error: cannot write the key pair in {key_dir}: {exc}", err=True)
        raise typer.Exit(1) from None
    key, _ = zmq.auth.load_certificate(public)
    typer.echo(f"created {public} (public) and {secret} (secret, mode 0600); public key {key.decode()}")


def _place(made: Path, final: Path) -> None:
    """Move ``made`` to ``final``, never over an existing file (FileExistsError)."""
    try:
        os.link(made, final)  # atomic, and fails if ``final`` appeared meanwhile
    except FileExistsError:
        raise
    except OSError:  # a filesystem without hard links
        if final.exists():
            raise FileExistsError(f"{final} exists") from None
        os.replace(made, final)


@app.command("list")
def list_keys(key_dir: KeyDir = DEFAULT_DIR) -> None:
    """List the key pairs and public keys in --dir (default ./keys): name, z85 public key, secret file present."""
    import zmq.auth

    if not key_dir.is_dir():
        typer.echo(f"error: {key_dir} is not a directory", err=True)
        raise typer.Exit(1)
    names = sorted({p.name.rsplit(".", 1)[0] for p in key_dir.iterdir()
                    if p.is_file() and p.suffix in (".key", ".key_secret")})
    if not names:
        typer.echo(f"no keys in {key_dir} (create a pair with `scanlens keys create NAME --dir {key_dir}`)")
        return
    width = max(len(n) for n in names)
    typer.echo(f"{'name':<{width}}  {'public key (z85)':<40}  secret")
    for name in names:
        public, secret = key_dir / f"{name}.key", key_dir / f"{name}.key_secret"
        try:
            key, _ = zmq.auth.load_certificate(public if public.is_file() else secret)
            shown = key.decode("ascii", "replace")
        except (OSError, ValueError) as exc:
            shown = f"unreadable: {exc}"
        typer.echo(f"{name:<{width}}  {shown:<40}  {'yes' if secret.is_file() else 'no'}")
