"""Settings of ``ganwatch serve``: one pydantic model, four layers.

Precedence, lowest to highest: field defaults < config file (YAML or JSON, ``--config PATH`` or
``GANWATCH_CONFIG``) < environment variables ``GANWATCH_<FIELD>`` < command-line flags ``--field-name``.
Every validation problem becomes one ``SettingsError`` line naming the flag and the variable.
"""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Any, Literal, Mapping
from urllib.parse import parse_qsl, urlencode, urlsplit

import yaml
from pydantic import (
    BaseModel, ConfigDict, Field, SecretStr, ValidationError, ValidationInfo, field_validator,
    model_validator,
)
from pydantic_core import PydanticUndefined

from detector.alert import DEFAULT_ALERT_MODE, DEFAULT_END_WINDOWS


ENV_PREFIX = "GANWATCH_"
CONFIG_ENV = ENV_PREFIX + "CONFIG"
FLAG_OVERRIDES = {"input_topics": "--input-topic"}  # repeatable flag, one topic each
SECRET_MASK = "***"
_HOST_PORT = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.-]+):(\d{1,5})$")
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")  # Kafka's legal topic names
REDIS_SCHEMES = ("redis", "rediss", "unix", "redis+cluster", "rediss+cluster")


class SettingsError(ValueError):
    """Invalid settings, as one line that names the flag and environment variable."""


def flag_of(name: str) -> str:
    return FLAG_OVERRIDES.get(name, "--" + name.replace("_", "-"))


def env_of(name: str) -> str:
    return ENV_PREFIX + name.upper()


def label(name: str) -> str:
    """``--stride (GANWATCH_STRIDE)``: how errors name a setting."""
    return f"{flag_of(name)} ({env_of(name)})"


class Settings(BaseModel):
    """Everything ``ganwatch serve`` can be told; field names are the contract for flags and env."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())

    # what to run
    model: str = Field(description="Artifact directory written by `ganwatch train`.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="Torch device for scoring.")
    torch_threads: int = Field(
        1, ge=0, description="Torch CPU threads (`torch.set_num_threads`), applied whatever the "
        "device; 1 leaves the other cores to the Kafka and Redis clients, 0 = torch's default "
        "(one per core, or `OMP_NUM_THREADS`).")
    # Kafka
    bootstrap_servers: str = Field(description="Kafka brokers, `host:port[,host:port]`.")
    input_topics: list[str] = Field(
        min_length=1, description="Topics with readings (flag repeatable; env comma-separated).")
    group_id: str = Field("ganwatch", min_length=1, description="Kafka consumer group.")
    alerts_topic: str = Field(description="Topic the alerts are published to.")
    dead_letter_topic: str = Field(description="Topic for messages that cannot be processed.")
    scores_topic: str | None = Field(None, description="Optional topic for every window's score.")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL mechanism (needed by the SASL_* protocols).")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        None, description="SASL password (secret; prefer the environment variable).")
    ssl_cafile: str | None = Field(None, description="CA bundle that signed the brokers' certificates.")
    ssl_certfile: str | None = Field(None, description="Client certificate for mutual TLS.")
    ssl_keyfile: str | None = Field(None, description="Private key of the client certificate.")
    session_timeout_ms: int = Field(10000, ge=1, description="Consumer group session timeout.")
    heartbeat_interval_ms: int = Field(3000, ge=1, description="Consumer heartbeat interval.")
    fetch_max_wait_ms: int = Field(500, ge=0, description="Longest a fetch waits on the broker.")
    max_partition_fetch_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="Most bytes a fetch returns per partition; 4 MiB "
        "holds a full `max_batch` of readings of up to 500 bytes.")
    compression_type: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "none", description="Compression of produced alerts (snappy/lz4/zstd need the `fast` extra).")
    # Redis
    redis_url: str = Field(description="Redis for window state: `redis://`, `rediss://` (TLS), "
                           "`unix://`, or `redis+cluster://host:port[,host:port...]` "
                           "(`rediss+cluster://` with TLS) for a Redis Cluster.")
    redis_password: SecretStr | None = Field(
        None, description="Redis password (secret; overrides one in the URL).")
    redis_ssl_ca: str | None = Field(
        None, description="CA bundle for a `rediss://` Redis or `rediss+cluster://` cluster.")
    state_ttl_s: int = Field(7 * 24 * 3600, ge=1,
                             description="Entity state expires after this many idle seconds (7 days).")
    state_prefix: str = Field("ganwatch", min_length=1, description="Prefix of the Redis keys.")
    # stream and alert rules
    max_batch: int = Field(8192, ge=1, description="Most messages scored in one batch.")
    max_wait_ms: int = Field(100, ge=0, description="Longest wait for a batch to fill.")
    pipeline: Literal["on", "off"] = Field(
        "on", description="`on`: the model scores in a child process, one batch while the next is "
        "polled and parsed; `off`: one batch at a time, scored in this process.")
    stride: int = Field(1, ge=1, description="Score every k-th reading of an entity.")
    alert_mode: Literal["episode", "window"] = Field(
        DEFAULT_ALERT_MODE,
        description="`episode`: start/end alerts; `window`: one alert per anomalous window.")
    episode_end_windows: int = Field(
        DEFAULT_END_WINDOWS, ge=1, description="Consecutive normal windows that end an episode.")
    max_gap_s: float | None = Field(
        None, ge=0, description="The window restarts after a gap longer than this (0 = never); "
        "unset: the gap rule stored in the model, learned from its training data.")
    missing_channel: Literal["carry", "dead-letter"] = Field(
        "carry", description="A reading without some channel: carry the last value or dead-letter it.")
    max_future_s: float = Field(
        300, ge=0, description="Dead-letter (`future_ts`) readings dated more than this many seconds "
        "ahead of the worker's clock (0 = off): one reading from a clock a year ahead would make "
        "every later real reading of its entity a duplicate.")
    max_retries: int = Field(
        5, ge=0, description="Retries of a failing batch, per stage, before the entities that "
        "still fail are set aside as dead letters (`failed_<stage>`); outages (a server "
        "unreachable or timing out) are retried while they last.")
    max_dead_letter_bytes: int = Field(
        1_000_000, ge=4096, description="A dead letter longer than this (key and value) is cut to "
        "fit and marked `truncated`; keep it below the broker's `message.max.bytes`.")
    score_timeout_s: float = Field(
        60, gt=0, description="Longest one scoring call may take; past it the scoring process is "
        "killed and restarted and the batch retried.")
    live_timeout_s: float = Field(
        120, gt=0, description="/healthz fails once one batch has taken longer than this, "
        "retries included; an idle worker stays live.")
    entity_field: str = Field("entity", min_length=1, description="JSON field with the entity name.")
    ts_field: str = Field("ts", min_length=1, description="JSON field with the reading's timestamp.")
    values_field: str = Field("values", min_length=1, description="JSON field with channel values.")
    # operations
    metrics_port: int = Field(9108, ge=0, le=65535,
                              description="Port of /metrics, /healthz and /readyz (0 = off).")
    metrics_host: str = Field("0.0.0.0", description="Address the metrics server binds.")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field("INFO", description="Log level.")
    log_format: Literal["json", "text"] = Field("text", description="Log line format.")
    reload_poll_s: float = Field(10, ge=0,
                                 description="Check the artifact for a new model this often (0 = off).")

    @field_validator("input_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: Any) -> Any:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, (list, tuple)):
            return [t.strip() for item in items for t in str(item).split(",") if t.strip()]
        return value

    @field_validator("input_topics", "alerts_topic", "dead_letter_topic", "scores_topic")
    @classmethod
    def _topic_names(cls, value: list[str] | str | None) -> list[str] | str | None:
        for topic in [value] if isinstance(value, str) else value or ():
            if not _TOPIC.match(topic):
                raise ValueError(f"not a valid Kafka topic name: {topic!r}")
        return value

    @field_validator("bootstrap_servers")
    @classmethod
    def _host_ports(cls, value: str) -> str:
        servers = [s.strip() for s in value.split(",") if s.strip()]
        if not servers:
            raise ValueError("needs at least one host:port")
        for server in servers:
            match = _HOST_PORT.match(server)
            if not match or not 0 < int(match.group(2)) < 65536:
                raise ValueError(f"expected host:port[,host:port], got {server!r}")
        return ",".join(servers)

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in REDIS_SCHEMES:
            raise ValueError(f"must start with redis://, rediss://, unix://, redis+cluster:// or "
                             f"rediss+cluster://, got {_mask_url(value)!r}")
        if parts.scheme == "unix" and not parts.path:
            raise ValueError(f"a unix:// URL needs the socket path (unix:///run/redis.sock), got "
                             f"{_mask_url(value)!r}")
        if parts.scheme.endswith("+cluster"):
            from connectors.redis_cluster import validate_cluster_url  # redis-py: only when needed

            validate_cluster_url(value)  # its messages never show the user info
        return value

    @field_validator("*", mode="before")
    @classmethod
    def _choice_case(cls, value: Any, info: ValidationInfo) -> Any:
        """Choices match case-insensitively: ``sasl_ssl`` is ``SASL_SSL``, ``CPU`` is ``cpu``."""
        choices = _choices(info.field_name) if isinstance(value, str) else None
        folded = {c.lower(): c for c in choices or ()}
        return folded.get(value.strip().lower(), value) if choices else value

    @field_validator("ssl_cafile", "ssl_certfile", "ssl_keyfile", "redis_ssl_ca")
    @classmethod
    def _files(cls, value: str | None) -> str | None:
        if value is not None and not Path(value).is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        protocol = self.security_protocol
        sasl = [n for n in ("sasl_mechanism", "sasl_username", "sasl_password") if getattr(self, n)]
        if protocol.startswith("SASL_") and len(sasl) < 3:
            missing = [label(n) for n in ("sasl_mechanism", "sasl_username", "sasl_password")
                       if n not in sasl]
            raise ValueError(f"--security-protocol {protocol} needs {', '.join(missing)}")
        tls = [n for n in ("ssl_cafile", "ssl_certfile", "ssl_keyfile") if getattr(self, n)]
        for names, used, what in ((sasl, protocol.startswith("SASL_"), "SASL"),
                                  (tls, protocol.endswith("SSL"), "TLS")):
            if names and not used:  # credentials that would be silently ignored
                raise ValueError(f"{', '.join(map(label, names))} set but --security-protocol "
                                 f"{protocol} does not use {what}")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError(f"{label('ssl_certfile')} and {label('ssl_keyfile')} go together")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(f"{label('heartbeat_interval_ms')} must be below "
                             f"{label('session_timeout_ms')}, got {self.heartbeat_interval_ms} >= "
                             f"{self.session_timeout_ms}")
        if self.redis_ssl_ca and urlsplit(self.redis_url).scheme not in ("rediss", "rediss+cluster"):
            raise ValueError(f"{label('redis_ssl_ca')} needs a rediss:// or rediss+cluster:// "
                             f"{label('redis_url')}")
        return self

    @classmethod
    def load(cls, cli: Mapping[str, Any], env: Mapping[str, str] = os.environ,
             config_path: str | None = None) -> "Settings":
        """Merge defaults < config file < ``GANWATCH_*`` environment < ``cli`` and validate.

        ``GANWATCH_*`` variables that name no setting are ignored (see ``unknown_env``).
        """
        raw: dict[str, Any] = {}
        source: dict[str, str] = {}
        path = config_path or env.get(CONFIG_ENV) or None
        if path:
            for key, value in read_config_file(path).items():
                name = str(key).replace("-", "_")
                if name not in cls.model_fields:
                    raise SettingsError(f"config file {path}: unknown setting {key!r}")
                raw[name], source[name] = value, f"config file {path}"
        for name in cls.model_fields:
            value = env.get(env_of(name))
            if value is not None and value.strip():  # an empty variable counts as unset
                raw[name], source[name] = value, "environment"
        for name, value in cli.items():
            if value is None:
                continue
            if name not in cls.model_fields:
                raise SettingsError(f"unknown setting {name!r}")
            raw[name], source[name] = value, "command line"
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise SettingsError(describe_errors(exc, source)) from None

    @classmethod
    def unknown_env(cls, env: Mapping[str, str]) -> list[str]:
        """``GANWATCH_*`` variables in ``env`` that ``load`` ignores (typos, usually), sorted."""
        return sorted(k for k in env if k.startswith(ENV_PREFIX) and k not in cls.env_names())

    @classmethod
    def env_names(cls) -> set[str]:
        """Every ``GANWATCH_*`` variable ``load`` reads."""
        return {env_of(name) for name in cls.model_fields} | {CONFIG_ENV}

    def redacted(self) -> dict[str, Any]:
        """The settings for logs: secrets masked, passwords in URLs masked."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = SECRET_MASK
            elif isinstance(value, str) and "://" in value:
                value = _mask_url(value)
            elif isinstance(value, list):
                value = list(value)
            out[name] = value
        return out

    def secrets(self) -> list[str]:
        """Every secret value in the settings (passwords, and a password inside ``redis_url``)."""
        found = [v.get_secret_value() for v in (self.sasl_password, self.redis_password) if v]
        parts = urlsplit(self.redis_url)
        found += [parts.password or ""]
        found += [v for k, v in parse_qsl(parts.query) if k.lower() == "password"]
        return [s for s in found if s]


def _mask_url(url: str) -> str:
    """``url`` with the password in its user info or in a ``password=`` query replaced by ``***``."""
    parts = urlsplit(url)
    netloc, query = parts.netloc, parts.query
    if parts.password is not None:
        netloc = f"{parts.username or ''}:{SECRET_MASK}@{netloc.rpartition('@')[2]}"
    pairs = parse_qsl(query, keep_blank_values=True)
    if any(k.lower() == "password" for k, _ in pairs):
        query = urlencode([(k, SECRET_MASK if k.lower() == "password" else v) for k, v in pairs],
                          safe="*")
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    # by hand: urlunsplit would turn unix:///path into unix:/path (an empty netloc is dropped)
    fragment = f"#{parts.fragment}" if parts.fragment else ""
    sep = "//" if "//" in url else ""
    return f"{parts.scheme}:{sep}{netloc}{parts.path}{'?' if query else ''}{query}{fragment}"


def read_config_file(path: str) -> dict[str, Any]:
    """A flat mapping of settings from a YAML or JSON file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SettingsError(f"config file {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        kind = "JSON" if path.endswith(".json") else "YAML"
        raise SettingsError(f"config file {path}: not valid {kind}: "
                            + " ".join(str(exc).split())) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise SettingsError(f"config file {path}: expected a mapping of settings, "
                            f"got {type(data).__name__}")
    return data


def _problem(err: Mapping[str, Any], secret: bool) -> str:
    kind, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    got = "" if secret else f", got {value}"
    if kind == "missing":
        return "is required"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    bounds = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=",
              "less_than": "<"}
    if kind in bounds:
        limit = next(iter(ctx.values()))
        limit = int(limit) if isinstance(limit, float) and limit.is_integer() else limit
        return f"must be {bounds[kind]} {limit}{got}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}" + ("" if secret else f", got {value!r}")
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return "must be a whole number" + ("" if secret else f", got {value!r}")
    if kind in ("float_parsing", "float_type"):
        return "must be a number" + ("" if secret else f", got {value!r}")
    if kind in ("too_short", "string_too_short"):
        return "must not be empty"
    return str(err.get("msg", kind)).lower()


def describe_errors(exc: ValidationError, source: Mapping[str, str]) -> str:
    """One line for all problems: ``--stride (GANWATCH_STRIDE): must be >= 1, got 0 (from environment)``."""
    lines = []
    for err in exc.errors():
        loc = err.get("loc") or ()
        name = loc[0] if loc and loc[0] in Settings.model_fields else None
        if name is None:
            lines.append(str((err.get("ctx") or {}).get("error", err.get("msg"))))
            continue
        secret = name.endswith("password")
        where = f" (from {source[name]})" if name in source else ""
        lines.append(f"{label(name)}: {_problem(err, secret)}{where}")
    return "; ".join(" ".join(line.split()) for line in lines)


def _choices(name: str) -> list[str] | None:
    annotation = Settings.model_fields[name].annotation
    args = getattr(annotation, "__args__", ())
    for arg in (annotation, *args):
        if getattr(arg, "__origin__", None) is Literal:
            return [str(a) for a in arg.__args__]
    return None


def add_serve_arguments(parser: argparse.ArgumentParser, names: tuple[str, ...] | None = None
                        ) -> None:
    """Every setting (or those in ``names``) as a flag with default None (unset), so env and config
    file can fill it; the help shows the setting's own default."""
    if names is None:
        parser.add_argument("--config", default=None, metavar="PATH",
                            help=f"YAML or JSON file of settings (default unset; env {CONFIG_ENV})")
    for name, info in Settings.model_fields.items():
        if names is not None and name not in names:
            continue
        choices = _choices(name)
        default = _default_text(name).strip("`")
        default = default if default == "required" else f"default {default}"
        help_text = f"{info.description} ({default}; env {env_of(name)})".replace("%", "%%")
        kwargs: dict[str, Any] = {"dest": name, "help": help_text}
        if name == "log_level":
            # the top-level parser owns --log-level; SUPPRESS keeps its value when serve omits it
            kwargs["default"] = argparse.SUPPRESS
        else:
            kwargs["default"] = None
        if choices:
            kwargs["metavar"] = "{" + ",".join(choices) + "}"
        if name == "input_topics":
            kwargs.update(action="append", metavar="TOPIC")
        parser.add_argument(flag_of(name), **kwargs)


def _default_text(name: str) -> str:
    info = Settings.model_fields[name]
    if info.default is PydanticUndefined:
        return "required"
    if info.default is None:
        return "unset"
    return f"`{info.default}`"


def settings_reference_markdown() -> str:
    """The settings table for the README, generated from the model so it cannot drift."""
    rows = ["| Flag | Environment variable | Default | Description |",
            "| --- | --- | --- | --- |",
            f"| `--config` | `{CONFIG_ENV}` | unset | YAML or JSON file with any of the settings "
            f"below, keyed by field name (e.g. `max_batch`). |"]
    for name, info in Settings.model_fields.items():
        description = info.description or ""
        choices = _choices(name)
        if choices:
            description += " One of " + ", ".join(f"`{c}`" for c in choices) + "."
        rows.append(f"| `{flag_of(name)}` | `{env_of(name)}` | {_default_text(name)} | "
                    f"{description.replace('|', chr(92) + '|')} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    print(settings_reference_markdown(), end="")
