"""All configuration, in one validated object.

Every value comes from `IMGPROXY_*` environment variables (nested groups joined with `__`) or a `.env`
file. pydantic-settings silently ignores variables it does not know, so `check_unknown_keys` refuses
them itself: a misspelt variable must stop start-up, not be ignored while the default stays in force.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ENV_PREFIX = "IMGPROXY_"
NESTED_DELIMITER = "__"
SAMPLES_DIR = Path(__file__).parent / "samples"
MIB = 1024 * 1024


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(Group):
    local_root: Path = Field(SAMPLES_DIR, description="directory served by /img/{path}")

    @field_validator("local_root")
    @classmethod
    def _must_be_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value.resolve()


class CacheSettings(Group):
    max_bytes: int = Field(256 * MIB, ge=0, description="result cache budget in bytes (0 disables it)")


class LimitsSettings(Group):
    max_source_pixels: int = Field(50_000_000, ge=1, description="pixel budget of a source (w x h x frames)")
    max_source_bytes: int = Field(50 * MIB, ge=1, description="byte budget of a source file")
    max_width: int = Field(8192, ge=1, le=65535, description="largest output width")
    max_height: int = Field(8192, ge=1, le=65535, description="largest output height")
    workers: int = Field(default_factory=lambda: os.cpu_count() or 1, ge=1, description="renders at once")
    max_queue: int | None = Field(None, ge=0, description="renders allowed to wait; default 4 x workers")
    render_timeout: float = Field(10.0, gt=0, description="seconds a render may take before a 503")
    max_jpeg_scans: int = Field(100, ge=1, description="progressive JPEG scans allowed (CPU bound)")

    @property
    def queue(self) -> int:
        return 4 * self.workers if self.max_queue is None else self.max_queue


class FormatSettings(Group):
    avif: bool = Field(True, description="offer AVIF output (negotiated and explicit)")
    jpeg_quality: int = Field(80, ge=1, le=100)
    webp_quality: int = Field(80, ge=1, le=100)
    avif_quality: int = Field(60, ge=1, le=100)
    webp_method: int = Field(4, ge=0, le=6, description="WebP effort: 0 fast .. 6 small")
    avif_speed: int = Field(8, ge=0, le=10, description="AVIF effort: 0 slow/small .. 10 fast")
    png_compress_level: int = Field(9, ge=0, le=9)


class HttpSettings(Group):
    cache_control: str = Field(
        "public, max-age=86400, stale-while-revalidate=604800",
        min_length=1,
        description="Cache-Control of image responses",
    )
    passthrough: bool = Field(False, description="serve untouched originals when a request has no options")


class Settings(BaseSettings):
    """The service's configuration; build it with `load_settings()` so unknown keys are refused."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        extra="forbid",
        frozen=True,
    )

    source: SourceSettings = SourceSettings()
    cache: CacheSettings = CacheSettings()
    limits: LimitsSettings = LimitsSettings()
    formats: FormatSettings = FormatSettings()
    http: HttpSettings = HttpSettings()

    def output_fingerprint(self) -> str:
        """The settings that change output bytes: part of every cache key and ETag."""
        return self.formats.model_dump_json()


class UnknownSettingError(ValueError):
    pass


def known_keys(model: type[BaseModel] = Settings, prefix: str = "") -> set[str]:
    """Every settable name, upper-case, as it is spelt in the environment (`CACHE__MAX_BYTES`)."""
    keys: set[str] = set()
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}".upper()
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            keys.add(key)  # a whole group as JSON
            keys |= known_keys(annotation, key + NESTED_DELIMITER)
        else:
            keys.add(key)
    return keys


def check_unknown_keys(names: Iterable[str], origin: str) -> None:
    known = known_keys()
    unknown = sorted(
        name for name in names if name.upper().startswith(ENV_PREFIX) and name.upper()[len(ENV_PREFIX) :] not in known
    )
    if unknown:
        raise UnknownSettingError(
            f"unknown setting {', '.join(unknown)} in {origin}; known settings: "
            + ", ".join(sorted(ENV_PREFIX + key for key in known))
        )


def load_settings(env_file: str | Path | None = ".env", **overrides: Any) -> Settings:
    """Build `Settings` from the environment and `.env`, refusing misspelt `IMGPROXY_*` names."""
    check_unknown_keys(os.environ, "the environment")
    if env_file is not None and Path(env_file).is_file():
        check_unknown_keys((k for k in dotenv_values(env_file) if k), str(env_file))
    return Settings(_env_file=env_file, **overrides)
