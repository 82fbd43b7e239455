"""Which settings one file is sent with: its folder's profile, `extends`, and `.ocrwatch.yaml` files.

Resolution is a pure function of the profile table and the override files found on the path;
only `ProfileBook` touches disk, and it caches each override file until that file changes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from ocrwatch.config import (
    Config,
    OverrideSpec,
    ProfileSpec,
    load_yaml,
    translate_validation_error,
)
from ocrwatch.errors import ConfigError
from ocrwatch.settings import Settings, nearest

OVERRIDE_NAME: Final = ".ocrwatch.yaml"


@dataclass(frozen=True, slots=True)
class Override:
    path: Path
    spec: OverrideSpec


@dataclass(frozen=True, slots=True)
class Resolved:
    profile: str
    settings: Settings


def resolve_profile(name: str, table: Mapping[str, ProfileSpec]) -> Settings:
    """A named profile with its `extends` chain applied, the base first (the config checked cycles)."""
    chain: list[ProfileSpec] = []
    current: str | None = name
    while current is not None:
        spec = table[current]
        chain.append(spec)
        current = spec.extends
    settings = Settings()
    for spec in reversed(chain):
        settings = settings.merged(spec.to_settings())
    return settings


def resolve(
    profile: str, table: Mapping[str, ProfileSpec], overrides: Sequence[Override]
) -> Resolved:
    """Apply override files (ordered from the watched root down) over the folder's profile."""
    for override in overrides:
        if override.spec.profile is not None:
            if override.spec.profile not in table:
                hint = nearest(override.spec.profile, table)
                tip = (
                    f"did you mean `{hint}`?"
                    if hint
                    else "define it under `profiles` in the config"
                )
                raise ConfigError(
                    f"{override.path}: profile: unknown profile `{override.spec.profile}`; {tip}"
                )
            profile = override.spec.profile
    settings = resolve_profile(profile, table)
    for override in overrides:
        settings = settings.merged(override.spec.to_settings())
    return Resolved(profile=profile, settings=settings)


def parse_override(data: object, path: Path) -> OverrideSpec:
    if data is None:
        return OverrideSpec()
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{path}: must be a YAML mapping of `profile` and setting keys"
        )
    try:
        return OverrideSpec.model_validate(data)
    except ValidationError as exc:
        raise translate_validation_error(exc, str(path), OverrideSpec) from None


def override_dirs(root: Path, folder: Path) -> list[Path]:
    """The folders from `root` down to `folder` (both included) that may hold an override file."""
    try:
        rel = folder.relative_to(root)
    except ValueError:
        return [folder]
    dirs = [root]
    for part in rel.parts:
        dirs.append(dirs[-1] / part)
    return dirs


class ProfileBook:
    """Resolves settings per file, re-reading an override file only when it changed on disk."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], OverrideSpec | str]] = {}

    def resolve_for(self, path: Path, root: Path, profile: str) -> Resolved:
        """Settings for `path` under watched `root`; raises ConfigError for an invalid override file."""
        overrides = [
            Override(candidate, spec)
            for directory in override_dirs(root, path.parent)
            if (spec := self._load(candidate := directory / OVERRIDE_NAME)) is not None
        ]
        return resolve(profile, self._config.profiles, overrides)

    def invalidate(self, path: Path) -> None:
        with self._lock:
            self._cache.pop(path, None)

    def _load(self, path: Path) -> OverrideSpec | None:
        try:
            st = path.stat()
        except OSError:
            self.invalidate(path)
            return None
        key = (st.st_mtime_ns, st.st_size)
        with self._lock:
            cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            result: OverrideSpec | str
            try:
                result = parse_override(load_yaml(path), path)
            except ConfigError as exc:
                result = str(exc)
            cached = (key, result)
            with self._lock:
                self._cache[path] = cached
        if isinstance(cached[1], str):
            raise ConfigError(cached[1])
        return cached[1]
