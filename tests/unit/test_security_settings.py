"""The security settings: validation of combinations, secrets from files, masking everywhere, the one
Kafka client configuration (:func:`streamdl.connectors.kafka_config.kafka_config`), Faust's credentials, the
Elasticsearch client's TLS options, and what librdkafka's security errors are explained as."""

from __future__ import annotations

import logging
import os
import ssl
from pathlib import Path

import pytest

from streamdl.connectors.kafka_config import (
    classify,
    explain_kafka_errors,
    faust_credentials,
    kafka_config,
    kafka_ssl_context,
)
from streamdl.errors import SettingsError
from streamdl.settings import SECRET_FIELDS, load_settings, settings_env

PASSWORD = "s3cr3t-kafka-pw"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for key in list(os.environ):
        if key.startswith("STREAMDL_"):
            monkeypatch.delenv(key)


@pytest.fixture
def ca(tmp_path: Path) -> Path:
    """A real (self-signed) CA certificate: the settings check that the file loads."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "ca.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_a_ca_file_that_is_not_pem_is_refused(tmp_path):
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(SettingsError, match="STREAMDL_KAFKA_SSL_CA_FILE.*not a readable PEM file"):
        load_settings({"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": bad}, env_file=None)


def sasl(**extra):
    return load_settings(
        {"kafka_security_protocol": "SASL_SSL", "kafka_username": "alice", "kafka_password": PASSWORD, **extra},
        env_file=None,
    )


# --- validation ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides,needles",
    [
        ({"kafka_security_protocol": "SASL_SSL"}, ["STREAMDL_KAFKA_USERNAME", "STREAMDL_KAFKA_PASSWORD", "SASL_SSL"]),
        ({"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_password": PASSWORD}, ["STREAMDL_KAFKA_USERNAME"]),
        (
            {"kafka_username": "alice", "kafka_password": PASSWORD},
            ["only sent with SASL", "STREAMDL_KAFKA_SECURITY_PROTOCOL"],
        ),
        (
            {"kafka_ssl_ca_file": "/no/such/ca.pem", "kafka_security_protocol": "SSL"},
            ["STREAMDL_KAFKA_SSL_CA_FILE", "no such file"],
        ),
        ({"kafka_security_protocol": "TLS"}, ["STREAMDL_KAFKA_SECURITY_PROTOCOL"]),
        ({"kafka_sasl_mechanism": "GSSAPI"}, ["STREAMDL_KAFKA_SASL_MECHANISM"]),
        ({"es_api_key": "a2V5", "es_username": "u", "es_password": PASSWORD}, ["not both", "STREAMDL_ES_API_KEY"]),
        ({"es_username": "elastic"}, ["STREAMDL_ES_PASSWORD"]),
        ({"es_password": PASSWORD}, ["STREAMDL_ES_USERNAME"]),
    ],
)
def test_combinations_that_cannot_work_are_refused_by_name_without_echoing_secrets(overrides, needles):
    with pytest.raises(SettingsError) as err:
        load_settings(overrides, env_file=None)
    message = str(err.value)
    assert all(n in message for n in needles), message
    assert PASSWORD not in message


def test_ca_files_need_tls(ca):
    with pytest.raises(SettingsError, match="STREAMDL_KAFKA_SSL_CA_FILE is only used with TLS"):
        load_settings({"kafka_ssl_ca_file": ca}, env_file=None)
    with pytest.raises(SettingsError, match="STREAMDL_ES_CA_FILE is only used with an https://"):
        load_settings({"es_ca_file": ca}, env_file=None)


def test_protocol_and_mechanism_are_case_insensitive(monkeypatch):
    monkeypatch.setenv("STREAMDL_KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("STREAMDL_KAFKA_SASL_MECHANISM", "scram-sha-256")
    monkeypatch.setenv("STREAMDL_KAFKA_USERNAME", "alice")
    monkeypatch.setenv("STREAMDL_KAFKA_PASSWORD", PASSWORD)
    s = load_settings(env_file=None)
    assert (s.kafka_security_protocol, s.kafka_sasl_mechanism) == ("SASL_SSL", "SCRAM-SHA-256")


def test_defaults_are_plaintext_with_verification_on():
    s = load_settings(env_file=None)
    assert s.kafka_security_protocol == "PLAINTEXT" and s.kafka_ssl_verify and s.es_verify_certs
    assert s.kafka_sasl_mechanism == "SCRAM-SHA-512"


# --- secrets from files ----------------------------------------------------------------------------
@pytest.mark.parametrize("field", SECRET_FIELDS)
def test_each_secret_can_come_from_a_file(field, tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text(f"  {PASSWORD}\n")
    monkeypatch.setenv(f"STREAMDL_{field.upper()}_FILE", str(secret))
    needs = {
        "kafka_password": {"STREAMDL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "STREAMDL_KAFKA_USERNAME": "alice"},
        "es_password": {"STREAMDL_ES_USERNAME": "elastic"},
    }.get(field, {})
    for key, value in needs.items():
        monkeypatch.setenv(key, value)
    s = load_settings(env_file=None)
    assert getattr(s, field).get_secret_value() == PASSWORD
    assert s.masked()[field] == "**********"


def test_a_secret_file_named_in_the_env_file(tmp_path):
    secret = tmp_path / "key"
    secret.write_text(PASSWORD)
    env_file = tmp_path / ".env"
    env_file.write_text(f"STREAMDL_ES_API_KEY_FILE={secret}\n")
    assert load_settings(env_file=env_file).es_api_key.get_secret_value() == PASSWORD


def test_secret_file_precedence_and_conflicts(tmp_path, monkeypatch):
    secret = tmp_path / "secret"
    secret.write_text(PASSWORD)
    monkeypatch.setenv("STREAMDL_WEBHOOK_SECRET_FILE", str(secret))
    monkeypatch.setenv("STREAMDL_WEBHOOK_SECRET", "something-else")
    with pytest.raises(SettingsError) as err:
        load_settings(env_file=None)
    assert "STREAMDL_WEBHOOK_SECRET and STREAMDL_WEBHOOK_SECRET_FILE" in str(err.value)
    assert PASSWORD not in str(err.value) and "something-else" not in str(err.value)

    monkeypatch.setenv("STREAMDL_WEBHOOK_SECRET", PASSWORD)  # the same value twice (a child inheriting both) is fine
    assert load_settings(env_file=None).webhook_secret.get_secret_value() == PASSWORD
    # an explicit override beats the file
    assert load_settings({"webhook_secret": "given"}, env_file=None).webhook_secret.get_secret_value() == "given"

    # the environment's value beats a file named in the .env file
    monkeypatch.delenv("STREAMDL_WEBHOOK_SECRET_FILE")
    env_file = tmp_path / ".env"
    env_file.write_text(f"STREAMDL_WEBHOOK_SECRET_FILE={secret}\n")
    monkeypatch.setenv("STREAMDL_WEBHOOK_SECRET", "from-env")
    assert load_settings(env_file=env_file).webhook_secret.get_secret_value() == "from-env"


def test_unreadable_or_empty_secret_files_name_the_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("STREAMDL_ES_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(SettingsError, match="STREAMDL_ES_API_KEY_FILE.*cannot read"):
        load_settings(env_file=None)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    monkeypatch.setenv("STREAMDL_ES_API_KEY_FILE", str(empty))
    with pytest.raises(SettingsError, match="STREAMDL_ES_API_KEY_FILE.*is empty"):
        load_settings(env_file=None)


# --- masking ---------------------------------------------------------------------------------------
def test_secrets_are_masked_in_settings_help_and_repr(monkeypatch, capsys, ca):
    from streamdl.streams.cli.main import main

    secrets = {
        "STREAMDL_KAFKA_PASSWORD": PASSWORD,
        "STREAMDL_ES_API_KEY": "es-api-key-value",
        "STREAMDL_WEBHOOK_SECRET": "webhook-secret-value",
    }
    for key, value in {
        **secrets,
        "STREAMDL_KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMDL_KAFKA_USERNAME": "alice",
        "STREAMDL_KAFKA_SSL_CA_FILE": str(ca),
        "STREAMDL_ES_URL": "https://es.example.com:9200",
    }.items():
        monkeypatch.setenv(key, value)
    s = load_settings(env_file=None)
    assert not any(v in repr(s) or v in str(s.masked()) for v in secrets.values())
    assert main(["settings"]) == 0
    out = capsys.readouterr().out
    assert "kafka_password" in out and "kafka_ssl_ca_file" in out and str(ca) in out
    assert not any(v in out for v in secrets.values())
    for argv in (["--help"], ["worker", "--help"], ["init", "--help"]):
        with pytest.raises(SystemExit):
            main(argv)
        help_text = capsys.readouterr().out
        assert not any(v in help_text for v in secrets.values())
    # a child process gets them through its environment (never its command line)
    env = settings_env(s)
    assert env["STREAMDL_KAFKA_PASSWORD"] == PASSWORD and env["STREAMDL_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert load_settings({}, env_file=None) == s  # the same settings round-trip through the environment


def test_a_bad_value_of_a_secret_is_not_echoed(monkeypatch):
    monkeypatch.setenv("STREAMDL_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("STREAMDL_KAFKA_PASSWORD", PASSWORD)
    with pytest.raises(SettingsError) as err:
        load_settings(env_file=None)
    assert PASSWORD not in str(err.value)


# --- the one Kafka client configuration --------------------------------------------------------------
def test_kafka_config_plaintext_by_default():
    config = kafka_config(load_settings(env_file=None), {"group.id": "g"})
    assert config["bootstrap.servers"] == "127.0.0.1:9092" and config["security.protocol"] == "PLAINTEXT"
    assert config["group.id"] == "g" and callable(config["error_cb"])
    assert not any(k.startswith(("sasl.", "ssl.")) for k in config)


def test_kafka_config_sasl_ssl(ca):
    config = kafka_config(sasl(kafka_ssl_ca_file=ca))
    assert {k: v for k, v in config.items() if k not in ("error_cb", "logger")} == {
        "bootstrap.servers": "127.0.0.1:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": PASSWORD,
        "ssl.ca.location": str(ca),
        "enable.ssl.certificate.verification": True,
    }
    assert "sasl.password" not in str(config["error_cb"].__dict__)


def test_kafka_config_builds_real_clients(ca):
    from confluent_kafka import Consumer, Producer
    from confluent_kafka.admin import AdminClient

    s = sasl(kafka_ssl_ca_file=ca)
    Producer(kafka_config(s))
    AdminClient(kafka_config(s))
    Consumer(kafka_config(s, {"group.id": "g"})).close()


def test_turning_kafka_verification_off_warns(caplog):
    s = load_settings({"kafka_security_protocol": "SSL", "kafka_ssl_verify": False}, env_file=None)
    with caplog.at_level(logging.WARNING, logger="streamdl.connectors.kafka_config"):
        config = kafka_config(s)
        context = kafka_ssl_context(s)
    assert config["enable.ssl.certificate.verification"] is False
    assert config["ssl.endpoint.identification.algorithm"] == "none"
    assert context.verify_mode == ssl.CERT_NONE and not context.check_hostname
    assert sum("verification for Kafka is OFF" in r.getMessage() for r in caplog.records) == 2


def test_faust_credentials_follow_the_settings(ca):
    import faust

    assert faust_credentials(load_settings(env_file=None)) is None
    creds = faust_credentials(sasl())
    assert isinstance(creds, faust.SASLCredentials)
    assert (creds.protocol.value, creds.mechanism.value, creds.username, creds.password) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        "alice",
        PASSWORD,
    )
    assert creds.ssl_context.verify_mode == ssl.CERT_REQUIRED and creds.ssl_context.check_hostname
    assert PASSWORD not in repr(creds)
    plain = faust_credentials(
        load_settings(
            {"kafka_security_protocol": "SASL_PLAINTEXT", "kafka_username": "a", "kafka_password": PASSWORD},
            env_file=None,
        )
    )
    assert plain.protocol.value == "SASL_PLAINTEXT" and plain.ssl_context is None
    tls = faust_credentials(load_settings({"kafka_security_protocol": "SSL"}, env_file=None))
    assert isinstance(tls, faust.SSLCredentials) and tls.protocol.value == "SSL"


def test_the_faust_app_gets_the_credentials():
    from streamdl.streams.agents.app import create_app

    app = create_app(sasl())
    assert app.conf.broker_credentials.protocol.value == "SASL_SSL"


# --- Elasticsearch client ----------------------------------------------------------------------------
def test_es_client_tls_options(ca, caplog):
    from streamdl.connectors.es_client import es_client

    s = load_settings({"es_url": "https://es.example.com:9200", "es_ca_file": ca, "es_api_key": "a2V5"}, env_file=None)
    node = es_client(s).transport.node_pool.all()[0]
    assert node.config.ca_certs == str(ca) and node.config.verify_certs
    loose = load_settings({"es_url": "https://es.example.com:9200", "es_verify_certs": False}, env_file=None)
    with caplog.at_level(logging.WARNING, logger="streamdl.connectors.es_client"):
        node = es_client(loose).transport.node_pool.all()[0]
    assert not node.config.verify_certs
    assert any("verification for Elasticsearch is OFF" in r.getMessage() for r in caplog.records)


# --- librdkafka's errors, explained --------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,text,kind,needle",
    [
        (
            "_AUTHENTICATION",
            "sasl_ssl://h:1/bootstrap: SASL authentication error: Authentication failed during authentication "
            "due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            "auth",
            "STREAMDL_KAFKA_PASSWORD",
        ),
        (
            "_SSL",
            "sasl_ssl://h:1/bootstrap: SSL handshake failed: error:0A000086:SSL routines::certificate verify failed: "
            "broker certificate could not be verified",
            "tls",
            "STREAMDL_KAFKA_SSL_CA_FILE",
        ),
        (
            "_TRANSPORT",
            "ssl://h:1/bootstrap: SSL handshake failed: Disconnected: SSL connection closed by peer: connecting to a "
            "PLAINTEXT broker listener?",
            "protocol",
            "STREAMDL_KAFKA_SECURITY_PROTOCOL",
        ),
        ("_ALL_BROKERS_DOWN", "1/1 brokers are down", None, None),
    ],
)
def test_security_errors_are_explained(name, text, kind, needle):
    s = sasl()
    assert classify(name, text) == kind
    message = explain_kafka_errors(s, [(name, text)], only_security=True)
    assert (message is None) == (kind is None)
    if needle:
        assert needle in message and PASSWORD not in message
