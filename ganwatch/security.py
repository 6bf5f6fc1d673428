"""Kafka client security for every command that talks to Kafka: ``serve`` and ``replay`` take the
same flags and ``GANWATCH_*`` variables, checked by the same ``Settings`` rules."""

from __future__ import annotations

from typing import Any, Mapping

from ganwatch.settings import Settings, env_of

KAFKA_SECURITY = ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                  "ssl_cafile", "ssl_certfile", "ssl_keyfile")


def kafka_security(settings: Settings) -> dict[str, Any]:
    """kafka-python's security keyword arguments for ``settings`` (serve and replay alike)."""
    from connectors.kafka import security_config

    return security_config(
        settings.security_protocol, sasl_mechanism=settings.sasl_mechanism,
        username=settings.sasl_username,
        password=settings.sasl_password.get_secret_value() if settings.sasl_password else None,
        ssl_cafile=settings.ssl_cafile, ssl_certfile=settings.ssl_certfile,
        ssl_keyfile=settings.ssl_keyfile,
    )


def load_kafka_security(cli: Mapping[str, Any], env: Mapping[str, str], bootstrap_servers: str
                        ) -> dict[str, Any]:
    """The Kafka security of a producer that is not ``serve`` (``replay``): the same flags,
    ``GANWATCH_*`` variables and checks as ``serve``'s, through ``Settings`` itself. Only the
    security settings and ``bootstrap_servers`` are read; the other required settings get
    stand-ins that are never used."""
    env_names = {env_of(n) for n in KAFKA_SECURITY}
    stand_ins = {"model": "-", "input_topics": ["ganwatch.readings"],
                 "alerts_topic": "ganwatch.alerts", "dead_letter_topic": "ganwatch.dead-letter",
                 "redis_url": "redis://localhost"}
    chosen = {k: v for k, v in cli.items() if k in KAFKA_SECURITY}
    settings = Settings.load({**stand_ins, **chosen, "bootstrap_servers": bootstrap_servers},
                             {k: v for k, v in env.items() if k in env_names})
    return kafka_security(settings)
