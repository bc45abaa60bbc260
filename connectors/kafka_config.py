"""The one place that turns the settings into a Kafka client's connection and security options.

:func:`kafka_config` builds the librdkafka (confluent-kafka) configuration of every Producer,
Consumer and AdminClient of the product; :func:`kafka_ssl_context` the TLS context the Faust
worker (aiokafka) uses for the same brokers. :func:`explain_kafka_errors` turns librdkafka's
authentication and TLS errors into a message that names the settings to check.

Secrets: the SASL password goes into the client's configuration only (never into a log line,
an exception or a command line); :class:`KafkaErrors` keeps librdkafka's error events, whose
texts never contain it.
"""

from __future__ import annotations

import logging
import ssl
import threading
from collections.abc import Mapping
from typing import Any

from streamdl.settings import Settings

logger = logging.getLogger(__name__)

VERIFY_OFF_WARNING = (
    "TLS certificate verification for Kafka is OFF (STREAMDL_KAFKA_SSL_VERIFY=false): "
    "anyone between this process and the brokers can read and change the traffic. Use it for tests only."
)


class KafkaErrors:
    """An ``error_cb`` that keeps the last error events of a client (thread-safe), and logs the
    authentication and TLS ones once, with what to check."""

    KEEP = 20

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.events: list[tuple[str, str]] = []  # (error name, text)
        self._logged: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, err: Any) -> None:
        name, text = _name(err), str(err.str() if hasattr(err, "str") else err)
        with self._lock:
            self.events = [*self.events[-(self.KEEP - 1) :], (name, text)]
            kind = classify(name, text)
            first = kind is not None and kind not in self._logged
            if first:
                self._logged.add(kind)
        if first:
            logger.error("%s", explain_kafka_errors(self.settings, [(name, text)]))
        else:
            logger.debug("kafka client error %s: %s", name, text)

    def explain(self) -> str | None:
        """What the recorded errors mean (``None`` when none is a security problem)."""
        with self._lock:
            events = list(self.events)
        return explain_kafka_errors(self.settings, events, only_security=True)


class LibrdkafkaLog:
    """librdkafka's ``logger``: its log lines (``Connect to ... failed: Connection refused``, once a second
    while a broker is down) go to the ``librdkafka`` Python logger at DEBUG instead of to stderr. What a
    user must know reaches them through the ``error_cb`` (:class:`KafkaErrors`) and the product's errors."""

    logger = logging.getLogger("librdkafka")

    def log(self, level: int, msg: str, *args: Any) -> None:
        self.logger.debug(msg, *args)


LIBRDKAFKA_LOG = LibrdkafkaLog()


def kafka_config(settings: Settings, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The confluent-kafka configuration for the configured cluster: ``bootstrap.servers``, the
    security protocol, SASL credentials, CA file and certificate verification, plus ``extra``
    (client options such as ``group.id``; they may override anything here).

    Unless ``extra`` gives one, an ``error_cb`` (:class:`KafkaErrors`) records the client's errors, and
    librdkafka's own log lines go to Python logging at DEBUG (:class:`LibrdkafkaLog`), not to stderr.
    ``kafka_ssl_verify=False`` logs a warning each time a client is configured with it.
    """
    protocol = settings.kafka_security_protocol
    config: dict[str, Any] = {"bootstrap.servers": settings.kafka_bootstrap_servers, "security.protocol": protocol}
    if protocol.startswith("SASL_"):
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_username
        config["sasl.password"] = settings.kafka_password.get_secret_value() if settings.kafka_password else ""
    if protocol.endswith("SSL"):
        if settings.kafka_ssl_ca_file:
            config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
        config["enable.ssl.certificate.verification"] = settings.kafka_ssl_verify
        if not settings.kafka_ssl_verify:
            config["ssl.endpoint.identification.algorithm"] = "none"
            logger.warning(VERIFY_OFF_WARNING)
    config["error_cb"] = KafkaErrors(settings)
    config["logger"] = LIBRDKAFKA_LOG
    config.update(extra or {})
    return config


def kafka_ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The TLS context of an aiokafka (Faust) client for the configured brokers; ``None`` without TLS."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    context = ssl.create_default_context(
        ssl.Purpose.SERVER_AUTH, cafile=str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None
    )
    if not settings.kafka_ssl_verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        logger.warning(VERIFY_OFF_WARNING)
    return context


def faust_credentials(settings: Settings) -> Any:
    """Faust's ``broker_credentials`` for the configured security protocol (``None`` for PLAINTEXT)."""
    import faust

    protocol = settings.kafka_security_protocol
    if protocol == "PLAINTEXT":
        return None
    context = kafka_ssl_context(settings)
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=settings.kafka_username,
        password=settings.kafka_password.get_secret_value() if settings.kafka_password else None,
        ssl_context=context,
        mechanism=settings.kafka_sasl_mechanism,
    )


# --- explaining failures ----------------------------------------------------------------------
def _name(err: Any) -> str:
    try:
        return str(err.name())
    except Exception:  # noqa: BLE001 - not a KafkaError
        return type(err).__name__


def classify(name: str, text: str) -> str | None:
    """``"auth"``, ``"tls"``, ``"protocol"`` or ``None`` (not about security) for one librdkafka error."""
    low = text.lower()
    if name == "_AUTHENTICATION" or "sasl authentication" in low:
        return "auth"
    if "certificate verify failed" in low or "certificate could not be verified" in low:
        return "tls"
    if (
        name == "_SSL"
        or "incorrect security.protocol" in low
        or "ssl handshake failed" in low
        or "plaintext broker listener" in low
    ):
        return "protocol"
    return None


def explain_kafka_errors(
    settings: Settings, events: list[tuple[str, str]], *, only_security: bool = False
) -> str | None:
    """A message for the most telling of ``events`` (``(error name, text)`` pairs from librdkafka)
    that names the settings to check; ``None`` when ``only_security`` and none is about security."""
    servers = settings.kafka_bootstrap_servers
    kinds = {classify(name, text): text for name, text in events}
    if "auth" in kinds:
        return (
            f"Kafka at {servers} refused the credentials ({settings.kafka_sasl_mechanism} as user "
            f"{settings.kafka_username!r}): check STREAMDL_KAFKA_USERNAME and STREAMDL_KAFKA_PASSWORD "
            f"(or STREAMDL_KAFKA_PASSWORD_FILE) and STREAMDL_KAFKA_SASL_MECHANISM. Broker said: {_short(kinds['auth'])}"
        )
    if "tls" in kinds:
        ca = settings.kafka_ssl_ca_file or "the system's CAs"
        return (
            f"Kafka at {servers}: the broker's TLS certificate is not trusted (checked against {ca}): set "
            f"STREAMDL_KAFKA_SSL_CA_FILE to the PEM file of the CA that signed it, and check that the certificate "
            f"names the host in STREAMDL_KAFKA_BOOTSTRAP_SERVERS. Details: {_short(kinds['tls'])}"
        )
    if "protocol" in kinds:
        return (
            f"Kafka at {servers} does not speak {settings.kafka_security_protocol} on that port: check "
            "STREAMDL_KAFKA_SECURITY_PROTOCOL (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) against the broker's "
            f"listener. Details: {_short(kinds['protocol'])}"
        )
    if only_security or not events:
        return None
    return f"Kafka at {servers}: {_short(events[-1][1])}"


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + " ..."
