"""Settings of `ganwatch serve`: precedence, validation messages, secrets, flags and the reference table."""

import argparse
import json

import pytest

from ganwatch.settings import (
    Settings,
    SettingsError,
    add_serve_arguments,
    settings_reference_markdown,
)

REQUIRED = {
    "model": "/models/current",
    "bootstrap_servers": "kafka:9092",
    "input_topics": ["readings"],
    "alerts_topic": "alerts",
    "dead_letter_topic": "dead",
    "redis_url": "redis://localhost:6379/0",
}


def load(env=None, config=None, **cli):
    return Settings.load({**REQUIRED, **cli}, env or {}, config)


def error_of(env=None, config=None, **cli) -> str:
    with pytest.raises(SettingsError) as info:
        load(env, config, **cli)
    message = str(info.value)
    assert "\n" not in message
    return message


def serve_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ganwatch")
    parser.add_argument("--log-level", default=None)  # as ganwatch.cli: unset unless given
    add_serve_arguments(parser.add_subparsers(dest="command").add_parser("serve"))
    return parser


def test_defaults():
    s = load()
    assert (s.group_id, s.device, s.max_batch, s.max_wait_ms, s.stride) == ("ganwatch", "auto", 8192, 100, 1)
    assert s.max_partition_fetch_bytes == 4 * 1024 * 1024  # a full max_batch of 500-byte readings
    assert (s.alert_mode, s.episode_end_windows, s.missing_channel) == ("episode", 5, "carry")
    assert s.max_gap_s is None  # the gap rule stored in the model
    assert (s.entity_field, s.ts_field, s.values_field) == ("entity", "ts", "values")
    assert (s.state_ttl_s, s.state_prefix, s.metrics_port, s.metrics_host) == (
        7 * 86400, "ganwatch", 9108, "0.0.0.0")
    assert (s.reload_poll_s, s.security_protocol, s.compression_type) == (10, "PLAINTEXT", "none")
    assert (s.session_timeout_ms, s.heartbeat_interval_ms, s.fetch_max_wait_ms) == (10000, 3000, 500)
    assert s.scores_topic is None and s.redis_password is None
    assert (s.torch_threads, s.log_level, s.log_format) == (1, "INFO", "text")


def test_precedence_defaults_config_env_cli(tmp_path):
    config = tmp_path / "ganwatch.yaml"
    config.write_text("stride: 2\nmax_batch: 10\nmax-wait-ms: 7\ngroup_id: from-file\n")
    env = {"GANWATCH_STRIDE": "3", "GANWATCH_MAX_BATCH": "20"}
    s = load(env, str(config), stride="4")
    assert s.stride == 4  # cli beats env beats file
    assert s.max_batch == 20  # env beats file
    assert s.max_wait_ms == 7 and s.group_id == "from-file"  # file beats defaults
    assert s.episode_end_windows == 5  # default


def test_json_config_and_config_from_environment(tmp_path):
    config = tmp_path / "settings.json"
    config.write_text(json.dumps({"alert_mode": "window", "input_topics": ["a", "b"]}))
    s = Settings.load({k: v for k, v in REQUIRED.items() if k != "input_topics"},
                      {"GANWATCH_CONFIG": str(config)})
    assert s.alert_mode == "window" and s.input_topics == ["a", "b"]


@pytest.mark.parametrize("text, expected", [
    ("stride: [1\n", "not valid YAML"),
    ("- 1\n- 2\n", "expected a mapping"),
    ("strides: 2\n", "unknown setting 'strides'"),
])
def test_bad_config_file(tmp_path, text, expected):
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    message = error_of(config=str(config))
    assert str(config) in message and expected in message


def test_missing_config_file(tmp_path):
    assert "config file" in error_of(config=str(tmp_path / "nope.yaml"))


def test_input_topics_from_env_and_repeated_flag():
    env = {"GANWATCH_INPUT_TOPICS": "a, b,,c"}
    s = Settings.load({k: v for k, v in REQUIRED.items() if k != "input_topics"}, env)
    assert s.input_topics == ["a", "b", "c"]
    args = serve_parser().parse_args(["serve", "--input-topic", "x", "--input-topic", "y,z"])
    assert load(input_topics=args.input_topics).input_topics == ["x", "y", "z"]


def test_empty_environment_variable_counts_as_unset():
    s = load({"GANWATCH_SCORES_TOPIC": "", "GANWATCH_STRIDE": " "})
    assert s.scores_topic is None and s.stride == 1


def test_error_names_flag_and_variable():
    message = error_of({"GANWATCH_STRIDE": "0"}, input_topics=["readings"])
    assert "--stride (GANWATCH_STRIDE): must be >= 1, got 0" in message
    assert "environment" in message


@pytest.mark.parametrize("field, value, expected", [
    ("max_batch", "0", "--max-batch (GANWATCH_MAX_BATCH): must be >= 1"),
    ("max_wait_ms", "-1", "--max-wait-ms (GANWATCH_MAX_WAIT_MS): must be >= 0"),
    ("stride", "two", "--stride (GANWATCH_STRIDE): must be a whole number, got 'two'"),
    ("device", "gpu", "--device (GANWATCH_DEVICE): must be 'auto', 'cpu' or 'cuda', got 'gpu'"),
    ("alert_mode", "always", "--alert-mode (GANWATCH_ALERT_MODE): must be"),
    ("missing_channel", "drop", "--missing-channel (GANWATCH_MISSING_CHANNEL)"),
    ("metrics_port", "70000", "--metrics-port (GANWATCH_METRICS_PORT): must be <= 65535"),
    ("torch_threads", "-1", "--torch-threads (GANWATCH_TORCH_THREADS): must be >= 0, got -1"),
    ("log_format", "xml", "--log-format (GANWATCH_LOG_FORMAT): must be 'json' or 'text'"),
    ("bootstrap_servers", "kafka", "--bootstrap-servers (GANWATCH_BOOTSTRAP_SERVERS)"),
    ("bootstrap_servers", "a:9092,b:99999", "got 'b:99999'"),
    ("redis_url", "http://redis:6379", "--redis-url (GANWATCH_REDIS_URL): must start with redis://"),
    ("redis_url", "unix://", "--redis-url (GANWATCH_REDIS_URL): a unix:// URL needs the socket path"),
    ("redis_url", "redis+cluster://:pw@a:1,b:x", "--redis-url (GANWATCH_REDIS_URL): Redis Cluster "
                                                "node 'b:x' has a bad port"),
    ("redis_url", "redis+cluster://a:1/2", "Redis Cluster has only database 0"),
    ("redis_url", "redis+cluster://", "a Redis Cluster URL needs at least one host:port"),
    ("redis_url", "redis+sentinel://a:1", "must start with redis://, rediss://, unix://, redis+cl"),
    ("input_topics", ",", "--input-topic (GANWATCH_INPUT_TOPICS): must not be empty"),
    ("alerts_topic", "bad topic", "--alerts-topic (GANWATCH_ALERTS_TOPIC): not a valid Kafka topic"),
    ("compression_type", "brotli", "--compression-type (GANWATCH_COMPRESSION_TYPE)"),
    ("ssl_cafile", "/no/such/ca.pem", "--ssl-cafile (GANWATCH_SSL_CAFILE): file not found"),
])
def test_invalid_values(field, value, expected):
    cli = {k: v for k, v in REQUIRED.items() if k != field}
    with pytest.raises(SettingsError, match=r".") as info:
        Settings.load(cli, {f"GANWATCH_{field.upper()}": value})
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_missing_required_fields_are_all_named_on_one_line():
    with pytest.raises(SettingsError) as info:
        Settings.load({}, {})
    message = str(info.value)
    assert "\n" not in message
    for flag in ("--model", "--bootstrap-servers", "--input-topic", "--alerts-topic",
                 "--dead-letter-topic", "--redis-url"):
        assert f"{flag} (GANWATCH_" in message
    assert "--scores-topic" not in message


@pytest.mark.parametrize("servers", ["kafka:9092", "a:1,b:2", " a:9092 , b.example.com:9093", "[::1]:9092"])
def test_valid_bootstrap_servers(servers):
    assert load(bootstrap_servers=servers).bootstrap_servers.count(":") >= 1


@pytest.mark.parametrize("url", ["redis://r:6379/0", "rediss://:pw@r:6380/1", "unix:///run/redis.sock",
                                 "redis+cluster://r1:7000", "redis+cluster://u:pw@r1:7000,r2:7001/0",
                                 "rediss+cluster://[::1]:7000,r2"])
def test_valid_redis_urls(url):
    assert load(redis_url=url).redis_url == url


def test_case_of_choices_is_normalised():
    s = load(security_protocol="plaintext", device="CPU", log_level="debug")
    assert (s.security_protocol, s.device, s.log_level) == ("PLAINTEXT", "cpu", "DEBUG")


def test_sasl_needs_mechanism_user_and_password():
    message = error_of(security_protocol="SASL_SSL", sasl_password="hunter2")
    assert "--sasl-mechanism (GANWATCH_SASL_MECHANISM)" in message
    assert "--sasl-username (GANWATCH_SASL_USERNAME)" in message
    assert "--sasl-password" not in message and "hunter2" not in message
    s = load(security_protocol="SASL_SSL", sasl_mechanism="scram-sha-512", sasl_username="u",
             sasl_password="hunter2")
    assert s.sasl_mechanism == "SCRAM-SHA-512"
    assert s.sasl_password.get_secret_value() == "hunter2"


def test_sasl_credentials_without_sasl_protocol_are_an_error():
    assert "does not use SASL" in error_of(sasl_username="u")


def test_tls_files_must_exist_and_need_a_tls_protocol(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert load(security_protocol="SSL", ssl_cafile=str(ca)).ssl_cafile == str(ca)
    assert load(security_protocol="SSL").security_protocol == "SSL"  # nothing else needed
    assert "does not use TLS" in error_of(ssl_cafile=str(ca))
    assert "file not found" in error_of(security_protocol="SSL", ssl_keyfile=str(tmp_path / "k"))
    assert "go together" in error_of(security_protocol="SSL", ssl_certfile=str(ca))


def test_redis_ca_needs_rediss(tmp_path):
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    assert "rediss://" in error_of(redis_ssl_ca=str(ca))
    assert load(redis_ssl_ca=str(ca), redis_url="rediss://r:6380").redis_ssl_ca == str(ca)
    assert "rediss+cluster://" in error_of(redis_ssl_ca=str(ca), redis_url="redis+cluster://r:7000")
    assert load(redis_ssl_ca=str(ca), redis_url="rediss+cluster://r:7000").redis_ssl_ca == str(ca)


def test_heartbeat_must_be_below_session_timeout():
    assert "--heartbeat-interval-ms" in error_of(session_timeout_ms=3000, heartbeat_interval_ms=3000)


def test_secrets_never_shown():
    s = load(redis_url="redis://user:urlsecret@r:6379/0", redis_password="hunter2",
             security_protocol="SASL_PLAINTEXT", sasl_mechanism="PLAIN", sasl_username="u",
             sasl_password="saslsecret")
    for text in (repr(s), str(s), str(s.redacted()), json.dumps(s.redacted())):
        assert "hunter2" not in text and "saslsecret" not in text
    redacted = s.redacted()
    assert "urlsecret" not in json.dumps(redacted)
    assert redacted["redis_url"] == "redis://user:***@r:6379/0"
    assert redacted["redis_password"] == "***" and redacted["sasl_password"] == "***"
    assert redacted["stride"] == 1 and set(redacted) == set(Settings.model_fields)
    assert sorted(s.secrets()) == ["hunter2", "saslsecret", "urlsecret"]


def test_a_password_in_a_cluster_url_is_masked_and_never_in_errors():
    s = load(redis_url="redis+cluster://u:csecret@r1:7000,r2:7001")
    assert s.redacted()["redis_url"] == "redis+cluster://u:***@r1:7000,r2:7001"
    assert s.secrets() == ["csecret"]
    message = error_of(redis_url="redis+cluster://u:csecret@r1:7000,r2:bad")
    assert "r2:bad" in message and "csecret" not in message


def test_password_in_a_url_query_is_masked_and_listed_as_a_secret():
    s = load(redis_url="unix:///run/redis.sock?db=1&password=qsecret")
    assert s.redacted()["redis_url"] == "unix:///run/redis.sock?db=1&password=***"
    assert "qsecret" not in str(s.redacted()) and s.secrets() == ["qsecret"]
    assert load().secrets() == []


def test_unknown_ganwatch_variables_are_listed_not_fatal():
    env = {"GANWATCH_STRIDES": "2", "GANWATCH_STRIDE": "3", "GANWATCH_CONFIG": "", "HOME": "/"}
    assert Settings.unknown_env(env) == ["GANWATCH_STRIDES"]
    assert load(env).stride == 3


def test_unknown_cli_key_is_an_error():
    with pytest.raises(SettingsError, match="unknown setting 'strides'"):
        load(strides=2)


def test_env_names_cover_every_field():
    names = Settings.env_names()
    assert names == {f"GANWATCH_{f.upper()}" for f in Settings.model_fields} | {"GANWATCH_CONFIG"}
    assert {"GANWATCH_INPUT_TOPICS", "GANWATCH_REDIS_PASSWORD", "GANWATCH_SASL_PASSWORD"} <= names


def test_every_setting_is_read_from_its_environment_variable():
    # a value unlike the default for each simple field, given only through the environment
    expected = {"group_id": "g2", "stride": 3, "max_batch": 7, "max_wait_ms": 9,
                "episode_end_windows": 2, "max_gap_s": 0.5, "entity_field": "e", "ts_field": "t",
                "values_field": "v", "state_ttl_s": 60, "state_prefix": "p", "metrics_port": 0,
                "metrics_host": "127.0.0.1", "log_format": "json", "log_level": "ERROR",
                "reload_poll_s": 0, "scores_topic": "scores", "compression_type": "gzip",
                "fetch_max_wait_ms": 50, "session_timeout_ms": 2000, "heartbeat_interval_ms": 300,
                "device": "cuda", "alert_mode": "window", "missing_channel": "dead-letter",
                "torch_threads": 0}
    s = load({f"GANWATCH_{k.upper()}": str(v) for k, v in expected.items()})
    assert {k: getattr(s, k) for k in expected} == expected


def test_serve_flags_cover_every_field_with_unset_defaults():
    args = serve_parser().parse_args(["serve"])
    for name in Settings.model_fields:
        assert getattr(args, name) is None, name  # unset: env and config file may fill them
    assert args.config is None
    top = serve_parser().parse_args(["--log-level", "WARNING", "serve"])
    assert top.log_level == "WARNING"  # the top-level --log-level is not clobbered by serve's


def test_log_level_and_format_come_from_env_unless_the_flag_says_otherwise():
    env = {"GANWATCH_LOG_LEVEL": "error", "GANWATCH_LOG_FORMAT": "JSON"}
    args = serve_parser().parse_args(["serve"])
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("command", "config")}
    s = load(env, **given)
    assert (s.log_level, s.log_format) == ("ERROR", "json")
    args = serve_parser().parse_args(["serve", "--log-level", "DEBUG"])
    assert load(env, log_level=args.log_level).log_level == "DEBUG"


def test_serve_command_line_builds_settings():
    argv = ["serve", "--model", "/m", "--bootstrap-servers", "k:9092", "--input-topic", "t",
            "--alerts-topic", "a", "--dead-letter-topic", "d", "--scores-topic", "s",
            "--redis-url", "redis://r:6379", "--group-id", "g", "--alert-mode", "window",
            "--stride", "4", "--device", "cpu", "--metrics-port", "9200", "--log-level", "DEBUG"]
    args = serve_parser().parse_args(argv)
    assert args.log_level == "DEBUG"
    cli = {k: v for k, v in vars(args).items()
           if v is not None and k not in ("command", "log_level", "config")}
    s = Settings.load(cli, {})
    assert (s.model, s.input_topics, s.scores_topic, s.group_id) == ("/m", ["t"], "s", "g")
    assert (s.alert_mode, s.stride, s.device, s.metrics_port) == ("window", 4, "cpu", 9200)


def test_reference_table_lists_every_setting():
    table = settings_reference_markdown()
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    assert len(rows) == len(Settings.model_fields) + 1  # + --config
    assert "| `--stride` | `GANWATCH_STRIDE` | `1` |" in table
    assert "| `--model` | `GANWATCH_MODEL` | required |" in table
    assert "| `--input-topic` | `GANWATCH_INPUT_TOPICS` | required |" in table
    assert "`episode`, `window`" in table
    for name, info in Settings.model_fields.items():
        assert info.description, name
        assert f"`GANWATCH_{name.upper()}`" in table
