"""All configuration, in one validated object.

Every value comes from `IMGPROXY_*` environment variables (nested groups joined with `__`) or a `.env`
file. pydantic-settings silently ignores variables it does not know, so `check_unknown_keys` refuses
them itself: a misspelt variable must stop start-up, not be ignored while the default stays in force.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

from dotenv import dotenv_values
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from imgproxy.errors import BadParameter
from imgproxy.options import Limits, parse_options

ENV_PREFIX = "IMGPROXY_"
NESTED_DELIMITER = "__"
SAMPLES_DIR = Path(__file__).parent / "samples"
MIB = 1024 * 1024


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup v2 CPU quota (a container's limit),
    not the node's core count, which would start 64 render threads in a 2-CPU pod."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return max(1, cpus)
    if quota != "max" and int(period) > 0:
        cpus = min(cpus, -(-int(quota) // int(period)))  # rounded up: 1.5 CPUs get 2 threads
    return max(1, cpus)


def default_ladder(start: int = 16, stop: int = 4096, step: float = 0.08) -> list[int]:
    """Widths about 8% apart from `start` to `stop`, rounded to even numbers."""
    widths = [start]
    while widths[-1] < stop:
        widths.append(min(stop, max(widths[-1] + 2, 2 * round(widths[-1] * (1 + step) / 2))))
    return widths


class Group(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SourceSettings(Group):
    local_root: Path = Field(SAMPLES_DIR, description="directory served by /img/{path}")
    origin_url: str | None = Field(None, description="http(s) base URL that /img/{path} maps to")
    s3_bucket: str | None = Field(None, description="S3 bucket that /img/{path} maps to")
    s3_endpoint_url: str | None = Field(None, description="S3-compatible endpoint; default: AWS")
    s3_region: str | None = Field(None, description="S3 region; default: from the AWS environment")
    allowed_hosts: list[str] = Field([], description="glob patterns of hosts /img?url= may fetch; empty = off")
    allow_private_addresses: bool = Field(False, description="allow loopback/private origin addresses")
    timeout: float = Field(10.0, gt=0, description="total deadline of one origin fetch, redirects included")
    max_redirects: int = Field(5, ge=0, le=20)
    cache_bytes: int = Field(64 * MIB, ge=0, description="budget of the cache of fetched originals")
    cache_min_ttl: int = Field(60, ge=0, description="seconds an original is reused at least")
    cache_max_ttl: int = Field(86400, ge=0, description="seconds an original is reused at most")

    @field_validator("local_root")
    @classmethod
    def _must_be_directory(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a directory")
        return value.resolve()

    @field_validator("origin_url", "s3_endpoint_url")
    @classmethod
    def _must_be_http_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("must be an http:// or https:// URL")
            if not value.endswith("/"):
                value += "/"
        return value

    @model_validator(mode="after")
    def _one_primary_source(self) -> SourceSettings:
        if self.origin_url and self.s3_bucket:
            raise ValueError("set origin_url or s3_bucket, not both")
        if self.cache_min_ttl > self.cache_max_ttl:
            raise ValueError("cache_min_ttl is above cache_max_ttl")
        return self


class CacheSettings(Group):
    max_bytes: int = Field(256 * MIB, ge=0, description="result cache budget in bytes (0 disables it)")
    redis_url: str | None = Field(None, description="redis://host:6379/0 enables the shared result tier")
    redis_ttl: int = Field(7 * 86400, ge=1, description="seconds a result stays in Redis")
    redis_max_value_bytes: int = Field(8 * MIB, ge=1, description="larger results are not stored in Redis")
    redis_namespace: str = Field("imgproxy", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value


class LimitsSettings(Group):
    max_source_pixels: int = Field(50_000_000, ge=1, description="pixel budget of a source (w x h x frames)")
    max_source_bytes: int = Field(50 * MIB, ge=1, description="byte budget of a source file")
    max_width: int = Field(8192, ge=1, le=65535, description="largest output width")
    max_height: int = Field(8192, ge=1, le=65535, description="largest output height")
    workers: int = Field(default_factory=available_cpus, ge=1, description="renders at once")
    max_queue: int | None = Field(None, ge=0, description="renders allowed to wait; default 4 x workers")
    render_timeout: float = Field(10.0, gt=0, description="seconds a render may take before a 503")
    ladder: Literal["off", "snap", "strict"] = Field("off", description="width ladder for unsigned requests")
    ladder_widths: list[int] = Field(default_factory=default_ladder, description="the ladder, ascending")
    max_jpeg_scans: int = Field(100, ge=1, description="progressive JPEG scans allowed (CPU bound)")
    max_frames: int = Field(500, ge=1, description="frames of an animation rendered; over it: first frame")
    strict_animation: bool = Field(False, description="an animation over the frame or pixel budget is a 413")

    @field_validator("ladder_widths")
    @classmethod
    def _ascending(cls, value: list[int]) -> list[int]:
        if not value or any(w < 1 for w in value) or sorted(set(value)) != value:
            raise ValueError("must be a non-empty ascending list of distinct positive widths")
        return value

    @property
    def queue(self) -> int:
        return 4 * self.workers if self.max_queue is None else self.max_queue


class FormatSettings(Group):
    avif: bool = Field(True, description="offer AVIF output (negotiated and explicit)")
    jpeg_quality: int = Field(80, ge=1, le=100)
    jpeg_progressive: bool = Field(
        True, description="progressive JPEG: ~5% smaller and drawn as it loads, ~3x the encoding CPU of baseline"
    )
    webp_quality: int = Field(80, ge=1, le=100)
    avif_quality: int = Field(60, ge=1, le=100)
    webp_method: int = Field(
        2, ge=0, le=6, description="WebP effort: 0 fast .. 6 small; 4 is ~3% smaller than 2 for ~1.7x the CPU"
    )
    avif_speed: int = Field(8, ge=0, le=10, description="AVIF effort: 0 slow/small .. 10 fast")
    png_compress_level: int = Field(6, ge=0, le=9, description="zlib level; 9 is ~5% smaller and 6x slower")
    resample: Literal["bicubic", "lanczos"] = Field(
        "bicubic",
        description="final resampling filter: lanczos is a little sharper, ~1.5x the CPU, 4-18% larger outputs",
    )
    avif_max_megapixels: float = Field(2.0, gt=0, description="larger negotiated AVIF outputs fall back to WebP")
    save_data_quality_drop: int = Field(20, ge=0, le=99, description="default quality drop for Save-Data: on")


class SrcsetSettings(Group):
    widths: list[int] = Field(
        [320, 480, 640, 768, 960, 1280, 1600, 1920, 2560],
        description="fluid srcset candidates (snapped up onto the ladder)",
    )
    dpr_qualities: list[int] = Field([75, 50, 35], description="quality of the 1x, 2x, 3x fixed-size candidates")

    @field_validator("widths", "dpr_qualities")
    @classmethod
    def _non_empty(cls, value: list[int]) -> list[int]:
        if not value or any(v < 1 for v in value):
            raise ValueError("must be a non-empty list of positive numbers")
        return value


class WatermarkSettings(Group):
    path: str | None = Field(None, description="watermark image for wm=1, relative to the local root")


class LogSettings(Group):
    level: Literal["debug", "info", "warning", "error"] = Field("info", description="info logs every request")
    format: Literal["json", "text"] = Field("json", description="json: one object per line")


class HttpSettings(Group):
    cache_control: str = Field(
        "public, max-age=86400, stale-while-revalidate=604800",
        min_length=1,
        description="Cache-Control of image responses",
    )
    passthrough: bool = Field(False, description="serve untouched originals when a request has no options")
    client_hints: bool = Field(False, description="honour w=auto / dpr=auto from Sec-CH-Width and Sec-CH-DPR")
    auto_width: int = Field(1280, ge=1, description="w=auto for clients that send no width hint")
    playground: bool = Field(True, description="serve the playground page at /")
    dev_signing: bool = Field(False, description="let the playground have URLs signed (development only!)")


# Keys made only of these words (in any case, with any punctuation) are templates, not secrets.
_PLACEHOLDER = re.compile(
    r"(secret|change|me|password|passwd|key|signing|example|x|test|default|your|here|placeholder|random|string"
    r"|of|at|least|characters|chars|16|32|todo|fixme|insert|replace|with|a)+"
)


class SecuritySettings(Group):
    signing_keys: list[SecretStr] = Field([], description="HMAC-SHA256 keys; the first signs, all verify")
    presets_only: bool = Field(False, description="refuse every option except preset (and the signature)")

    @field_validator("signing_keys")
    @classmethod
    def _real_keys(cls, keys: list[SecretStr]) -> list[SecretStr]:
        for key in keys:
            value = key.get_secret_value()
            letters = re.sub(r"[^a-z0-9]", "", value.lower())
            templated = "<" in value or ">" in value or "{" in value
            if len(value) < 16 or len(set(value)) < 6 or templated or _PLACEHOLDER.fullmatch(letters):
                raise ValueError("a signing key must be a random string of at least 16 characters, not a placeholder")
        return keys

    @property
    def keys(self) -> list[bytes]:
        return [key.get_secret_value().encode() for key in self.signing_keys]


class Settings(BaseSettings):
    """The service's configuration; build it with `load_settings()` so unknown keys are refused."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter=NESTED_DELIMITER,
        env_file=".env",
        # A .env shared with other tools may hold their keys: ignore those here. Misspelt IMGPROXY_*
        # names are refused by check_unknown_keys, and the groups themselves forbid unknown fields.
        extra="ignore",
        frozen=True,
    )

    source: SourceSettings = SourceSettings()
    cache: CacheSettings = CacheSettings()
    limits: LimitsSettings = LimitsSettings()
    formats: FormatSettings = FormatSettings()
    http: HttpSettings = HttpSettings()
    security: SecuritySettings = SecuritySettings()
    watermark: WatermarkSettings = WatermarkSettings()
    log: LogSettings = LogSettings()
    srcset: SrcsetSettings = SrcsetSettings()
    presets: dict[str, str] = Field({}, description='named option sets: {"thumb": "w=200&h=200&fit=cover"}')

    @model_validator(mode="after")
    def _presets_parse(self) -> Settings:
        limits = Limits(self.limits.max_width, self.limits.max_height, self.formats.avif)
        for name, query in self.presets.items():
            try:
                parse_options(parse_qsl(query, keep_blank_values=True), limits)
            except BadParameter as exc:
                raise ValueError(f"preset {name!r}: {exc.detail}") from None
        return self

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
