"""The Elasticsearch client built from the settings, and index/alias management."""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson
from elastic_transport import TlsError
from elasticsearch import ApiError, AuthenticationException, AuthorizationException, Elasticsearch, TransportError
from elasticsearch.serializer import JsonSerializer, NdjsonSerializer

from streamdl.errors import ServiceUnavailable, SettingsError
from streamdl.records import JSON_OPTIONS
from streamdl.settings import Settings

logger = logging.getLogger(__name__)


class _Orjson:
    """The client's JSON written and read by orjson: the standard library took ~50 µs to write one 64-float query
    vector of a multi-search, orjson ~2 µs. What orjson cannot write goes to the client's own ``default``."""

    default: Any

    def json_dumps(self, data: Any) -> bytes:
        return orjson.dumps(data, default=self.default, option=JSON_OPTIONS)

    def json_loads(self, data: bytes) -> Any:
        return orjson.loads(data)


class OrjsonJsonSerializer(_Orjson, JsonSerializer):
    """JSON bodies and answers (searches, documents, settings)."""


class OrjsonNdjsonSerializer(_Orjson, NdjsonSerializer):
    """NDJSON bodies and answers (multi-searches, bulks not encoded already)."""


def es_client(settings: Settings, **kwargs: Any) -> Elasticsearch:
    """A client for ``settings.es_url`` with the configured credentials (an API key, or basic auth),
    CA file and TLS verification, reading and writing JSON with orjson. ``es_verify_certs=False`` logs a warning
    each time."""
    auth: dict[str, Any] = {}
    if settings.es_api_key:
        auth["api_key"] = settings.es_api_key.get_secret_value()
    elif settings.es_username:
        password = settings.es_password.get_secret_value() if settings.es_password else ""
        auth["basic_auth"] = (settings.es_username, password)
    if settings.es_url.startswith("https"):
        if settings.es_ca_file:
            auth["ca_certs"] = str(settings.es_ca_file)
        if not settings.es_verify_certs:
            logger.warning(
                "TLS certificate verification for Elasticsearch is OFF (STREAMDL_ES_VERIFY_CERTS=false): anyone "
                "between this process and %s can read and change the traffic. Use it for tests only.",
                settings.es_url,
            )
            auth["ssl_show_warn"] = False  # warned once here, not on every request
    return Elasticsearch(
        settings.es_url,
        verify_certs=settings.es_verify_certs,
        request_timeout=30,
        retry_on_timeout=True,
        max_retries=3,
        serializers={"application/json": OrjsonJsonSerializer(), "application/x-ndjson": OrjsonNdjsonSerializer()},
        **auth,
        **kwargs,
    )


def check_elasticsearch(client: Elasticsearch, settings: Settings, timeout: float | None = None) -> str:
    """Fail fast with a one-line message when the cluster does not answer within ``timeout`` (default
    ``connect_timeout_secs``; one try, no retries); returns its health status."""
    timeout = settings.connect_timeout_secs if timeout is None else timeout
    try:
        health = client.options(request_timeout=timeout, max_retries=0).cluster.health(
            timeout=f"{max(1, int(timeout) - 1)}s"
        )
    except AuthenticationException:
        how = (
            "the API key (STREAMDL_ES_API_KEY)"
            if settings.es_api_key
            else (
                f"user {settings.es_username!r} and its password (STREAMDL_ES_USERNAME, STREAMDL_ES_PASSWORD)"
                if settings.es_username
                else "no credentials: set STREAMDL_ES_API_KEY, or STREAMDL_ES_USERNAME and STREAMDL_ES_PASSWORD"
            )
        )
        raise SettingsError(
            f"Elasticsearch at {settings.es_url} refused the credentials (401): check {how}; "
            "each may also come from a file named by <variable>_FILE."
        ) from None
    except AuthorizationException as exc:
        raise SettingsError(
            f"Elasticsearch at {settings.es_url} accepted the credentials but refused access (403: {exc.message}): "
            "the user or API key needs the cluster 'monitor' privilege and all privileges on the product's "
            f"indices ({settings.index_prefix}*)."
        ) from None
    except TlsError as exc:
        ca = settings.es_ca_file or "the system's CAs"
        raise SettingsError(
            f"Elasticsearch at {settings.es_url}: TLS failed ({_short(getattr(exc, 'message', None) or exc)}). "
            "If its certificate is not trusted, "
            f"set STREAMDL_ES_CA_FILE to the PEM file of the CA that signed it (now: {ca}) and check that it "
            "names the host in STREAMDL_ES_URL; if the server does not speak TLS, use an http:// URL."
        ) from None
    except (TransportError, ApiError) as exc:
        raise ServiceUnavailable(es_unavailable(settings, exc)) from None
    return str(health["status"])


def es_unavailable(settings: Settings, exc: Exception) -> str:
    """The one-line message for an Elasticsearch that did not answer: where, the cause in a few words,
    what to do."""
    text = f"{exc} {getattr(exc, 'message', '')}"
    cause = re.search(r"\[Errno -?\d+\] ([^)\]'\"]+)", text)
    why = cause.group(1).strip() if cause else _short(exc, 120)
    return (
        f"Elasticsearch at {settings.es_url} did not answer ({why}); is it running? "
        "Start it with 'streamdl stack up', or set STREAMDL_ES_URL."
    )


def _short(exc: Exception, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + " ..."


def ensure_index(
    client: Elasticsearch, alias: str, version: str, body: dict[str, Any], *, take_alias: bool = False
) -> str:
    """Create index ``<alias>-<version>`` (if missing); returns the concrete index name.

    The alias is pointed at it when the alias does not exist yet, or, with ``take_alias``, moved to
    it from wherever it points. Otherwise a differing alias is left alone (a reindex moves it, see
    :func:`switch_alias`) and a warning says so. Idempotent. One index per version keeps vectors
    of different featurizer versions apart; readers name the alias.
    """
    index = f"{alias}-{version}".lower()
    if not client.indices.exists(index=index):
        client.indices.create(index=index, **body)
        logger.info("created index %s", index)
    current = alias_targets(client, alias)
    if not current or (take_alias and current != [index]):
        switch_alias(client, alias, index)
    elif index not in current:
        logger.warning(
            "alias %s points at %s, not at %s; searches do not see this index until "
            "'streamdl index reindex' (or switch) moves the alias",
            alias,
            ", ".join(current),
            index,
        )
    return index


def alias_targets(client: Elasticsearch, alias: str) -> list[str]:
    """The indices ``alias`` points at (empty when it does not exist)."""
    if not client.indices.exists_alias(name=alias):
        return []
    return sorted(client.indices.get_alias(name=alias))


def switch_alias(client: Elasticsearch, alias: str, index: str) -> None:
    """Point ``alias`` at ``index`` alone, in one atomic request: readers never see it missing."""
    actions: list[dict[str, Any]] = [
        {"remove": {"index": old, "alias": alias}} for old in alias_targets(client, alias) if old != index
    ]
    actions.append({"add": {"index": index, "alias": alias, "is_write_index": True}})
    client.indices.update_aliases(actions=actions)
    logger.info("alias %s -> %s", alias, index)
