"""Which settings one file is sent with: its folder's profile, `extends`, and `.ocrwatch.yaml` files.

Resolution is a pure function of the profile table and the override files found on the path;
only `ProfileBook` touches disk, and it caches each override file until that file changes.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from pydantic import ValidationError

from ocrwatch.config import (
    Config,
    FetchSpec,
    OverrideSpec,
    ProfileSpec,
    load_yaml,
    translate_validation_error,
)
from ocrwatch.errors import ConfigError
from ocrwatch.settings import Settings, nearest, shorten

OVERRIDE_NAME: Final = ".ocrwatch.yaml"
# Anyone who can write to a share writes these: a few settings, never megabytes.
OVERRIDE_MAX_BYTES: Final = 64 * 1024
MEMO_LIMIT: Final = 4096
Version = tuple[int, int, int]  # an override file's (mtime_ns, size, inode)


@dataclass(frozen=True, slots=True)
class Override:
    path: Path
    spec: OverrideSpec


DEFAULT_FETCH_TIMEOUT_S: Final = 600.0
DEFAULT_HOOK_TIMEOUT_S: Final = 60.0


@dataclass(frozen=True, slots=True)
class FetchPolicy:
    """What becomes of a file after its upload: wait for its result, and hand it on."""

    enabled: bool = False
    timeout_s: float = DEFAULT_FETCH_TIMEOUT_S
    on_complete: tuple[str, ...] = ()
    on_complete_timeout_s: float = DEFAULT_HOOK_TIMEOUT_S


@dataclass(frozen=True, slots=True)
class Resolved:
    profile: str
    settings: Settings
    fetch: FetchPolicy = FetchPolicy()


def _chain(name: str, table: Mapping[str, ProfileSpec]) -> list[ProfileSpec]:
    """The profile and what it extends, the base first."""
    chain: list[ProfileSpec] = []
    current: str | None = name
    while current is not None:
        spec = table[current]
        chain.append(spec)
        current = spec.extends
    return chain[::-1]


def _fetch_over(policy: FetchPolicy, spec: FetchSpec) -> FetchPolicy:
    return replace(
        policy,
        enabled=policy.enabled if spec.fetch_results is None else spec.fetch_results,
        timeout_s=policy.timeout_s
        if spec.fetch_timeout is None
        else spec.fetch_timeout,
    )


def resolve_fetch(
    name: str, table: Mapping[str, ProfileSpec], overrides: Sequence[Override] = ()
) -> FetchPolicy:
    """A profile's fetch keys along its `extends` chain, then `.ocrwatch.yaml` files'
    `fetch_results`/`fetch_timeout` (they can never set a hook)."""
    policy = FetchPolicy()
    for spec in _chain(name, table):
        policy = _fetch_over(policy, spec)
        if spec.on_complete is not None:
            policy = replace(policy, on_complete=spec.on_complete)
        if spec.on_complete_timeout is not None:
            policy = replace(policy, on_complete_timeout_s=spec.on_complete_timeout)
    for override in overrides:
        policy = _fetch_over(policy, override.spec)
    return policy


def resolve_profile(name: str, table: Mapping[str, ProfileSpec]) -> Settings:
    """A named profile with its `extends` chain applied, the base first (the config checked cycles).

    Raises ConfigError for a name the config does not define (any more): a file queued by
    `submit --profile` may outlive its profile.
    """
    if name not in table:
        raise ConfigError(
            f"profile `{name}` is not defined in the config; define it, or submit the file again"
        )
    settings = Settings()
    for spec in _chain(name, table):
        settings = settings.merged(spec.to_settings())
    return settings


def resolve(
    profile: str, table: Mapping[str, ProfileSpec], overrides: Sequence[Override]
) -> Resolved:
    """Apply override files (ordered from the watched root down) over the folder's profile.

    A `.ocrwatch.yaml` that switches profile switches its hook only off, never on: the
    effective profile's `on_complete` runs only if it is the folder's configured profile's
    too (anyone on the share may write that file; the admin set each hook for its folders)."""
    configured = profile
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
                    f"{override.path}: profile: unknown profile "
                    f"`{shorten(override.spec.profile)}`; {tip}"
                )
            profile = override.spec.profile
    settings = resolve_profile(profile, table)
    for override in overrides:
        settings = settings.merged(override.spec.to_settings())
    fetch = resolve_fetch(profile, table, overrides)
    if profile != configured:
        fetch = hook_kept(fetch, resolve_fetch(configured, table))
    return Resolved(profile=profile, settings=settings, fetch=fetch)


def hook_kept(effective: FetchPolicy, configured: FetchPolicy) -> FetchPolicy:
    """The effective policy, its hook dropped unless the configured profile has the same."""
    if effective.on_complete == configured.on_complete:
        return effective
    return replace(effective, on_complete=())


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
        self._cache: dict[Path, tuple[Version, OverrideSpec | str]] = {}
        # Most files of a burst share a folder: merge its profile and overrides once. The key
        # holds each override file's version, so an edit or a removal makes a new entry.
        self._resolved: dict[tuple[object, ...], Resolved] = {}

    def resolve_for(self, path: Path, root: Path, profile: str) -> Resolved:
        """Settings for `path` under watched `root`; raises ConfigError for an invalid override file."""
        found = [
            (candidate, loaded)
            for directory in override_dirs(root, path.parent)
            if (loaded := self._load(candidate := directory / OVERRIDE_NAME))
            is not None
        ]
        memo_key = (profile, *((c, version) for c, (version, _) in found))
        with self._lock:
            resolved = self._resolved.get(memo_key)
        if resolved is None:
            overrides = [Override(c, spec) for c, (_, spec) in found]
            resolved = resolve(profile, self._config.profiles, overrides)
            with self._lock:
                if len(self._resolved) >= MEMO_LIMIT:  # old versions of edited files
                    self._resolved.clear()
                self._resolved[memo_key] = resolved
        return resolved

    def invalidate(self, path: Path) -> None:
        with self._lock:
            self._cache.pop(path, None)

    def _load(self, path: Path) -> tuple[Version, OverrideSpec] | None:
        try:
            st = path.stat()
        except OSError:
            self.invalidate(path)
            return None
        # A rename-based save is a new inode.
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        with self._lock:
            cached = self._cache.get(path)
        if cached is None or cached[0] != key:
            result: OverrideSpec | str
            try:
                data = load_yaml(path, max_bytes=OVERRIDE_MAX_BYTES)
                result = parse_override(data, path)
            except ConfigError as exc:
                result = str(exc)
            cached = (key, result)
            with self._lock:
                self._cache[path] = cached
        version, spec = cached
        if isinstance(spec, str):
            raise ConfigError(spec)
        return version, spec
