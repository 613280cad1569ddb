"""Service configuration: defaults < TOML file (``--config``) < ``SCANLENS_*`` environment < CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from ..model_files import MODEL_DIR, user_model_dir

#: The per-provider settings and their bounds: one value for every execution provider, or a table by
#: provider short name (``{CPU = 2, CUDA = 1}``); the pipeline picks the running provider's entry
#: (``scanlens.pipeline.per_provider``: else the CPU entry, else the default, 1 thread and 2 runs)
PER_PROVIDER_BOUNDS = {"inference_threads": (1, 64), "inference_parallel": (1, 16)}
#: ``frame_tile_px``'s default, scanlens.pipeline.frames.DEFAULT_TILE_PX (not imported: ONNX Runtime would load
#: for ``--help``; tests/test_tiles.py checks that they agree), and its least value other than 0
FRAME_TILE_PX, MIN_FRAME_TILE_PX = 512, 128


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCANLENS_", extra="forbid")

    ingest: str = Field("tcp://127.0.0.1:5555", description="PULL endpoint instruments PUSH to (port 0: any free port)")
    publish: str = Field("tcp://127.0.0.1:5556", description="PUB endpoint for maps, events, summaries, status")
    control: str = Field("tcp://127.0.0.1:5557", description="ROUTER endpoint for status/models/scans/snapshot")
    curve_secret_key: Path | None = Field(None, description="the service's secret CURVE certificate (NAME.key_secret "
                                          "from `scanlens keys create`): CurveZMQ on all three sockets")
    curve_allowed_keys: Path | None = Field(None, description="directory of the public certificates (*.key) of the "
                                            "clients allowed to connect (with curve_secret_key)")
    network_isolated: bool = Field(False, description="without CURVE keys, bind non-loopback endpoints anyway (the "
                                   "network is isolated); a warning at every start")
    model_dir: Path = Field(MODEL_DIR, description="directory of *.onnx recognizers with model cards")
    user_model_dir: Path | None = Field(
        default_factory=user_model_dir,
        description="the user's own *.onnx models, loaded next to model_dir (`scanlens train` writes there); "
                    "default $SCANLENS_USER_MODEL_DIR, else $XDG_DATA_HOME/scanlens/models, else "
                    "~/.local/share/scanlens/models; need not exist. A name in both directories is a start-up error")
    models: list[str] | None = Field(None, description="load only these recognizers (default: all in model_dir "
                                                       "and user_model_dir)")
    providers: list[str] = Field(
        ["CPU"], description="ONNX Runtime execution providers in order of preference: CPU, CUDA, TensorRT, ROCm, "
                             "OpenVINO, DirectML, CoreML (or onnxruntime's full names). One this onnxruntime build "
                             "lacks, or that does not take a session, is left out with a warning (log and status) "
                             "while a listed one remains; none left is a start-up error, so list CPU last to allow "
                             "the fallback (docs/operations.md, \"Execution providers (GPU)\")")
    inference_threads: int | dict[str, int] = Field(
        1, description="ONNX Runtime intra-op threads of one inference run (1-64); or per provider, {CPU = 2, "
                       "CUDA = 1}: the entry of the provider that runs the session, else the CPU entry, else 1")
    inference_parallel: int | dict[str, int] = Field(
        2, description="inference runs in flight at once per recognizer (1-16); or per provider, {CPU = 2, CUDA = "
                       "1}: the entry of the provider that runs the recognizer's session, else the CPU entry, else 2")
    frame_tile_px: int = Field(
        FRAME_TILE_PX, ge=0, description="frames longer than this many model pixels on a side (after rescaling to the "
        "model's pixel size) are segmented in overlapping tiles of about this size, each with the card's margin of "
        "context (64 px unless it says), to bound ONNX Runtime's memory per run; 0: whole frames, at least 128 "
        "otherwise (docs/operations.md, \"Memory\")")
    pca_components: int = Field(4, ge=1, le=32, description="principal components the built-in pca analyzer maps")
    max_batch_pixels: int = Field(4096, ge=1, description="largest inference batch, in pixels")
    queue_pixels: int = Field(65536, ge=1, description="pixels queued per recognizer before ingest backs off")
    inline_lone_lines: bool = Field(True, description="a lone line that already is a recognizer's input, arriving "
                                    "while that recognizer has nothing queued or running, runs on the event loop "
                                    "when its run should take 3 ms at most and no other message waits, instead of "
                                    "waking an inference thread (lower latency for a slow instrument; "
                                    "docs/performance.md); false: only lines of at most 4 spectra do")
    ingest_queue_bytes: int | None = Field(None, ge=1, description="bytes of received data queued for the "
                                           "recognizers, over all of them, before ingest backs off (default: a "
                                           "sixteenth of memory_budget_bytes); reserved in "
                                           "memory_budget_bytes as max(this, max_message_bytes): one message of any "
                                           "size always fits")
    ingest_hwm: int = Field(1000, ge=1, description="messages of one sender that ZeroMQ holds for the service "
                            "before it reads them (the ingest socket's receive high-water mark; each at most "
                            "max_message_bytes; default ZeroMQ's). A small value (2) bounds this memory, but a "
                            "backlog then waits in the sender's own queue, which libzmq may drop when the sender "
                            "closes: only for senders that wait for their scan_summary (docs/operations.md, "
                            "\"Memory\")")
    max_scan_pixels: int = Field(16 * 1024 * 1024, ge=1, description="largest rows*cols accepted at scan_start")
    shm_ingest: bool = Field(True, description="take shared-memory rings from senders on this host (a local ingest "
                             "endpoint: loopback tcp or ipc): payloads then travel in memory both map, not over the "
                             "socket (docs/protocol.md §3.6); false: every payload comes in its message")
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest data payload accepted")
    max_open_scans: int = Field(16, ge=1, description="scans open at once; more are refused")
    keep_closed_scans: int = Field(8, ge=0, description="closed scans kept for snapshot/scans requests")
    scan_timeout_s: float = Field(60.0, gt=0, description="close a scan after this long without a message")
    start_timeout_s: float = Field(10.0, gt=0, description="close a scan that sent no data this long after scan_start")
    memory_budget_bytes: int = Field(4 * 2**30, ge=2**20, description="maps and results of all open and retained "
                                     "scans, and the ingest queues (ingest_queue_bytes, or max_message_bytes if "
                                     "more); a scan_start that does not fit is refused")
    max_reply_bytes: int = Field(64 * 2**20, ge=2**16, description="largest control reply; bigger snapshots are "
                                 "refused with how many rows to ask for at a time (the client does this itself)")
    status_interval_s: float = Field(0.25, gt=0, description="period of the status heartbeat on the PUB socket")
    publish_hwm: int = Field(100_000, ge=1, description="messages queued per subscriber before ZeroMQ drops")
    record_dir: Path | None = Field(None, description="record every scan into this directory: one HDF5 file per "
                                    "scan (<scan_id>.h5, HyperSpy-readable), journaled while the scan is open; None: "
                                    "no recording (docs/operations.md, \"Recording scans\")")
    record_budget_bytes: int = Field(50 * 2**30, ge=1, description="the most bytes the recordings and journals in "
                                     "record_dir may occupy; a scan that would exceed it stops being recorded (a "
                                     "recording_stopped event), the scan goes on")
    trainer: Literal["warm", "on_demand", "off"] = Field(
        "on_demand", description="live training (docs/live-training.md): the trainer process (torch, the train "
                                 "extra) starts with the service (warm), at the first train request and stays "
                                 "(on_demand), or train requests are refused (off)")
    trainer_threads: int = Field(1, ge=1, le=64, description="torch threads of the trainer process (1 leaves the "
                                 "other core of a small machine to acquisition)")
    train_budget_s: float = Field(8.0, gt=0, le=3600, description="seconds a spectral train job may take when the "
                                  "request gives no budget_s")
    train_frame_budget_s: float = Field(25.0, gt=0, le=3600, description="seconds a frame train job may take when "
                                        "the request gives no budget_s")
    retain_frames: int = Field(8, ge=1, le=4096, description="frames a movie started with retain keeps (its "
                               "latest), for train requests on one of them")
    metrics: str | None = Field(None, description="HOST:PORT of the Prometheus /metrics endpoint (HTTP, no "
                                "authentication; port 0: any free port), e.g. 127.0.0.1:9464; None: no endpoint. "
                                "Loopback only unless network_isolated (docs/operations.md)")

    @field_validator("user_model_dir", mode="before")
    @classmethod
    def _empty_user_model_dir_is_the_default(cls, value: object) -> object:
        # SCANLENS_USER_MODEL_DIR="" means unset, as in user_model_dir(), not the current directory
        return user_model_dir() if value == "" else value

    @field_validator("providers")
    @classmethod
    def _providers_are_known(cls, value: list[str]) -> list[str]:
        from ..pipeline import normalize_providers  # ONNX Runtime only when settings are made, not for --help

        return normalize_providers(value)

    @field_validator("inference_threads", "inference_parallel")
    @classmethod
    def _per_provider(cls, value: int | dict[str, int], info: ValidationInfo) -> int | dict[str, int]:
        from ..pipeline import provider_table

        lo, hi = PER_PROVIDER_BOUNDS[info.field_name]
        value = provider_table(value)
        for provider, n in (value.items() if isinstance(value, dict) else [(None, value)]):
            if not lo <= n <= hi:
                raise ValueError(f"{provider + ': ' if provider else ''}must be {lo} to {hi}")
        return value

    @field_validator("frame_tile_px")
    @classmethod
    def _tiles_not_tiny(cls, value: int) -> int:
        if 0 < value < MIN_FRAME_TILE_PX:
            raise ValueError(f"must be 0 (whole frames) or at least {MIN_FRAME_TILE_PX}")
        return value

    @field_validator("metrics")
    @classmethod
    def _metrics_is_host_port(cls, value: str | None) -> str | None:
        if value is not None:
            metrics_address(value)
        return value

    @model_validator(mode="after")
    def _curve_keys_together(self) -> Settings:
        if (self.curve_secret_key is None) != (self.curve_allowed_keys is None):
            given, missing = (("curve_secret_key", "curve_allowed_keys") if self.curve_allowed_keys is None
                              else ("curve_allowed_keys", "curve_secret_key"))
            raise ValueError(f"{given} is set but {missing} is not: CURVE needs both the service's secret key "
                             "file and the directory of allowed client keys")
        return self

    @property
    def curve_enabled(self) -> bool:
        """Whether CurveZMQ authentication is configured."""
        return self.curve_secret_key is not None

    @property
    def ingest_queue(self) -> int:
        """``ingest_queue_bytes``, or its default: a sixteenth of the memory budget."""
        if self.ingest_queue_bytes is not None:
            return self.ingest_queue_bytes
        return self.memory_budget_bytes // 16


def metrics_address(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (an IPv6 host in brackets) -> (host, port); ValueError naming the expected form."""
    host, _, port = value.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"metrics must be HOST:PORT, e.g. 127.0.0.1:9464 (port 0: any free port), got {value!r}")
    return host, int(port)


def load_settings(config: Path | None = None, **overrides: object) -> Settings:
    """Settings from an optional TOML file, the environment and explicit ``overrides`` (None = unset)."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if config is not None and not Path(config).is_file():
        raise FileNotFoundError(f"config file {config} does not exist")

    class _FromFile(Settings):
        @classmethod
        def settings_customise_sources(cls, settings_cls: type[BaseSettings],
                                       init_settings: PydanticBaseSettingsSource,
                                       env_settings: PydanticBaseSettingsSource,
                                       dotenv_settings: PydanticBaseSettingsSource,
                                       file_secret_settings: PydanticBaseSettingsSource,
                                       ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config))
            return tuple(sources)

    return _FromFile(**overrides)


class InsecureBindError(ValueError):
    """The configuration binds a non-loopback endpoint without authentication (secure default)."""


def unauthenticated_binds(settings: Settings) -> dict[str, str]:
    """The endpoints (by socket name) that other hosts could reach without authentication: the ZeroMQ
    ones that are not loopback, ``ipc://`` or ``inproc://`` (none with CURVE keys), and the metrics
    endpoint when it is not on loopback (it has no authentication, CURVE or not)."""
    from ..transport.sockets import is_local_endpoint  # keeps `scanlens --help` free of pyzmq

    endpoints = {} if settings.curve_enabled else {
        "ingest": settings.ingest, "publish": settings.publish, "control": settings.control}
    exposed = {name: ep for name, ep in endpoints.items() if not is_local_endpoint(ep)}
    if settings.metrics is not None and not is_local_endpoint(f"tcp://{settings.metrics}"):
        exposed["metrics"] = f"http://{settings.metrics}"
    return exposed


def check_binds(settings: Settings) -> dict[str, str]:
    """The secure default, checked at start-up: InsecureBindError when an endpoint other hosts could
    reach would be bound without CURVE keys, unless ``network_isolated``; returns those endpoints."""
    exposed = unauthenticated_binds(settings)
    if exposed and not settings.network_isolated:
        where = ", ".join(f"{name} {ep}" for name, ep in exposed.items())
        fix = ("configure curve_secret_key and curve_allowed_keys (see `scanlens keys create` and "
               "docs/operations.md)" if set(exposed) - {"metrics"} else
               "metrics have none: bind them to loopback and reach them through an SSH tunnel "
               "(docs/operations.md, \"Metrics (Prometheus)\")")
        raise InsecureBindError(f"refusing to bind {where} without authentication (not a loopback address): "
                                f"{fix}, or set network_isolated = true if this network is isolated")
    return exposed
