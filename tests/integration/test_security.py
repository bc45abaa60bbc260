"""Security of every connection, end to end.

A dedicated Kafka broker (not the shared one) listens with SASL_SSL (SCRAM-SHA-512) and a
certificate signed by a CA the test makes; a TLS-terminating proxy (the test's, checking basic
auth or an API key) stands in front of the shared Elasticsearch, since the local distribution has
no security module. Shown:

- the producers and a real worker process (Faust/aiokafka consumer, confluent-kafka producer and
  admin, Elasticsearch client) work with the right credentials and CA: events published over
  SASL_SSL are indexed over HTTPS; the password is on no command line and in no log;
- a wrong password, an untrusted CA or a wrong security protocol fails fast with a message that
  names the settings to check (``check_kafka``, ``streamdl init``, the producers, the worker, which
  exits non-zero with that message in its log);
- Elasticsearch over HTTPS: CA + basic auth or API key work; a wrong password (401) and an
  untrusted certificate fail clearly; ``es_verify_certs=False`` works and logs a warning; so does
  ``kafka_ssl_verify=False``.
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import ipaddress
import logging
import shutil
import ssl
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509

from streamdl.connectors.es_client import check_elasticsearch, es_client
from streamdl.connectors.event_producer import iter_sensors, publish_events
from streamdl.connectors.kafka_admin import admin_client, check_kafka
from streamdl.connectors.kafka_producer import produce_all
from streamdl.errors import ServiceUnavailable, SettingsError, StreamdlError
from streamdl.infra.fetch import fetch_kafka, find_java
from streamdl.infra.process import free_port, stop_process, tail
from streamdl.infra.services import kafka_cluster_id
from streamdl.settings import Settings, load_settings

pytestmark = pytest.mark.integration

KAFKA_USER, KAFKA_PASSWORD = "alice", f"kafka-{uuid.uuid4().hex}"
ES_USER, ES_PASSWORD, ES_API_KEY = (
    "streamdl",
    f"es-{uuid.uuid4().hex}",
    base64.b64encode(f"id1:{uuid.uuid4().hex}".encode()).decode(),
)
SECRETS = (KAFKA_PASSWORD, ES_PASSWORD, ES_API_KEY)


# --- certificates ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA that signed the servers' certificate (PEM)
    other_ca: Path  # a CA that signed nothing here (an untrusted certificate, seen from a client)
    cert: Path  # the servers' certificate, for 127.0.0.1 and localhost (PEM)
    key: Path  # its private key (PEM, PKCS#8)
    keystore: Path  # both, as the broker's PKCS#12 keystore
    store_password: str


def _ca(folder: Path, name: str):
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"streamdl test {name}")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    path = folder / f"{name}.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert, path


def make_pki(folder: Path) -> Pki:
    """A CA, a server certificate it signs (SAN 127.0.0.1 and localhost), and an unrelated CA."""
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_key, ca_cert, ca = _ca(folder, "ca")
    _, _, other = _ca(folder, "other-ca")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path, store = folder / "server.crt", folder / "server.key", folder / "server.p12"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    password = uuid.uuid4().hex
    store.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"server", key, cert, [ca_cert], serialization.BestAvailableEncryption(password.encode())
        )
    )
    return Pki(ca, other, cert_path, key_path, store, password)


# --- a dedicated SASL_SSL broker -------------------------------------------------------------------
class SecureKafka:
    """A single-node KRaft broker with a SASL_SSL (SCRAM-SHA-512) client listener, a PLAINTEXT
    listener between broker and itself, and the SCRAM users created at format time. It runs the
    local stack's Kafka distribution (:func:`fetch_kafka`) on free ports; the shared broker is untouched."""

    def __init__(self, home: Path, dist: Path, version: str, pki: Pki, users: dict[str, str]) -> None:
        self.home, self.dist, self.version, self.pki, self.users = home, dist, version, pki, users
        first = free_port(count=3)
        self.port, self.controller_port, self.internal_port = first, first + 1, first + 2
        self.log = home / "kafka.log"
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def plaintext_bootstrap(self) -> str:
        """The broker's internal PLAINTEXT listener (to show a client speaking SSL to it fails clearly)."""
        return f"127.0.0.1:{self.internal_port}"

    def start(self, timeout: float = 120.0) -> SecureKafka:
        libs = fetch_kafka(self.dist, self.version, print)
        java, _ = find_java()
        self.home.mkdir(parents=True, exist_ok=True)
        config, log4j = self.home / "server.properties", self.home / "log4j.properties"
        log4j.write_text(
            "log4j.rootLogger=INFO, stdout\nlog4j.appender.stdout=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.stdout.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.stdout.layout.ConversionPattern=[%d] %p %m (%c)%n\n"
        )
        host = "127.0.0.1"
        config.write_text(
            "\n".join(
                [
                    "process.roles=broker,controller",
                    "node.id=1",
                    f"controller.quorum.voters=1@{host}:{self.controller_port}",
                    f"listeners=SASL_SSL://{host}:{self.port},CONTROLLER://{host}:{self.controller_port},INTERNAL://{host}:{self.internal_port}",
                    f"advertised.listeners=SASL_SSL://{host}:{self.port},INTERNAL://{host}:{self.internal_port}",
                    "controller.listener.names=CONTROLLER",
                    "inter.broker.listener.name=INTERNAL",
                    "listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT,INTERNAL:PLAINTEXT",
                    "sasl.enabled.mechanisms=SCRAM-SHA-512",
                    "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config="
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;",
                    "ssl.keystore.type=PKCS12",
                    f"ssl.keystore.location={self.pki.keystore}",
                    f"ssl.keystore.password={self.pki.store_password}",
                    f"ssl.key.password={self.pki.store_password}",
                    "ssl.client.auth=none",
                    f"log.dirs={self.home / 'data'}",
                    "num.partitions=2",
                    "offsets.topic.replication.factor=1",
                    "offsets.topic.num.partitions=4",
                    "transaction.state.log.replication.factor=1",
                    "transaction.state.log.min.isr=1",
                    "group.initial.rebalance.delay.ms=0",
                    "auto.create.topics.enable=true",
                    "message.max.bytes=16777216",
                    "",
                ]
            )
        )
        scram = [
            arg
            for name, password in self.users.items()
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={password}]")
        ]
        formatted = subprocess.run(
            [
                str(java),
                "-cp",
                f"{libs}/*",
                f"-Dlog4j.configuration=file:{log4j}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                kafka_cluster_id(),
                "-c",
                str(config),
                *scram,
            ],
            capture_output=True,
            text=True,
        )
        assert formatted.returncode == 0, formatted.stdout + formatted.stderr
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [
                    str(java),
                    "-Xms256m",
                    "-Xmx256m",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j.configuration=file:{log4j}",
                    "-cp",
                    f"{libs}/*",
                    "kafka.Kafka",
                    str(config),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while "Kafka Server started" not in self.log.read_text(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"the SASL_SSL broker did not start:\n{tail(self.log, 40)}")
            time.sleep(0.3)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            stop_process(self.proc.pid, 60)


# --- HTTPS in front of the shared Elasticsearch ------------------------------------------------------
_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "trailer",
    "content-length",
    "authorization",
    "host",
}


class EsTlsProxy:
    """Terminates TLS (the test CA's certificate), accepts basic auth or an API key, forwards to the
    shared Elasticsearch over http. Counts what it served and refused."""

    def __init__(self, upstream: tuple[str, int], pki: Pki, users: dict[str, str], api_keys: set[str]) -> None:
        self.upstream, self.users, self.api_keys = upstream, users, api_keys
        self.served = self.refused = 0
        self.lock = threading.Lock()
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pki.cert, pki.key)
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                self.request = context.wrap_socket(self.request, server_side=True)  # handshake in this thread
                super().setup()

            def log_message(self, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                if not proxy.authorized(self.headers.get("Authorization")):
                    with proxy.lock:
                        proxy.refused += 1
                    return self._reply(
                        401,
                        [
                            ("Content-Type", "application/json"),
                            ("X-Elastic-Product", "Elasticsearch"),
                            ("WWW-Authenticate", 'Basic realm="security", ApiKey'),
                        ],
                        b'{"error":{"type":"security_exception","reason":"unable to authenticate"},"status":401}',
                    )
                with proxy.lock:
                    proxy.served += 1
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=60)
                try:
                    conn.request(
                        self.command,
                        self.path,
                        body=body,
                        headers={k: v for k, v in self.headers.items() if k.lower() not in _HOP},
                    )
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self._reply(resp.status, [(k, v) for k, v in resp.getheaders() if k.lower() not in _HOP], data)

            def _reply(self, status: int, headers: list[tuple[str, str]], data: bytes) -> None:
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = _any

        class Server(ThreadingHTTPServer):
            daemon_threads = True

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # failed handshakes (the untrusted-certificate cases) are expected

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def authorized(self, header: str | None) -> bool:
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "apikey":
            return value.strip() in self.api_keys
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                return False
            return self.users.get(user) == password
        return False

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- fixtures ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def broker(settings: Settings, pki: Pki, tmp_path_factory) -> Iterator[SecureKafka]:
    dist = settings.state_dir.resolve() / "dist"
    dist.mkdir(parents=True, exist_ok=True)
    kafka = SecureKafka(
        tmp_path_factory.mktemp("secure-kafka"), dist, settings.kafka_version, pki, {KAFKA_USER: KAFKA_PASSWORD}
    ).start()
    yield kafka
    kafka.stop()
    shutil.rmtree(kafka.home, ignore_errors=True)


@pytest.fixture(scope="module")
def proxy(stack: Settings, pki: Pki) -> Iterator[EsTlsProxy]:
    es = EsTlsProxy(stack.es_address, pki, {ES_USER: ES_PASSWORD}, {ES_API_KEY})
    yield es
    es.close()


@pytest.fixture
def clean_env(monkeypatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("STREAMDL_"):
            monkeypatch.delenv(key)


def secure(
    base: Settings, broker: SecureKafka, pki: Pki, proxy: EsTlsProxy | None = None, **overrides: Any
) -> Settings:
    """``base`` pointed at the SASL_SSL broker (and at the HTTPS proxy, when given), on its own names."""
    tag = f"sec{uuid.uuid4().hex[:8]}"
    values: dict[str, Any] = {
        "state_dir": base.state_dir,
        "kafka_bootstrap_servers": broker.bootstrap,
        "kafka_security_protocol": "SASL_SSL",
        "kafka_sasl_mechanism": "SCRAM-SHA-512",
        "kafka_username": KAFKA_USER,
        "kafka_password": KAFKA_PASSWORD,
        "kafka_ssl_ca_file": pki.ca,
        "topic_prefix": f"{tag}.",
        "index_prefix": f"{tag}-",
        "consumer_group": f"{tag}-workers",
        "topic_partitions": 2,
        "es_url": base.es_url,
    }
    if proxy is not None:
        values.update(es_url=proxy.url, es_ca_file=pki.ca, es_username=ES_USER, es_password=ES_PASSWORD)
    values.update(overrides)
    return load_settings({k: v for k, v in values.items() if v is not None}, env_file=None)


def without(settings: Settings, *fields: str, **updates: Any) -> Settings:
    """``settings`` with ``fields`` unset and ``updates`` applied, validated again."""
    values = settings.model_dump()
    for name in fields:
        values.pop(name, None)
    values.update(updates)
    values = {
        k: (v.get_secret_value() if hasattr(v, "get_secret_value") else v) for k, v in values.items() if v is not None
    }
    return load_settings(values, env_file=None)


def error_of(call: Any, *args: Any, **kwargs: Any) -> StreamdlError:
    """The error ``call`` raises, with its traceback dropped: the failed client it holds is freed
    now instead of retrying in the background for the rest of the session."""
    try:
        call(*args, **kwargs)
    except StreamdlError as exc:
        exc.__traceback__ = None
        return exc
    raise AssertionError(f"{getattr(call, '__name__', call)} did not fail")


def wait_for_count(es, index: str, expected: int, worker, timeout: float = 120.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        es.indices.refresh(index=index)
        count = es.count(index=index)["count"]
        if count >= expected or time.monotonic() > deadline:
            return count
        assert worker.alive, worker.tail()
        time.sleep(0.5)


# --- the tests -------------------------------------------------------------------------------------
def test_producers_and_worker_work_over_sasl_ssl_and_https(settings, broker, pki, proxy, tmp_path):
    from itertools import islice

    from streamdl.connectors.setup import init_all
    from streamdl.streams.agents.worker_process import WorkerProcess

    s = secure(
        settings,
        broker,
        pki,
        proxy,
        worker_agents="events",
        similarity_alerts=False,
        hot_swap=False,
        metrics_port=free_port(),
        max_batch_duration_secs=0.2,
    )
    init_all(s)
    log = tmp_path / "worker.log"
    served_before = proxy.served
    worker = WorkerProcess(s, log).start()
    es = es_client(s)
    try:
        # the secrets reach the child through its environment, never its command line (the process title)
        cmdline = Path(f"/proc/{worker.proc.pid}/cmdline").read_bytes()
        assert not any(secret.encode() in cmdline for secret in SECRETS)

        report = publish_events(s, iter_sensors(20), progress=False)  # what 'streamdl produce events' does
        assert report.sent == 20 and not report.skipped
        more = [item.message() for item in islice(iter_sensors(30), 20, 30)]  # the library's produce_all
        assert produce_all(s, s.topic("events"), more) == 10

        assert wait_for_count(es, s.alias("events"), 30, worker) == 30
        assert proxy.served > served_before and proxy.refused == 0
        ids = {hit["_id"] for hit in es.search(index=s.alias("events"), size=100, source=False)["hits"]["hits"]}
        assert len(ids) == 30
    finally:
        code = worker.stop()
        es.options(ignore_status=404).indices.delete(index=f"{s.index_prefix}*")
        es.close()
    assert code == 0, tail(log, 40)
    text = log.read_text(errors="replace")
    assert "events batch" in text
    assert not any(secret in text for secret in SECRETS)


def test_a_wrong_password_fails_fast_and_says_so(settings, broker, pki, tmp_path, clean_env, monkeypatch, capsys):
    from streamdl.settings import settings_env
    from streamdl.streams.agents.worker_process import WorkerProcess
    from streamdl.streams.cli.main import main

    wrong = "not-the-password"
    bad = secure(settings, broker, pki, kafka_password=wrong, worker_agents="events", metrics_port=free_port())

    start = time.monotonic()
    err = error_of(lambda: check_kafka(admin_client(bad), bad))
    assert time.monotonic() - start < 8
    message = str(err)
    assert (
        isinstance(err, SettingsError)
        and "refused the credentials" in message
        and "STREAMDL_KAFKA_PASSWORD" in message
        and KAFKA_USER in message
    )
    assert wrong not in message and KAFKA_PASSWORD not in message

    err = error_of(produce_all, bad, bad.topic("events"), [("k", b"{}", [])], timeout=60)
    assert isinstance(err, SettingsError) and "refused the credentials" in str(
        err
    )  # fast, not after the delivery timeout

    # the CLI, configured through the environment with the password in a file
    secret_file = tmp_path / "kafka-password"
    secret_file.write_text(wrong + "\n")
    for key, value in settings_env(bad).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("STREAMDL_KAFKA_PASSWORD")
    monkeypatch.setenv("STREAMDL_KAFKA_PASSWORD_FILE", str(secret_file))
    assert main(["init", "--env-file", str(tmp_path / "no.env")]) == 2
    out = capsys.readouterr()
    assert "refused the credentials" in out.err and wrong not in out.err + out.out

    # the worker exits non-zero with the reason in its log
    log = tmp_path / "worker.log"
    with pytest.raises(StreamdlError, match="exited with 2"):
        WorkerProcess(bad, log).start(timeout=150)
    text = log.read_text(errors="replace")
    assert "refused the credentials" in text and "STREAMDL_KAFKA_PASSWORD" in text and wrong not in text


def test_an_untrusted_certificate_fails_fast_and_says_so(settings, broker, pki, tmp_path):
    from streamdl.streams.agents.worker_process import WorkerProcess

    for ca in (pki.other_ca, None):  # a CA that did not sign the broker's certificate; the system's CAs
        bad = secure(settings, broker, pki, kafka_ssl_ca_file=ca)
        err = error_of(lambda bad=bad: check_kafka(admin_client(bad), bad))
        assert isinstance(err, SettingsError), err
        assert "TLS certificate is not trusted" in str(err) and "STREAMDL_KAFKA_SSL_CA_FILE" in str(err)
        err = error_of(produce_all, bad, bad.topic("events"), [("k", b"{}", [])], timeout=60)
        assert isinstance(err, SettingsError) and "not trusted" in str(err)

    bad = secure(
        settings, broker, pki, kafka_ssl_ca_file=pki.other_ca, worker_agents="events", metrics_port=free_port()
    )
    log = tmp_path / "worker.log"
    with pytest.raises(StreamdlError, match="exited with 2"):
        WorkerProcess(bad, log).start(timeout=150)
    assert "TLS certificate is not trusted" in log.read_text(errors="replace")


def test_a_wrong_protocol_or_mechanism_is_named(settings, broker, pki):
    plaintext = secure(
        settings,
        broker,
        pki,
        kafka_security_protocol="PLAINTEXT",
        kafka_username=None,
        kafka_password=None,
        kafka_ssl_ca_file=None,
    )
    err = error_of(lambda: check_kafka(admin_client(plaintext), plaintext, timeout=3))
    assert isinstance(err, ServiceUnavailable) and "STREAMDL_KAFKA_SECURITY_PROTOCOL (PLAINTEXT)" in str(err)

    tls_to_plaintext = secure(
        settings,
        broker,
        pki,
        kafka_bootstrap_servers=broker.plaintext_bootstrap,
        kafka_security_protocol="SSL",
        kafka_username=None,
        kafka_password=None,
    )
    err = error_of(lambda: check_kafka(admin_client(tls_to_plaintext), tls_to_plaintext))
    assert isinstance(err, SettingsError) and "does not speak SSL on that port" in str(err)
    assert "STREAMDL_KAFKA_SECURITY_PROTOCOL" in str(err)

    mechanism = secure(settings, broker, pki, kafka_sasl_mechanism="SCRAM-SHA-256")
    err = error_of(lambda: check_kafka(admin_client(mechanism), mechanism))
    assert isinstance(err, SettingsError) and "STREAMDL_KAFKA_SASL_MECHANISM" in str(err)
    assert "Unsupported SASL mechanism" in str(err)


def test_turning_kafka_verification_off_works_and_warns(settings, broker, pki, caplog):
    loose = secure(settings, broker, pki, kafka_ssl_ca_file=None, kafka_ssl_verify=False)
    with caplog.at_level(logging.WARNING, logger="streamdl.connectors.kafka_config"):
        check_kafka(admin_client(loose), loose)
    assert any("verification for Kafka is OFF" in r.getMessage() for r in caplog.records)


def test_elasticsearch_over_https_with_a_ca_and_credentials(stack, pki, proxy, caplog):
    def es(**overrides: Any) -> Settings:
        values = {
            "es_url": proxy.url,
            "es_ca_file": pki.ca,
            "es_username": ES_USER,
            "es_password": ES_PASSWORD,
            **overrides,
        }
        return load_settings({k: v for k, v in values.items() if v is not None}, env_file=None)

    def check(s: Settings) -> str:
        client = es_client(s)
        try:
            return check_elasticsearch(client, s, timeout=5)
        finally:
            client.close()

    assert check(es()) in ("green", "yellow")  # basic auth
    assert check(es(es_username=None, es_password=None, es_api_key=ES_API_KEY)) in ("green", "yellow")

    with pytest.raises(SettingsError) as err:
        check(es(es_password="wrong-es-password"))
    assert "refused the credentials (401)" in str(err.value) and "STREAMDL_ES_PASSWORD" in str(err.value)
    assert "wrong-es-password" not in str(err.value)
    with pytest.raises(SettingsError, match=r"401.*STREAMDL_ES_API_KEY"):
        check(es(es_username=None, es_password=None, es_api_key="d3Jvbmc6a2V5"))
    with pytest.raises(SettingsError, match="no credentials"):
        check(es(es_username=None, es_password=None))

    for ca in (pki.other_ca, None):  # untrusted: another CA, the system's CAs
        with pytest.raises(SettingsError) as err:
            check(es(es_ca_file=ca))
        assert "TLS failed" in str(err.value) and "STREAMDL_ES_CA_FILE" in str(err.value)
        assert "certificate verify failed" in str(err.value).lower()

    with caplog.at_level(logging.WARNING, logger="streamdl.connectors.es_client"):
        assert check(es(es_ca_file=None, es_verify_certs=False)) in ("green", "yellow")
    assert any("verification for Elasticsearch is OFF" in r.getMessage() for r in caplog.records)

    with pytest.raises(StreamdlError):  # plain http to the https port
        check(es(es_url=proxy.url.replace("https://", "http://"), es_ca_file=None))
