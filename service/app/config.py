"""Service configuration: defaults < TOML file (``--config``) < ``SCANLENS_*`` environment < CLI flags."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import (BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict,
                               TomlConfigSettingsSource)

from ..model_files import MODEL_DIR


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SCANLENS_", extra="forbid")

    ingest: str = Field("tcp://127.0.0.1:5555", description="PULL endpoint instruments PUSH to (port 0: any free port)")
    publish: str = Field("tcp://127.0.0.1:5556", description="PUB endpoint for maps, events, summaries, status")
    control: str = Field("tcp://127.0.0.1:5557", description="ROUTER endpoint for status/models/scans/snapshot")
    model_dir: Path = Field(MODEL_DIR, description="directory of *.onnx recognizers with model cards")
    models: list[str] | None = Field(None, description="load only these recognizers (default: all in model_dir)")
    inference_threads: int = Field(1, ge=1, le=64, description="ONNX Runtime intra-op threads of one inference run")
    inference_parallel: int = Field(2, ge=1, le=16, description="inference runs in flight at once per recognizer")
    pca_components: int = Field(4, ge=1, le=32, description="principal components the built-in pca analyzer maps")
    max_batch_pixels: int = Field(4096, ge=1, description="largest inference batch, in pixels")
    queue_pixels: int = Field(65536, ge=1, description="pixels queued per recognizer before ingest backs off")
    max_scan_pixels: int = Field(16 * 1024 * 1024, ge=1, description="largest rows*cols accepted at scan_start")
    max_message_bytes: int = Field(256 * 1024 * 1024, ge=1024, description="largest data payload accepted")
    max_open_scans: int = Field(16, ge=1, description="scans open at once; more are refused")
    keep_closed_scans: int = Field(8, ge=0, description="closed scans kept for snapshot/scans requests")
    scan_timeout_s: float = Field(60.0, gt=0, description="close a scan after this long without a message")
    status_interval_s: float = Field(0.25, gt=0, description="period of the status heartbeat on the PUB socket")
    publish_hwm: int = Field(100_000, ge=1, description="messages queued per subscriber before ZeroMQ drops")


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
