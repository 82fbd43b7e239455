"""Parse and validate the YAML config into frozen models, and resolve the API credentials.

Every mistake becomes one ConfigError sentence naming the file, the dotted key and the fix; nothing
downstream sees a dict from YAML. Defaults live in the model fields and nowhere else.
"""

from __future__ import annotations

import errno
import ipaddress
import math
import os
import stat
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Final
from urllib.parse import urlsplit

import structlog
import yaml
from pydantic import (
    AfterValidator,
    AliasChoices,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
    ValidationInfo,
    field_validator,
)

from ocrwatch.errors import ConfigError
from ocrwatch.log import register_secret
from ocrwatch.settings import (
    DSR_CONFIDENCES,
    DSR_MODES,
    LANGUAGE_HINTS,
    LANGUAGES,
    RESULT_TYPES,
    WIRE_NAMES,
    Settings,
    check_choice,
    nearest,
    shorten,
)

log = structlog.get_logger()

DEFAULT_CONFIG_PATH: Final = Path("/etc/ocrwatch/config.yaml")
DEFAULT_STATE_DIR: Final = Path("/var/lib/ocrwatch")
# systemd's StateDirectory= hands the service its folder(s) here, colon-separated.
STATE_DIRECTORY_ENV: Final = "STATE_DIRECTORY"
DEFAULT_BASE_URL: Final = "https://api.aspose.cloud"
DEFAULT_INCLUDE: Final = (
    "*.png",
    "*.jpg",
    "*.jpeg",
    "*.tif",
    "*.tiff",
    "*.bmp",
    "*.gif",
    "*.pdf",
)
DEFAULT_EXCLUDE: Final = (".*", "*.tmp", "*.part", "~$*")
SECRET_ENV: Final = "OCRWATCH_CLIENT_SECRET"
CLIENT_ID_ENV: Final = "OCRWATCH_CLIENT_ID"
CREDENTIAL_NAME: Final = "client_secret"
# Keys that older versions read and this one ignores: a config that still has them must not stop
# a service from starting after an upgrade.
RETIRED_API_KEYS: Final = {
    "upload_processes": "uploads always run in threads now",
}

ENUMS: Final[dict[str, tuple[str, ...]]] = {
    "language": LANGUAGES,
    "dsr_mode": DSR_MODES,
    "dsr_confidence": DSR_CONFIDENCES,
    "result_type": RESULT_TYPES,
}

CONFIG_MAX_BYTES: Final = 1 << 20
SECRET_MAX_BYTES: Final = 64 << 10
YAML_MAX_DEPTH: Final = 32
DURATION_UNITS: Final = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> object:
    """Seconds from a number or from a string such as `90s`, `10m`, `24h` or `1d`."""
    if isinstance(value, str):
        text = value.strip().lower()
        unit = DURATION_UNITS.get(text[-1:], None) if text else None
        number = text[:-1] if unit is not None else text
        try:
            return float(number) * (unit or 1.0)
        except ValueError:
            raise ValueError(
                f"`{value}` is not a duration; use seconds, or a number with s, m, h or d (e.g. 10m)"
            ) from None
    return value


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]


def _against_config_folder(value: Path, info: ValidationInfo) -> Path:
    """A relative path means relative to the config file, not to the working directory,
    which is `/` under systemd.

    `..` is folded away, so that `check` shows the real place and the state_dir-inside-a-folder
    check compares like with like (`../etc/inbox/state` is inside `inbox`).
    """
    base = (info.context or {}).get("base")
    if isinstance(base, Path) and not value.is_absolute():
        return Path(os.path.normpath(base / value))
    return value


ConfigPath = Annotated[Path, AfterValidator(_against_config_folder)]


def _no_file_in_the_way(value: Path) -> Path:
    """A folder path that exists as something else would otherwise pass as "missing"."""
    try:
        mode = value.stat().st_mode
    except OSError:
        return value  # missing or out of reach for now (a late mount): watched once it appears
    if not stat.S_ISDIR(mode):
        raise ValueError(
            f"{value} exists but is not a folder; give the folder that receives the scans"
        )
    return value


FolderPath = Annotated[ConfigPath, AfterValidator(_no_file_in_the_way)]


class Model(BaseModel):
    # No inf or nan anywhere: `shutdown_timeout: .inf` must not pass `check` and crash later.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Timeout(Model):
    connect: Annotated[float, Field(gt=0, le=600)] = 10.0
    read: Annotated[float, Field(gt=0, le=600)] = 60.0


class Retry(Model):
    max_attempts: Annotated[int, Field(ge=1, le=100)] = 6
    max_delay: Annotated[float, Field(gt=0, le=3600)] = 120.0


def _check_url(value: str | None) -> str | None:
    """Refuse URLs that would send the bearer token in clear to another machine."""
    if value is None:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(
            f"`{value}` is not an http(s) URL; use e.g. {DEFAULT_BASE_URL}"
        )
    if parts.username is not None or parts.password is not None:
        # It would be printed by `check`, in errors and in the STATUS= line.
        raise ValueError(
            "a user or password in the URL is not supported; put the credentials in "
            "api.client_id and the client secret, and a proxy's in api.proxy"
        )
    if parts.scheme == "http" and not is_loopback(parts.hostname):
        raise ValueError(
            f"plain http to `{parts.hostname}` would send the token in clear; use https"
        )
    return value.rstrip("/")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ApiConfig(Model):
    base_url: str = DEFAULT_BASE_URL
    token_url: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: ConfigPath | None = None
    trial: StrictBool = False
    concurrency: Annotated[int, Field(ge=1, le=64)] = 4
    timeout: Timeout = Timeout()
    retry: Retry = Retry()
    # A proxy URL may carry a user and password: it is a secret like the client secret.
    proxy: SecretStr | None = None
    ca_bundle: ConfigPath | None = None

    _urls = field_validator("base_url", "token_url")(_check_url)

    @field_validator("proxy")
    @classmethod
    def _proxy(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return None
        parts = urlsplit(value.get_secret_value())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "not an HTTP(S) proxy URL (SOCKS is not supported); use e.g. "
                "http://proxy.example:3128 (user:password@ allowed)"
            )
        return value

    @field_validator("ca_bundle")
    @classmethod
    def _ca_bundle(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{value} is not a file; give the path of a PEM CA bundle")
        return value

    @property
    def resolved_token_url(self) -> str:
        return self.token_url or f"{self.base_url}/connect/token"


class FolderConfig(Model):
    path: FolderPath
    profile: str = "default"
    recursive: StrictBool = True
    include: tuple[str, ...] = DEFAULT_INCLUDE
    exclude: tuple[str, ...] = DEFAULT_EXCLUDE
    polling: StrictBool = False
    poll_interval: Annotated[float, Field(ge=0.1, le=3600)] = 10.0
    settle_seconds: Annotated[float, Field(ge=0, le=3600)] = 2.0


DEFAULT_METRICS_LISTEN: Final = "127.0.0.1:9464"


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port`, `[v6]:port`, or a bare port (`9464`, `:9464`) on loopback: (host, port)."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        bracketed = True
    else:
        bracketed = False
    try:
        if not (port_text.isascii() and port_text.isdigit()):
            raise ValueError
        port = int(port_text)
        if not 0 <= port <= 65535:
            raise ValueError
        if host and host != "localhost":
            address = ipaddress.ip_address(host)
            if (address.version == 6) != bracketed:
                raise ValueError
    except ValueError:
        raise ValueError(
            f"`{shorten(value, 80)}` is not host:port with an IP address (or localhost) "
            f"and a port 0-65535; use e.g. {DEFAULT_METRICS_LISTEN}"
        ) from None
    return host or "127.0.0.1", port


class MetricsConfig(Model):
    """Where `run` serves Prometheus `/metrics` and `/healthz`: loopback unless a host is written."""

    listen: str = DEFAULT_METRICS_LISTEN

    @field_validator("listen", mode="before")
    @classmethod
    def _listen(cls, value: object) -> object:
        if isinstance(value, int) and not isinstance(value, bool):
            value = str(value)  # `listen: 9464`
        if isinstance(value, str):
            host, port = parse_listen(value)
            return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return value

    @property
    def host(self) -> str:
        return parse_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return parse_listen(self.listen)[1]


class SettingsSpec(Model):
    """The API's setting keys as YAML spells them; shared by profiles and `.ocrwatch.yaml`."""

    language: str | None = None
    make_skew_correct: StrictBool | None = Field(None, alias="makeSkewCorrect")
    make_binarization: StrictBool | None = Field(None, alias="makeBinarization")
    make_spell_check: StrictBool | None = Field(None, alias="makeSpellCheck")
    make_contrast_correction: StrictBool | None = Field(
        None, alias="makeContrastCorrection"
    )
    make_upsampling: StrictBool | None = Field(None, alias="makeUpsampling")
    dsr_mode: str | None = Field(None, alias="dsrMode")
    dsr_confidence: str | None = Field(None, alias="dsrConfidence")
    result_type: str | None = Field(None, alias="resultType")
    rotate: StrictInt | None = Field(
        None, alias="Rotate", validation_alias=AliasChoices("Rotate", "rotate")
    )

    @field_validator("language", "dsr_mode", "dsr_confidence", "result_type")
    @classmethod
    def _enum(cls, v: str | None, info: ValidationInfo) -> str | None:
        """The API's enums are case-sensitive; a near miss names the valid spelling."""
        choices = ENUMS[str(info.field_name)]
        return (
            None
            if v is None
            else check_choice(
                v,
                choices,
                WIRE_NAMES[str(info.field_name)],
                LANGUAGE_HINTS if info.field_name == "language" else None,
            )
        )

    @field_validator("rotate")
    @classmethod
    def _rotate(cls, v: int | None) -> int | None:
        if v is not None and not -360 <= v <= 360:
            raise ValueError(f"Rotate must be between -360 and 360 degrees, not {v}")
        return v

    def to_settings(self) -> Settings:
        return Settings(**{name: getattr(self, name) for name in Settings.__slots__})


class FetchSpec(SettingsSpec):
    """Whether and how long to wait for a file's result: ocrwatch's keys, never sent to the
    service (they are not `Settings`)."""

    fetch_results: StrictBool | None = None
    fetch_timeout: Annotated[Duration, Field(gt=0, le=86400)] | None = None


Command = Annotated[tuple[str, ...], Field(min_length=1)]


class ProfileSpec(FetchSpec):
    extends: str | None = None
    # Run as the daemon: only the main config may name a command (see OverrideSpec).
    on_complete: Command | None = None
    on_complete_timeout: Annotated[Duration, Field(gt=0, le=86400)] | None = None

    @field_validator("on_complete", mode="before")
    @classmethod
    def _command(cls, value: object) -> object:
        if isinstance(value, str):
            raise ValueError(
                "give the command as a list of strings (no shell), e.g. [/usr/local/bin/done, --quiet]"
            )
        # A relative program would be looked up on PATH or beside the share's files, which
        # anyone on the share may write.
        if (
            isinstance(value, list | tuple)
            and value
            and isinstance(value[0], str)
            and not Path(value[0]).is_absolute()
        ):
            raise ValueError(
                f"the program must be an absolute path (`{shorten(value[0])}` is not), "
                "e.g. [/usr/bin/python3, /usr/local/lib/ocrwatch/done.py]"
            )
        return value


class OverrideSpec(FetchSpec):
    """A `.ocrwatch.yaml` file: a profile to switch to, setting keys, `fetch_results` and
    `fetch_timeout`."""

    profile: str | None = None
    # Anyone who can write to a share writes these files: a command named here would run as
    # the daemon. Known, so that the refusal says why rather than "unknown key".
    on_complete: object = None
    on_complete_timeout: object = None

    @field_validator("on_complete", "on_complete_timeout")
    @classmethod
    def _main_config_only(cls, value: object, info: ValidationInfo) -> object:
        if value is not None:
            raise ValueError(
                f"only the main config may set {info.field_name}, never a .ocrwatch.yaml "
                "(anyone who can write to the folder could run commands as ocrwatch); "
                "remove it and set it on the profile in the main config"
            )
        return value


class Config(Model):
    api: ApiConfig = ApiConfig()
    state_dir: ConfigPath = DEFAULT_STATE_DIR
    rescan_interval: Annotated[float, Field(ge=1, le=86400)] = 300.0
    # The same content with the same settings, accepted within this, reuses its GUID; 0: off.
    dedupe_window: Annotated[Duration, Field(le=30 * 86400)] = 24 * 3600.0
    # A still-truncated image gets an `.error` once it has been quiet this long.
    incomplete_timeout: Annotated[Duration, Field(le=7 * 86400)] = 600.0
    shutdown_timeout: Annotated[float, Field(ge=0, le=3600)] = 30.0
    metrics: MetricsConfig | None = None  # absent: nothing listens
    # Rows of files that are gone and were done longer ago than this are pruned daily.
    keep_days: Annotated[float, Field(ge=1, le=36500)] = 90.0
    folders: Annotated[tuple[FolderConfig, ...], Field(min_length=1)]
    profiles: dict[str, ProfileSpec] = Field(
        default_factory=lambda: {"default": ProfileSpec()}
    )

    @field_validator("state_dir")
    @classmethod
    def _state_dir(cls, value: Path) -> Path:
        if value.is_file():
            raise ValueError(
                f"{value} is a file, not a folder; remove it or set state_dir to a folder"
            )
        return value

    @property
    def journal_path(self) -> Path:
        return self.state_dir / "journal.sqlite3"


@dataclass(frozen=True, slots=True)
class Credentials:
    client_id: str
    client_secret: SecretStr

    def __repr__(self) -> str:
        return f"Credentials(client_id={self.client_id!r}, client_secret='**********')"


def format_loc(loc: tuple[int | str, ...]) -> str:
    """('folders', 0, 'path') -> 'folders[0].path'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _model_at(
    root: type[BaseModel], loc: tuple[int | str, ...]
) -> type[BaseModel] | None:
    """The model class that owns the key at the end of `loc`, to list its valid keys."""
    model: type[BaseModel] | None = root
    for part in loc[:-1]:
        if model is None:
            return None
        if isinstance(part, int) or part not in model.model_fields:
            continue  # a list index or a dict key (a profile name): stay on the item type
        model = _nested_model(model.model_fields[part].annotation)
    return model


def _nested_model(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):  # list[X], dict[str, X], X | None
        found = _nested_model(arg)
        if found is not None:
            return found
    return None


def _valid_keys(model: type[BaseModel]) -> list[str]:
    return [f.alias or name for name, f in model.model_fields.items()] + (
        ["rotate"] if "rotate" in model.model_fields else []
    )


def translate_validation_error(
    exc: ValidationError, source: str, root: type[BaseModel]
) -> ConfigError:
    """The first pydantic error as one sentence: file, dotted key, problem, nearest valid name."""
    err = exc.errors()[0]
    loc = tuple(err["loc"])
    where = f"{source}: {shorten(format_loc(loc), 120)}" if loc else source
    if err["type"] == "extra_forbidden":
        model = _model_at(root, loc)
        key = str(loc[-1])
        hint = nearest(key, _valid_keys(model)) if model and len(key) <= 100 else None
        if (
            hint == key
        ):  # a valid key under its second spelling: `rotate` beside `Rotate`
            return ConfigError(
                f"{where}: set twice, as `Rotate` and as `rotate`; keep one of them"
            )
        tip = f"did you mean `{hint}`?" if hint else "remove it"
        return ConfigError(f"{where}: unknown key; {tip}")
    if err["type"] == "missing":
        return ConfigError(f"{where}: required key is missing; add it")
    if err["type"] == "too_short" and loc == ("folders",):
        return ConfigError(
            f"{where}: no folder is listed; add at least one, e.g. `- path: /srv/scans/inbox`"
        )
    if err["type"] == "too_short":
        return ConfigError(f"{where}: the list is empty; add at least one item")
    if err["type"] == "value_error":  # our own validators already say what to do
        return ConfigError(f"{where}: {str(err['msg']).removeprefix('Value error, ')}")
    return ConfigError(f"{where}: {err['msg']}; fix the value")


class _BoundedLoader(yaml.SafeLoader):
    """`safe_load` without aliases and with a bounded depth.

    A config is small and flat, and a `.ocrwatch.yaml` comes from anyone who can write to a
    share: it must not make ocrwatch recurse thousands of levels deep or expand aliases.
    """

    depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            self._refuse("aliases (*name) are not supported")
        self.depth += 1
        try:
            if self.depth > YAML_MAX_DEPTH:
                self._refuse(f"nested more than {YAML_MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1

    def _refuse(self, problem: str) -> None:
        mark = self.peek_event().start_mark  # type: ignore[no-untyped-call]
        raise yaml.composer.ComposerError(None, None, problem, mark)


def read_bounded(path: Path, max_bytes: int) -> bytes:
    """A regular file's bytes, at most `max_bytes`; never blocks on a FIFO or reads a device.

    Raises OSError (the file) or ValueError (what it is, or its size).
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("it is not a regular file")
        data = os.read(fd, max_bytes + 1)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ValueError(f"it is larger than {max_bytes // 1024} KiB")
    return data


def load_yaml(path: Path, *, max_bytes: int = CONFIG_MAX_BYTES) -> object:
    """Read one YAML file, turning I/O and syntax trouble into a ConfigError naming it."""
    try:
        text = read_bounded(path, max_bytes).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: config file not found; pass -c PATH or set OCRWATCH_CONFIG"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"{path}: cannot read ({exc}); check the path and its permissions"
        ) from None
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}; replace it with a small YAML file") from None
    try:
        # A SafeLoader subclass: no Python objects, no aliases, bounded depth.
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(
            f"{path}: YAML syntax error{at}: {problem}; fix the file"
        ) from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply; fix the file") from None
    except (ValueError, OverflowError, TypeError) as exc:
        # A value YAML recognises but Python cannot build: a date like 2024-99-99, an integer
        # of more than 4300 digits.
        raise ConfigError(
            f"{path}: a value cannot be read ({shorten(str(exc))}); quote it or fix it"
        ) from None


def parse_config(
    data: object,
    source: str,
    *,
    base: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> Config:
    """Validate parsed YAML into a Config, or raise one ConfigError.

    Relative paths are taken relative to `base`, the config file's folder. Without a
    `state_dir` key, the state_dir is systemd's `$STATE_DIRECTORY` from `env` when set, so
    that each instance of a template unit gets its own.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(
            f"{source}: the config must be a YAML mapping with a `folders` key"
        )
    data = _with_state_directory(_without_retired_keys(data, source), env or {})
    try:
        config = Config.model_validate(data, context={"base": base})
    except ValidationError as exc:
        raise translate_validation_error(exc, source, Config) from None
    if "default" not in config.profiles:
        profiles = {"default": ProfileSpec(), **config.profiles}
        config = config.model_copy(update={"profiles": profiles})
    _check_profile_references(config, source)
    _check_state_dir(config, source)
    if config.dedupe_window > config.keep_days * 86400:
        raise ConfigError(
            f"{source}: keep_days: {config.keep_days:g} days is shorter than dedupe_window "
            f"({config.dedupe_window / 86400:g} days): the prune would forget content the "
            f"dedupe still looks up; set keep_days to at least "
            f"{math.ceil(config.dedupe_window / 86400)}"
        )
    return config


def _with_state_directory(
    data: Mapping[str, Any], env: Mapping[str, str]
) -> Mapping[str, Any]:
    """An explicit state_dir wins; else the first folder systemd's StateDirectory= made."""
    first = env.get(STATE_DIRECTORY_ENV, "").split(":")[0]
    if "state_dir" in data or not first:
        return data
    return {**data, "state_dir": first}


def _without_retired_keys(data: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    api = data.get("api")
    retired = (
        RETIRED_API_KEYS.keys() & api.keys() if isinstance(api, Mapping) else set()
    )
    if not isinstance(api, Mapping) or not retired:
        return data
    for key in sorted(retired):
        log.warning(
            "config.key_ignored",
            path=source,
            key=f"api.{key}",
            why=RETIRED_API_KEYS[key],
            fix="remove it",
        )
    kept = {k: v for k, v in api.items() if k not in RETIRED_API_KEYS}
    return {**data, "api": kept}


def _check_profile_references(config: Config, source: str) -> None:
    names = list(config.profiles)
    for i, folder in enumerate(config.folders):
        if folder.profile not in config.profiles:
            raise ConfigError(
                _unknown_profile(source, f"folders[{i}].profile", folder.profile, names)
            )
    for name, spec in config.profiles.items():
        seen = [name]
        current = spec
        while current.extends is not None:
            if current.extends not in config.profiles:
                raise ConfigError(
                    _unknown_profile(
                        source, f"profiles.{seen[-1]}.extends", current.extends, names
                    )
                )
            if current.extends in seen:
                chain = " -> ".join([*seen, current.extends])
                raise ConfigError(
                    f"{source}: profiles.{name}.extends: cycle {chain}; remove one `extends`"
                )
            seen.append(current.extends)
            current = config.profiles[current.extends]


def _unknown_profile(source: str, key: str, name: str, names: list[str]) -> str:
    hint = nearest(name, names)
    tip = (
        f"did you mean `{hint}`?"
        if hint
        else f"define it under `profiles` (known: {', '.join(names)})"
    )
    return f"{source}: {key}: unknown profile `{name}`; {tip}"


def _check_state_dir(config: Config, source: str) -> None:
    """The journal must not live where it would be watched: its writes would be events."""
    state = config.state_dir.absolute()
    for i, folder in enumerate(config.folders):
        root = folder.path.absolute()
        if state == root or root in state.parents:
            raise ConfigError(
                f"{source}: state_dir: {config.state_dir} is inside folders[{i}].path; "
                "put state_dir outside every watched folder"
            )


def config_path(cli_value: str | None, env: Mapping[str, str]) -> Path:
    if cli_value:
        return Path(cli_value)
    if env.get("OCRWATCH_CONFIG"):
        return Path(env["OCRWATCH_CONFIG"])
    return DEFAULT_CONFIG_PATH


def load_config(path: Path, env: Mapping[str, str] | None = None) -> Config:
    """The config at `path`; `env` (default: this process's) may supply the state_dir."""
    return parse_config(
        load_yaml(path),
        source=str(path),
        base=path.absolute().parent.resolve(),
        env=os.environ if env is None else env,
    )


def load_settings(
    path: Path, env: Mapping[str, str]
) -> tuple[Config, Credentials | None]:
    """The config and the credentials it points to; the secret is masked in all output from now on."""
    config = load_config(path, env)
    credentials = resolve_credentials(config, env, str(path))
    if credentials is not None:
        register_secret(credentials.client_secret.get_secret_value())
    return config, credentials


def resolve_credentials(
    config: Config, env: Mapping[str, str], source: str
) -> Credentials | None:
    """Find the client id and secret; None in trial mode.

    Order: env OCRWATCH_CLIENT_SECRET, api.client_secret_file, the systemd credential
    `client_secret` in $CREDENTIALS_DIRECTORY, then api.client_secret.
    """
    if config.api.trial:
        return None
    client_id = env.get(CLIENT_ID_ENV) or config.api.client_id
    secret, tried = _find_secret(config, env, source)
    if not client_id:
        raise ConfigError(
            f"{source}: api.client_id: no client id is set; set api.client_id "
            f"(or env {CLIENT_ID_ENV}), or set api.trial: true"
        )
    if secret is None:
        looked = "; ".join(tried)
        raise ConfigError(
            f"{source}: no client secret found ({looked}); point api.client_secret_file "
            f"at a file that holds it, or deliver it as the systemd credential "
            f"`{CREDENTIAL_NAME}` (LoadCredential=), or set env {SECRET_ENV}, or set "
            "api.trial: true"
        )
    return Credentials(client_id=client_id, client_secret=secret)


def _find_secret(
    config: Config, env: Mapping[str, str], source: str
) -> tuple[SecretStr | None, list[str]]:
    """The secret from the first place that has one, and what was wrong with those before.

    An unreadable `client_secret_file` is not fatal: the recommended install keeps the file
    root-only and hands the service a copy as a systemd credential.
    """
    if env.get(SECRET_ENV):
        return SecretStr(env[SECRET_ENV]), []
    tried: list[str] = []
    secret_file = config.api.client_secret_file
    if secret_file is None:
        tried.append("api.client_secret_file is not set")
    else:
        try:
            return _read_secret_file(
                secret_file, f"{source}: api.client_secret_file"
            ), []
        except OSError as exc:
            tried.append(f"api.client_secret_file {secret_file}: {_why(exc)}")
            _warn_once(
                "secret.file_unreadable",
                path=str(secret_file),
                error=_why(exc),
                next=f"the systemd credential `{CREDENTIAL_NAME}`, then api.client_secret",
            )
    credentials_dir = env.get("CREDENTIALS_DIRECTORY")
    if not credentials_dir:
        tried.append("$CREDENTIALS_DIRECTORY is not set")
    else:
        candidate = Path(credentials_dir) / CREDENTIAL_NAME
        try:
            return _read_secret_file(
                candidate, f"systemd credential {CREDENTIAL_NAME}"
            ), []
        except OSError as exc:
            tried.append(f"systemd credential {candidate}: {_why(exc)}")
    if config.api.client_secret is not None:
        return config.api.client_secret, []
    return None, tried


def _why(exc: OSError) -> str:
    return (exc.strerror or type(exc).__name__).lower()


def _read_secret_file(path: Path, what: str) -> SecretStr:
    """Raises OSError if the file cannot be read, ConfigError if it holds no secret."""
    mode = path.stat().st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", str(path))
    try:
        text = read_bounded(path, SECRET_MAX_BYTES).decode("utf-8").strip()
    except (ValueError, UnicodeDecodeError) as exc:  # a FIFO, a device, not text
        raise ConfigError(
            f"{what}: {path}: {exc}; put the client secret in it as one line of text"
        ) from None
    if not text:
        raise ConfigError(f"{what}: {path} is empty; put the client secret in it")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        _warn_once(
            "secret.file_permissive",
            path=str(path),
            mode=oct(stat.S_IMODE(mode)),
            fix="chmod 600",
        )
    return SecretStr(text)


# What a secret file's warnings have said in this process: each once, not at every reload.
_WARNED: set[tuple[str, str]] = set()


def _warn_once(event: str, *, path: str, **fields: str) -> None:
    if (event, path) not in _WARNED:
        _WARNED.add((event, path))
        log.warning(event, path=path, **fields)
