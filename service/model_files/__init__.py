"""The recognizers shipped with scanlens (ONNX files with model cards), and where a user's own models live.

The service loads the shipped models (``MODEL_DIR``, or ``--model-dir``) and, next to them, the user
model directory (:func:`user_model_dir`); ``scanlens train ...`` writes to the user model directory
unless ``--out`` or ``--replace-shipped`` says otherwise. A user model never shadows a shipped one: a
name found in both directories is a start-up error, and ``scanlens train`` refuses to write a shipped
model's name into the user directory (see docs/operations.md, "Models").
"""

from __future__ import annotations

import os
from pathlib import Path

#: Folder of the shipped ``*.onnx`` recognizers.
MODEL_DIR = Path(__file__).resolve().parent

#: Environment variable that sets the user model directory (also the service setting ``user_model_dir``).
USER_MODEL_DIR_ENV = "SCANLENS_USER_MODEL_DIR"


def user_model_dir() -> Path:
    """The user model directory: ``$SCANLENS_USER_MODEL_DIR``, else ``$XDG_DATA_HOME/scanlens/models``,
    else ``~/.local/share/scanlens/models``. The one rule that both the service and ``scanlens train`` use;
    the directory need not exist."""
    if explicit := os.environ.get(USER_MODEL_DIR_ENV):
        return Path(explicit).expanduser()
    data_home = os.environ.get("XDG_DATA_HOME", "")
    base = Path(data_home) if os.path.isabs(data_home) else Path.home() / ".local" / "share"  # relative: ignored (XDG)
    return base / "scanlens" / "models"


__all__ = ["MODEL_DIR", "USER_MODEL_DIR_ENV", "user_model_dir"]
