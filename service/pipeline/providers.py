"""Execution providers: which ONNX Runtime backend (CPU, CUDA, TensorRT, ...) runs the sessions.

The service setting ``providers`` is an ordered wish list in short names (``["CUDA", "CPU"]``;
onnxruntime's full names are accepted too). ``resolve`` keeps the ones this onnxruntime build has
and says, as a warning, which it dropped; nothing left is a ``ProviderError``, because falling back
to a provider the operator did not list would hide a broken GPU installation. After a session is
created ``check_session`` compares what it actually took with what was asked: an available provider
that did not take it (its libraries missing, say) is a fallback warning too. ``per_provider`` picks a
per-provider setting (``inference_threads``, ``inference_parallel``) for the provider that runs a
session. The fallback rule is documented in docs/operations.md, "Execution providers (GPU)".

``ModelError`` is defined here, below ``onnx_model.py`` (which imports this module and re-exports it),
so that ``ProviderError`` can be one without an import cycle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import onnxruntime as ort

#: Short name -> onnxruntime provider name, in the order the messages list them.
PROVIDERS: dict[str, str] = {
    "CPU": "CPUExecutionProvider",
    "CUDA": "CUDAExecutionProvider",
    "TensorRT": "TensorrtExecutionProvider",
    "ROCm": "ROCMExecutionProvider",
    "OpenVINO": "OpenVINOExecutionProvider",
    "DirectML": "DmlExecutionProvider",
    "CoreML": "CoreMLExecutionProvider",
}

#: The onnxruntime package that brings each non-CPU provider (what the error tells to install).
PACKAGES: dict[str, str] = {
    "CUDA": "onnxruntime-gpu", "TensorRT": "onnxruntime-gpu with TensorRT", "ROCm": "onnxruntime-rocm",
    "OpenVINO": "onnxruntime-openvino", "DirectML": "onnxruntime-directml", "CoreML": "onnxruntime on macOS",
}

#: Where a provider's outputs live (``IOBinding.bind_output``); the others compute in CPU memory.
OUTPUT_DEVICES: dict[str, str] = {"CUDA": "cuda", "TensorRT": "cuda", "DirectML": "dml"}

#: Per-provider settings without an entry for the running provider nor for CPU take these.
DEFAULT_THREADS = 1
DEFAULT_PARALLEL = 2

#: short and full names, lower case -> short name
_BY_LOWER = {name.lower(): short for short, full in PROVIDERS.items() for name in (short, full)}


class ModelError(RuntimeError):
    """A model file that cannot be served (missing card, card and graph disagree, no usable provider, ...)."""


class ProviderError(ModelError):
    """None of the requested execution providers can run a session (one line, naming the fix)."""


def short_name(name: str) -> str:
    """The short name of a provider given by short or full name (any case); ValueError naming the known ones."""
    try:
        return _BY_LOWER[name.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown execution provider {name!r}; known: {', '.join(PROVIDERS)} "
                         "(or onnxruntime's full names, e.g. CUDAExecutionProvider)") from None


def full_name(name: str) -> str:
    """onnxruntime's name of a provider given by short or full name."""
    return PROVIDERS[short_name(name)]


def display(name: str) -> str:
    """The short name of an onnxruntime provider name, the name itself when it has none (e.g. Azure's)."""
    return _BY_LOWER.get(name.lower(), name)


def normalize(names: Sequence[str]) -> list[str]:
    """Requested providers as short names, in order, each once; ValueError for an unknown name or none."""
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    for name in names:
        if (short := short_name(name)) not in out:
            out.append(short)
    if not out:
        raise ValueError(f"at least one execution provider is needed, e.g. [\"CPU\"]; known: {', '.join(PROVIDERS)}")
    return out


def normalize_table(value: int | Mapping[str, int]) -> int | dict[str, int]:
    """A per-provider setting: a plain int (every provider), or a table with its keys as short names."""
    if isinstance(value, Mapping):
        return {short_name(key): int(n) for key, n in value.items()}
    return value


def per_provider(value: int | Mapping[str, int], provider: str, default: int) -> int:
    """The value of a per-provider setting for ``provider``: the int itself, else the table's entry for
    ``provider``, else its CPU entry, else ``default``."""
    if not isinstance(value, Mapping):
        return int(value)
    table = normalize_table(value)
    return table.get(short_name(provider), table.get("CPU", default))


def available() -> list[str]:
    """The full names of the providers this onnxruntime build has, in onnxruntime's order."""
    return list(ort.get_available_providers())


def _known(names: Sequence[str]) -> str:
    """``CUDA, CPU``: the providers of ``names`` scanlens knows (leaves out Azure and the like)."""
    return ", ".join(display(n) for n in names if n in PROVIDERS.values()) or "none"


def resolve(requested: Sequence[str], have: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """The full names to ask a session for (the requested ones this build has, in the requested order)
    and a warning for each one left out; ProviderError when none is left. ``have``: the build's
    providers (default ``onnxruntime.get_available_providers()``)."""
    have = available() if have is None else list(have)
    wanted = normalize(requested)
    kept = [PROVIDERS[s] for s in wanted if PROVIDERS[s] in have]
    missing = [s for s in wanted if PROVIDERS[s] not in have]
    if not kept:
        these = ", ".join(missing)
        verb = "is" if len(missing) == 1 else "are"
        packages = ", ".join(dict.fromkeys(f"{PACKAGES[s]} (for {s})" for s in missing if s in PACKAGES))
        raise ProviderError(
            f"execution provider{'s' if len(missing) > 1 else ''} {these} {verb} not available in this onnxruntime "
            f"build (available: {_known(have)}): install {packages or 'an onnxruntime build that has it'} in place "
            "of onnxruntime, or add \"CPU\" to providers (--provider CPU) to allow the fallback")
    fallback = display(kept[0])
    return kept, [f"execution provider {s} is not available in this onnxruntime build (available: {_known(have)}); "
                  f"falling back to {fallback}" for s in missing]


def check_session(asked: Sequence[str], active: Sequence[str]) -> list[str]:
    """After a session was created with the providers ``asked`` (full names, all available): a warning for
    each one that did not take it (``active``: ``session.get_providers()``); ProviderError when none did."""
    taken = [p for p in asked if p in active]
    lost = [display(p) for p in asked if p not in active]
    if not taken:
        raise ProviderError(
            f"execution provider {', '.join(lost)} is in this onnxruntime build but did not take the session "
            f"(active: {_known(active)}); check its libraries (CUDA and cuDNN for onnxruntime-gpu) and onnxruntime's "
            "log, or add \"CPU\" to providers (--provider CPU) to allow the fallback")
    return [f"execution provider {p} is available but did not take the session (its libraries may be missing; "
            f"see onnxruntime's log); falling back to {display(taken[0])}" for p in lost]


def output_device(provider: str) -> str:
    """The device a provider's outputs are bound to (``"cuda"``, ``"dml"`` or ``"cpu"``)."""
    return OUTPUT_DEVICES.get(display(provider), "cpu")
