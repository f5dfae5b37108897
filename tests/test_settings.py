"""Settings: defaults, `IMGPROXY_*` overrides (nested with `__`), `.env` files, and refusing bad configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsError

import imgproxy.settings as settings_module
from imgproxy.settings import SAMPLES_DIR, Settings, UnknownSettingError, available_cpus, load_settings

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No stray IMGPROXY_* variables, and no stray .env in the working directory."""
    for name in list(os.environ):
        if name.upper().startswith("IMGPROXY_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    yield


def write_env(tmp_path: Path, text: str, name: str = "test.env") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def named_in_error(error: UnknownSettingError, name: str) -> bool:
    """The offending name is in the message's own part, not just somewhere in the list of known settings."""
    head = str(error).split("known settings:")[0]
    return name in head


# --- defaults ---


def test_defaults() -> None:
    settings = load_settings(env_file=None)
    assert settings.cache.max_bytes == 256 * MIB
    assert settings.limits.max_source_pixels == 50_000_000
    assert settings.limits.max_width == 8192
    assert settings.limits.max_height == 8192
    assert settings.limits.workers == available_cpus()
    assert settings.limits.queue == 4 * settings.limits.workers
    assert settings.limits.max_queue is None
    assert settings.formats.avif is True
    assert settings.source.local_root == SAMPLES_DIR.resolve()
    assert settings.source.local_root.is_dir()


def test_queue_follows_the_worker_count() -> None:
    settings = load_settings(env_file=None, limits={"workers": 3})
    assert settings.limits.workers == 3
    assert settings.limits.queue == 12


def test_workers_default_to_the_usable_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)))
    monkeypatch.setenv("IMGPROXY_LIMITS__MAX_WIDTH", "4000")  # builds the limits group afresh
    settings = load_settings(env_file=None)
    assert settings.limits.workers == min(7, cgroup_cpus() or 7)
    assert settings.limits.queue == 4 * settings.limits.workers


@pytest.mark.parametrize(("cpu_max", "expected"), [("max 100000", 7), ("200000 100000", 2), ("150000 100000", 2)])
def test_a_container_cpu_quota_caps_the_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, cpu_max: str, expected: int
) -> None:
    """In a 2-CPU pod on a big node, the node's core count would start far too many render threads."""
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(7)))
    cpu_file = tmp_path / "cpu.max"
    cpu_file.write_text(cpu_max + "\n")
    real_path = settings_module.Path
    monkeypatch.setattr(
        settings_module, "Path", lambda p: cpu_file if str(p) == "/sys/fs/cgroup/cpu.max" else real_path(p)
    )
    assert available_cpus() == expected


def cgroup_cpus() -> int | None:
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    return None if quota == "max" else -(-int(quota) // int(period))


# --- environment overrides ---


@pytest.mark.parametrize(
    ("name", "value", "path", "expected"),
    [
        ("IMGPROXY_CACHE__MAX_BYTES", "1024", ("cache", "max_bytes"), 1024),
        ("IMGPROXY_CACHE__MAX_BYTES", "0", ("cache", "max_bytes"), 0),
        ("IMGPROXY_LIMITS__MAX_SOURCE_PIXELS", "1000000", ("limits", "max_source_pixels"), 1_000_000),
        ("IMGPROXY_LIMITS__MAX_WIDTH", "4000", ("limits", "max_width"), 4000),
        ("IMGPROXY_LIMITS__MAX_HEIGHT", "65535", ("limits", "max_height"), 65535),
        ("IMGPROXY_LIMITS__WORKERS", "3", ("limits", "workers"), 3),
        ("IMGPROXY_LIMITS__RENDER_TIMEOUT", "2.5", ("limits", "render_timeout"), 2.5),
        ("IMGPROXY_FORMATS__AVIF", "false", ("formats", "avif"), False),
        ("IMGPROXY_FORMATS__AVIF", "0", ("formats", "avif"), False),
        ("IMGPROXY_FORMATS__JPEG_QUALITY", "95", ("formats", "jpeg_quality"), 95),
        ("IMGPROXY_HTTP__PASSTHROUGH", "true", ("http", "passthrough"), True),
        ("imgproxy_cache__max_bytes", "77", ("cache", "max_bytes"), 77),  # names are case-insensitive
    ],
)
def test_environment_overrides(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, path: tuple[str, str], expected: object
) -> None:
    monkeypatch.setenv(name, value)
    settings = load_settings(env_file=None)
    assert getattr(getattr(settings, path[0]), path[1]) == expected


def test_a_nested_override_keeps_the_group_s_other_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_LIMITS__MAX_WIDTH", "4000")
    settings = load_settings(env_file=None)
    assert settings.limits.max_width == 4000
    assert settings.limits.max_height == 8192
    assert settings.limits.max_source_pixels == 50_000_000


def test_max_queue_overrides_the_default_queue(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_LIMITS__WORKERS", "2")
    monkeypatch.setenv("IMGPROXY_LIMITS__MAX_QUEUE", "0")
    settings = load_settings(env_file=None)
    assert settings.limits.queue == 0
    monkeypatch.setenv("IMGPROXY_LIMITS__MAX_QUEUE", "5")
    assert load_settings(env_file=None).limits.queue == 5


def test_a_whole_group_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_CACHE", '{"max_bytes": 4096}')
    assert load_settings(env_file=None).cache.max_bytes == 4096


def test_local_root_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path / "images"
    root.mkdir()
    monkeypatch.setenv("IMGPROXY_SOURCE__LOCAL_ROOT", str(root))
    assert load_settings(env_file=None).source.local_root == root.resolve()


def test_keyword_overrides(tmp_path: Path) -> None:
    settings = load_settings(env_file=None, cache={"max_bytes": 1}, source={"local_root": tmp_path})
    assert settings.cache.max_bytes == 1
    assert settings.source.local_root == tmp_path.resolve()


def test_unrelated_environment_variables_are_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXYX", "1")  # not the prefix: not ours
    monkeypatch.setenv("OTHER_SERVICE_MAX_BYTES", "1")
    monkeypatch.setenv("CACHE__MAX_BYTES", "1")
    assert load_settings(env_file=None).cache.max_bytes == 256 * MIB


# --- misspelt names ---


@pytest.mark.parametrize(
    "name",
    [
        "IMGPROXY_CACHE__MAX_BYTE",
        "IMGPROXY_CACHE_MAX_BYTES",  # one underscore: not nested
        "IMGPROXY_MAX_BYTES",
        "IMGPROXY_LIMITS__MAXWIDTH",
        "IMGPROXY_LIMIT__MAX_WIDTH",
        "IMGPROXY_CACHE__MAX_BYTES__X",
        "IMGPROXY_BOGUS",
        "imgproxy_cache__max_byte",
    ],
)
def test_a_misspelt_environment_variable_is_refused_by_name(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(name, "1")
    with pytest.raises(UnknownSettingError) as info:
        load_settings(env_file=None)
    assert named_in_error(info.value, name)


def test_every_misspelt_name_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMGPROXY_CACHE__MAX_BYTE", "1")
    monkeypatch.setenv("IMGPROXY_LIMITS__MAXWIDTH", "1")
    monkeypatch.setenv("IMGPROXY_CACHE__MAX_BYTES", "1")  # a correct one is not reported
    with pytest.raises(UnknownSettingError) as info:
        load_settings(env_file=None)
    assert named_in_error(info.value, "IMGPROXY_CACHE__MAX_BYTE")
    assert named_in_error(info.value, "IMGPROXY_LIMITS__MAXWIDTH")
    assert not named_in_error(info.value, "IMGPROXY_CACHE__MAX_BYTES,")
    assert "IMGPROXY_CACHE__MAX_BYTES" in str(info.value)  # the fix is suggested among the known settings


def test_unknown_setting_error_is_a_value_error() -> None:
    assert issubclass(UnknownSettingError, ValueError)


# --- .env files ---


def test_an_env_file_sets_values(tmp_path: Path) -> None:
    env = write_env(tmp_path, "IMGPROXY_CACHE__MAX_BYTES=2048\nIMGPROXY_LIMITS__MAX_WIDTH=1000\n")
    settings = load_settings(env_file=env)
    assert settings.cache.max_bytes == 2048
    assert settings.limits.max_width == 1000


def test_the_default_env_file_is_dot_env_in_the_working_directory(tmp_path: Path) -> None:
    write_env(tmp_path, "IMGPROXY_CACHE__MAX_BYTES=4096\n", name=".env")
    assert load_settings().cache.max_bytes == 4096


def test_a_missing_env_file_leaves_the_defaults(tmp_path: Path) -> None:
    assert load_settings(env_file=tmp_path / "absent.env").cache.max_bytes == 256 * MIB


def test_the_environment_wins_over_the_env_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env = write_env(tmp_path, "IMGPROXY_CACHE__MAX_BYTES=2048\n")
    monkeypatch.setenv("IMGPROXY_CACHE__MAX_BYTES", "1024")
    assert load_settings(env_file=env).cache.max_bytes == 1024


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("IMGPROXY_CACHE__MAX_BYTE=5\n", "IMGPROXY_CACHE__MAX_BYTE"),
        ("IMGPROXY_CACHE__MAX_BYTES=5\nIMGPROXY_LIMITS__MAX_WIDHT=100\n", "IMGPROXY_LIMITS__MAX_WIDHT"),
        ("# a comment\nexport IMGPROXY_FORMAT__AVIF=false\n", "IMGPROXY_FORMAT__AVIF"),
        ("imgproxy_limits__worker=2\n", "imgproxy_limits__worker"),
        ("IMGPROXY_HTTP__PASSTRHOUGH\n", "IMGPROXY_HTTP__PASSTRHOUGH"),  # no value at all
    ],
)
def test_a_misspelt_key_in_an_env_file_is_refused_by_name(tmp_path: Path, text: str, name: str) -> None:
    env = write_env(tmp_path, text)
    with pytest.raises(UnknownSettingError) as info:
        load_settings(env_file=env)
    assert named_in_error(info.value, name)
    assert str(env) in str(info.value)  # says which file


def test_a_misspelt_key_in_the_default_dot_env_is_refused(tmp_path: Path) -> None:
    write_env(tmp_path, "IMGPROXY_CACHE__MAXBYTES=5\n", name=".env")
    with pytest.raises(UnknownSettingError) as info:
        load_settings()
    assert named_in_error(info.value, "IMGPROXY_CACHE__MAXBYTES")


def test_other_programs_keys_in_an_env_file_are_ignored(tmp_path: Path) -> None:
    env = write_env(tmp_path, "COMPOSE_PROJECT_NAME=site\nIMGPROXY_CACHE__MAX_BYTES=5\n")
    assert load_settings(env_file=env).cache.max_bytes == 5


# --- invalid values ---


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("IMGPROXY_CACHE__MAX_BYTES", "-1"),
        ("IMGPROXY_CACHE__MAX_BYTES", "abc"),
        ("IMGPROXY_CACHE__MAX_BYTES", "1.5"),
        ("IMGPROXY_LIMITS__MAX_SOURCE_PIXELS", "0"),
        ("IMGPROXY_LIMITS__MAX_WIDTH", "0"),
        ("IMGPROXY_LIMITS__MAX_WIDTH", "65536"),
        ("IMGPROXY_LIMITS__MAX_HEIGHT", "-5"),
        ("IMGPROXY_LIMITS__WORKERS", "0"),
        ("IMGPROXY_LIMITS__MAX_QUEUE", "-1"),
        ("IMGPROXY_LIMITS__RENDER_TIMEOUT", "0"),
        ("IMGPROXY_FORMATS__AVIF", "maybe"),
        ("IMGPROXY_FORMATS__JPEG_QUALITY", "101"),
        ("IMGPROXY_FORMATS__JPEG_QUALITY", "0"),
        ("IMGPROXY_HTTP__CACHE_CONTROL", ""),
        ("IMGPROXY_CACHE", '{"max_byte": 1}'),  # a misspelt key inside a JSON group
    ],
)
def test_invalid_values_raise_validation_error(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError):
        load_settings(env_file=None)


@pytest.mark.parametrize(("name", "value"), [("IMGPROXY_CACHE", "not json"), ("IMGPROXY_LIMITS", "{max_width: 1")])
def test_malformed_json_in_a_group_variable_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    # pydantic-settings raises SettingsError (not ValidationError) here; the CLI reports both in one line.
    monkeypatch.setenv(name, value)
    with pytest.raises(SettingsError):
        load_settings(env_file=None)


def test_an_invalid_value_in_an_env_file_raises_validation_error(tmp_path: Path) -> None:
    env = write_env(tmp_path, "IMGPROXY_LIMITS__MAX_WIDTH=huge\n")
    with pytest.raises(ValidationError):
        load_settings(env_file=env)


def test_invalid_keyword_overrides_raise_validation_error() -> None:
    with pytest.raises(ValidationError):
        load_settings(env_file=None, cache={"max_bytes": -1})
    with pytest.raises(ValidationError):
        load_settings(env_file=None, cache={"max_byte": 1})


# --- local_root must be a directory ---


def test_a_local_root_that_is_a_file_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    file = tmp_path / "image.png"
    file.write_bytes(b"not a directory")
    monkeypatch.setenv("IMGPROXY_SOURCE__LOCAL_ROOT", str(file))
    with pytest.raises(ValidationError) as info:
        load_settings(env_file=None)
    assert "not a directory" in str(info.value)


def test_a_local_root_that_does_not_exist_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMGPROXY_SOURCE__LOCAL_ROOT", str(tmp_path / "missing"))
    with pytest.raises(ValidationError):
        load_settings(env_file=None)


def test_a_local_root_file_is_refused_from_keywords_too(tmp_path: Path) -> None:
    file = tmp_path / "f.txt"
    file.write_text("x")
    with pytest.raises(ValidationError):
        load_settings(env_file=None, source={"local_root": file})
    with pytest.raises(ValidationError):
        Settings(_env_file=None, source={"local_root": file})  # type: ignore[call-arg]


def test_settings_are_frozen() -> None:
    settings = load_settings(env_file=None)
    with pytest.raises(ValidationError):
        settings.cache = settings.cache  # type: ignore[misc]
    with pytest.raises(ValidationError):
        settings.cache.max_bytes = 1  # type: ignore[misc]
