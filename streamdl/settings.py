"""The one settings object of the product.

Precedence, lowest to highest: defaults < ``.env`` file < ``STREAMDL_*`` environment
variables < explicit overrides (CLI flags). Every field's environment variable is
``STREAMDL_`` followed by the field name in upper case, e.g. ``STREAMDL_ES_URL``.
The environment is read only where :func:`load_settings` is called (entry points).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from streamdl.errors import SettingsError

ENV_PREFIX = "STREAMDL_"
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")
TOPIC_NAMES = (
    "images", "events", "predictions", "predictions-shadow", "alerts", "dlq", "model-updates", "dlq-replayed",
)  # fmt: skip
ALIAS_NAMES = ("images", "events", "alerts")
AGENT_NAMES = ("images", "events")


class Settings(BaseSettings):
    """Settings for every component; frozen once loaded."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_file=".env", env_file_encoding="utf-8", extra="ignore", frozen=True
    )

    # --- Kafka ---------------------------------------------------------------
    kafka_bootstrap_servers: str = Field(
        "127.0.0.1:9092",
        description="Kafka bootstrap servers, host:port[,host:port]. Env STREAMDL_KAFKA_BOOTSTRAP_SERVERS.",
    )
    topic_prefix: str = Field("streamdl.", description="Prefix of every topic name. Env STREAMDL_TOPIC_PREFIX.")
    topic_partitions: int = Field(
        4, ge=1, le=1024, description="Partitions of topics the product creates. Env STREAMDL_TOPIC_PARTITIONS."
    )
    consumer_group: str = Field(
        "streamdl-workers", description="Consumer group (Faust app id) of the workers. Env STREAMDL_CONSUMER_GROUP."
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT",
        description="How clients talk to Kafka: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. "
        "Env STREAMDL_KAFKA_SECURITY_PROTOCOL.",
    )
    kafka_sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] = Field(
        "SCRAM-SHA-512", description="SASL mechanism (with SASL_*). Env STREAMDL_KAFKA_SASL_MECHANISM."
    )
    kafka_username: str | None = Field(None, description="SASL user name (with SASL_*). Env STREAMDL_KAFKA_USERNAME.")
    kafka_password: SecretStr | None = Field(
        None,
        description="SASL password (with SASL_*). "
        "Env STREAMDL_KAFKA_PASSWORD, or STREAMDL_KAFKA_PASSWORD_FILE naming a file that holds it.",
    )
    kafka_ssl_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed the brokers' certificates (with SSL/SASL_SSL); "
        "unset = the system's CAs. Env STREAMDL_KAFKA_SSL_CA_FILE.",
    )
    kafka_ssl_verify: bool = Field(
        True,
        description="Verify the brokers' TLS certificates and host names; false is for tests only and logs a warning. "
        "Env STREAMDL_KAFKA_SSL_VERIFY.",
    )

    # --- Elasticsearch -------------------------------------------------------
    es_url: str = Field("http://127.0.0.1:9200", description="Elasticsearch URL. Env STREAMDL_ES_URL.")
    es_username: str | None = Field(None, description="Elasticsearch basic-auth user. Env STREAMDL_ES_USERNAME.")
    es_password: SecretStr | None = Field(
        None,
        description="Elasticsearch basic-auth password. "
        "Env STREAMDL_ES_PASSWORD, or STREAMDL_ES_PASSWORD_FILE naming a file that holds it.",
    )
    es_api_key: SecretStr | None = Field(
        None,
        description='Elasticsearch API key (the base64 "id:key" form). '
        "Env STREAMDL_ES_API_KEY, or STREAMDL_ES_API_KEY_FILE naming a file that holds it.",
    )
    es_verify_certs: bool = Field(
        True,
        description="Verify Elasticsearch TLS certificates; false is for tests only and logs a warning. "
        "Env STREAMDL_ES_VERIFY_CERTS.",
    )
    es_ca_file: Path | None = Field(
        None,
        description="PEM file of the CA(s) that signed Elasticsearch's certificate (https:// URLs); "
        "unset = the system's CAs. Env STREAMDL_ES_CA_FILE.",
    )
    index_prefix: str = Field(
        "streamdl-", description="Prefix of every Elasticsearch alias and index. Env STREAMDL_INDEX_PREFIX."
    )

    # --- Micro-batching and models -------------------------------------------
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="Most messages in one micro-batch. Env STREAMDL_MAX_BATCH_SIZE."
    )
    max_batch_duration_secs: float | None = Field(
        None,
        gt=0,
        le=60,
        description="Longest wait to fill a micro-batch (linger), seconds, for every stream; unset: each stream's "
        "own (events_batch_linger_secs, images_batch_linger_secs). Env STREAMDL_MAX_BATCH_DURATION_SECS.",
    )
    events_batch_linger_secs: float = Field(
        0.05,
        gt=0,
        le=60,
        description="The events agent's linger when max_batch_duration_secs is unset: short, so that "
        "produce-to-alert stays within 250 ms at half the maximum rate (docs/benchmarks.md). "
        "Env STREAMDL_EVENTS_BATCH_LINGER_SECS.",
    )
    images_batch_linger_secs: float = Field(
        0.5,
        gt=0,
        le=60,
        description="The images agent's linger when max_batch_duration_secs is unset: longer, so that batches "
        "fill for the model. Env STREAMDL_IMAGES_BATCH_LINGER_SECS.",
    )
    agent_batches_ahead: int = Field(
        1,
        ge=1,
        le=16,
        description="Micro-batches an agent takes from Kafka ahead of the one computing (while one indexes and "
        "one publishes): the bound of what waits in the worker beside those three. Env STREAMDL_AGENT_BATCHES_AHEAD.",
    )
    events_index_batches: int = Field(
        4,
        ge=1,
        le=16,
        description="Group commit for events: when the index step falls behind, up to this many computed events "
        "micro-batches waiting for it are indexed in one Elasticsearch bulk and published with one wait for Kafka "
        "(their offsets still acked in order); also how many may be computed ahead of it. 1: each batch on its "
        "own. Images always index one batch at a time (a group multiplies the images held in flight), and "
        "exactly_once keeps 1 (a transaction holds one batch). Env STREAMDL_EVENTS_INDEX_BATCHES.",
    )
    max_inflight_bytes: int | None = Field(
        None,
        ge=1024 * 1024,
        description="Most bytes of input messages a worker holds at once (fetched, buffered, in its batches): "
        "sets the fetch size per partition, the stream buffer and the batch size from the largest message "
        "accepted (streams/agents/memory.py); unset: counts only (16 MiB fetch per partition, "
        "max(4 x batch, 256) buffered). Env STREAMDL_MAX_INFLIGHT_BYTES.",
    )
    processing_guarantee: Literal["at_least_once", "exactly_once"] = Field(
        "at_least_once",
        description="at_least_once: predictions, alerts and dead letters go out before the offsets are committed "
        "(a crash re-delivers; consumers dedupe by id + model version). exactly_once: they go into the Kafka "
        "transaction that commits their input's offset, so a read_committed consumer gets no duplicate after a "
        "crash (a rebalance can still duplicate; ~31 ms per batch): docs/operations.md, the exactly-once study. "
        "Env STREAMDL_PROCESSING_GUARANTEE.",
    )
    drain_secs: float = Field(
        10.0,
        gt=0,
        le=600,
        description="At a rebalance or shutdown, the longest wait for the messages in hand to be written and "
        "committed; the rest is redelivered. Env STREAMDL_DRAIN_SECS.",
    )
    shutdown_grace_secs: float = Field(
        5.0,
        gt=0,
        le=600,
        description="After SIGTERM, how long past drain_secs the worker may take to close its clients before it "
        "exits anyway (e.g. Kafka gone for good), logging what was not committed. Env STREAMDL_SHUTDOWN_GRACE_SECS.",
    )
    model_name: str = Field(
        "digits-cnn",
        description="Model the workers serve (a registered name, a Keras application, or a file). "
        "Env STREAMDL_MODEL_NAME.",
    )
    model_weights: str | None = Field(
        "imagenet",
        description="Weights of a named Keras application: 'imagenet' (from the Keras cache), a file path, "
        "or 'none' (random). Env STREAMDL_MODEL_WEIGHTS.",
    )
    model_head: str | None = Field(
        None,
        description="A .keras/SavedModel classifier head put after the model's embedding (transfer learning). "
        "Env STREAMDL_MODEL_HEAD.",
    )
    model_mode: Literal["classify", "featurize"] = Field(
        "classify",
        description="classify: embedding and probabilities; featurize: embedding only. Env STREAMDL_MODEL_MODE.",
    )
    mixed_precision: bool = Field(
        False, description="Run the model in mixed float16 (GPUs). Env STREAMDL_MIXED_PRECISION."
    )
    top_k: int = Field(5, ge=1, le=100, description="How many labels each prediction lists. Env STREAMDL_TOP_K.")
    api_max_rows: int = Field(
        1_000_000,
        ge=1,
        description="Most messages the Python API's read_topic loads into one table. Env STREAMDL_API_MAX_ROWS.",
    )
    max_message_bytes: int = Field(
        10 * 1024 * 1024, ge=1, description="Largest image accepted, in bytes. Env STREAMDL_MAX_MESSAGE_BYTES."
    )
    max_pixels: int = Field(
        40_000_000,
        ge=1,
        description="Largest image accepted, in pixels (decompression bombs are refused before decoding). "
        "Env STREAMDL_MAX_PIXELS.",
    )
    thumbnail_side: int = Field(
        96,
        ge=0,
        le=512,
        description="Longer side, in pixels, of the colour JPEG thumbnail stored with each image document (made "
        "from the same decode; 0: a thumbnail of the model's input instead). Env STREAMDL_THUMBNAIL_SIDE.",
    )

    # --- Similarity: near-duplicates and novelty in the stream ------------------
    similarity_alerts: bool = Field(
        True,
        description="Look up each new image's neighbours and raise near_duplicate / novel alerts. "
        "Env STREAMDL_SIMILARITY_ALERTS.",
    )
    neighbour_k: int = Field(
        5, ge=1, le=100, description="Neighbours looked up per new image. Env STREAMDL_NEIGHBOUR_K."
    )
    near_duplicate_threshold: float = Field(
        0.9995,
        ge=-1,
        le=1,
        description="Cosine similarity at or above which an image is a near-duplicate of its nearest neighbour "
        "(distinct digits reach 0.9993 with the default model). Env STREAMDL_NEAR_DUPLICATE_THRESHOLD.",
    )
    novelty_min_images: int = Field(
        1000,
        ge=0,
        description="Images the index must hold before novelty is judged (an almost empty index makes everything "
        "look novel). Env STREAMDL_NOVELTY_MIN_IMAGES.",
    )
    novelty_threshold: float = Field(
        0.85,
        ge=-1,
        le=1,
        description="Mean cosine similarity of the neighbours below which an image is novel. "
        "Env STREAMDL_NOVELTY_THRESHOLD.",
    )

    # --- Events ---------------------------------------------------------------
    worker_agents: str = Field(
        "images,events",
        description="Agents a worker runs: images, events, or both (comma-separated). Env STREAMDL_WORKER_AGENTS.",
    )
    extra_sinks: str = Field(
        "",
        description="More sinks for the pipelines' outputs, after Elasticsearch and Kafka: comma-separated "
        "'package.module:Class' names of streamdl.streams.pipelines.sinks.Sink subclasses, each built as "
        "Class(settings). Env STREAMDL_EXTRA_SINKS.",
    )
    event_model: str = Field(
        "sensors-ae",
        description="Event model the workers score with: a trained model's name (latest version) or name:version. "
        "'sensors-ae' trains itself on the sensor sample on first use. Env STREAMDL_EVENT_MODEL.",
    )
    max_event_bytes: int = Field(
        1_048_576, ge=64, description="Largest event accepted, in bytes. Env STREAMDL_MAX_EVENT_BYTES."
    )
    max_event_future_secs: float = Field(
        300.0,
        ge=0,
        description="Events timestamped further than this in the future are refused (clock or unit errors). "
        "Env STREAMDL_MAX_EVENT_FUTURE_SECS.",
    )

    # --- Alerts ----------------------------------------------------------------
    alert_rules_file: Path | None = Field(
        None,
        description="YAML file of alert rules; unset = the rules shipped with the product "
        "(streamdl/default_alert_rules.yaml). Env STREAMDL_ALERT_RULES_FILE.",
    )
    alert_throttle_secs: float = Field(
        300.0,
        gt=0,
        description="Default throttle window: the same rule on the same subject raises one alert per window "
        "and counts the rest. Env STREAMDL_ALERT_THROTTLE_SECS.",
    )
    webhook_url: str | None = Field(
        None, description="Where `streamdl webhook` POSTs each alert. Env STREAMDL_WEBHOOK_URL."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description="HMAC-SHA256 key signing webhook bodies (X-Streamdl-Signature). "
        "Env STREAMDL_WEBHOOK_SECRET, or STREAMDL_WEBHOOK_SECRET_FILE naming a file that holds it.",
    )
    web_token: SecretStr | None = Field(
        None,
        description="Token `streamdl serve` requires (HTTP Bearer, or Basic with it as the password) when it "
        "listens on an address other than loopback. Env STREAMDL_WEB_TOKEN, or STREAMDL_WEB_TOKEN_FILE naming "
        "a file that holds it.",
    )
    webhook_attempts: int = Field(
        4,
        ge=1,
        le=20,
        description="Tries per alert before it goes to the dead-letter topic. Env STREAMDL_WEBHOOK_ATTEMPTS.",
    )
    webhook_backoff_secs: float = Field(
        0.5, ge=0, description="First retry delay; doubles each try. Env STREAMDL_WEBHOOK_BACKOFF_SECS."
    )
    webhook_timeout_secs: float = Field(
        5.0, gt=0, description="Timeout of one webhook request. Env STREAMDL_WEBHOOK_TIMEOUT_SECS."
    )

    # --- Archive ----------------------------------------------------------------
    archive_url: str | None = Field(
        None,
        description="Where the archiver writes Parquet files: a folder or any fsspec URL "
        "(s3://, gs://; needs s3fs/gcsfs). Unset = <state_dir>/archive. Env STREAMDL_ARCHIVE_URL.",
    )
    archive_topics: str = Field(
        "images,events",
        description="Topics the archiver keeps (names without the prefix). Env STREAMDL_ARCHIVE_TOPICS.",
    )
    archive_max_file_messages: int = Field(
        20_000,
        ge=1,
        description="The archiver closes a file after this many messages. Env STREAMDL_ARCHIVE_MAX_FILE_MESSAGES.",
    )
    archive_max_file_secs: float = Field(
        60.0, gt=0, description="... or after this many seconds open. Env STREAMDL_ARCHIVE_MAX_FILE_SECS."
    )

    # --- Retraining and the model registry -----------------------------------------
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow tracking and registry URI (a team's server: http://...). "
        "Unset = a SQLite store under <state_dir>/mlflow. Env STREAMDL_MLFLOW_TRACKING_URI.",
    )
    retrain_min_labels: int = Field(
        50,
        ge=3,
        description="A retraining run stops early with fewer labelled archived images. "
        "Env STREAMDL_RETRAIN_MIN_LABELS.",
    )
    retrain_tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Promotion gate: the new version's test accuracy must be at least the current one's minus this. "
        "Env STREAMDL_RETRAIN_TOLERANCE.",
    )
    hot_swap: bool = Field(
        True,
        description="Workers follow the model-updates topic and swap in promoted versions between micro-batches. "
        "Env STREAMDL_HOT_SWAP.",
    )

    # --- Model quality: live accuracy from late labels, drift, automatic rollback ----------
    quality: bool = Field(
        True,
        description="Workers join label events to the predictions they judge, compute live quality and drift per "
        "model version, index it and export it as metrics (docs/model-quality.md). Env STREAMDL_QUALITY.",
    )
    quality_windows: str = Field(
        "5m,1h",
        pattern=r"^\s*\d+(\.\d+)?[smhd]?\s*(,\s*\d+(\.\d+)?[smhd]?\s*)*$",
        description="Sliding windows live quality is reported over (comma-separated durations). "
        "Env STREAMDL_QUALITY_WINDOWS.",
    )
    quality_interval_secs: float = Field(
        15.0,
        gt=0,
        le=3600,
        description="How often a worker recomputes the quality windows, retries waiting labels, checks drift and "
        "the rollback rule. Env STREAMDL_QUALITY_INTERVAL_SECS.",
    )
    quality_pending_ttl_secs: float = Field(
        600.0,
        gt=0,
        description="How long a label whose prediction is not indexed (yet) waits before it counts as an orphan. "
        "Env STREAMDL_QUALITY_PENDING_TTL_SECS.",
    )
    quality_max_pending: int = Field(
        10_000,
        ge=0,
        description="Most labels waiting for their prediction; beyond it a new early label is an orphan at once. "
        "Env STREAMDL_QUALITY_MAX_PENDING.",
    )
    quality_max_labels_per_image: int = Field(
        20,
        ge=1,
        le=1000,
        description="Further label events kept per image (duplicates and contradictions, for idempotent counting); "
        "beyond it they are counted without their ids. Env STREAMDL_QUALITY_MAX_LABELS_PER_IMAGE.",
    )
    quality_calibration_bins: int = Field(
        10,
        ge=2,
        le=100,
        description="Confidence bins of the expected calibration error. Env STREAMDL_QUALITY_CALIBRATION_BINS.",
    )
    rollback: bool = Field(
        True,
        description="Roll the champion back to the previous one when its live accuracy is significantly lower by "
        "more than rollback_margin. Env STREAMDL_ROLLBACK.",
    )
    rollback_margin: float = Field(
        0.05,
        ge=0,
        le=1,
        description="Accuracy the champion may lose against the previous champion before it is rolled back. "
        "Env STREAMDL_ROLLBACK_MARGIN.",
    )
    rollback_min_labels: int = Field(
        100,
        ge=10,
        description="Labelled predictions each of the two versions needs before the rollback rule judges. "
        "Env STREAMDL_ROLLBACK_MIN_LABELS.",
    )
    rollback_alpha: float = Field(
        0.01,
        gt=0,
        lt=0.5,
        description="Overall false-rollback probability of the one-sided two-proportion z-test, spent over its "
        "looks (see docs/model-quality.md). Env STREAMDL_ROLLBACK_ALPHA.",
    )
    drift_window_secs: float = Field(
        300.0,
        gt=0,
        description="Tumbling window of the drift signals (predicted classes, confidence, embeddings). "
        "Env STREAMDL_DRIFT_WINDOW_SECS.",
    )
    drift_reference_size: int = Field(
        500,
        ge=20,
        le=100_000,
        description="Predictions of a version that make its drift reference when none was saved with it in the "
        "registry (its first ones served; events: its first scored events). "
        "Env STREAMDL_DRIFT_REFERENCE_SIZE.",
    )
    drift_min_predictions: int = Field(
        100,
        ge=10,
        description="Predictions a window needs before its drift is judged. Env STREAMDL_DRIFT_MIN_PREDICTIONS.",
    )
    drift_reservoir_size: int = Field(
        256,
        ge=16,
        le=4096,
        description="Embeddings kept per window and in the reference for the MMD embedding drift (reservoir "
        "sample). Env STREAMDL_DRIFT_RESERVOIR_SIZE.",
    )
    drift_max_versions: int = Field(
        8,
        ge=1,
        le=1000,
        description="Model versions whose drift a worker tracks at once (per tracker); a new version beyond it "
        "makes the worker forget the one seen least recently (its next prediction starts it again). "
        "Env STREAMDL_DRIFT_MAX_VERSIONS.",
    )
    drift_max_features: int = Field(
        32,
        ge=1,
        le=256,
        description="Event features whose drift is tracked per model version (the ones most present in its "
        "reference; the others are not tracked). Env STREAMDL_DRIFT_MAX_FEATURES.",
    )
    drift_top_categories: int = Field(
        10,
        ge=1,
        le=100,
        description="Categories of a categorical event feature binned on their own in its drift (its most frequent "
        "in the reference; the rest share one 'other' bin). Env STREAMDL_DRIFT_TOP_CATEGORIES.",
    )

    # --- Local state and operations ------------------------------------------
    state_dir: Path = Field(
        Path(".streamdl"),
        description="Folder for the local stack's data, logs, pid files and model cache. Env STREAMDL_STATE_DIR.",
    )
    metrics_port: int = Field(
        9464,
        ge=0,
        le=65535,
        description="Port of the worker's Prometheus endpoint (0 = off). Env STREAMDL_METRICS_PORT.",
    )
    archive_metrics_port: int = Field(
        9465,
        ge=0,
        le=65535,
        description="Port of the archiver's Prometheus endpoint (0 = off); not the worker's, so both run on one "
        "host. Env STREAMDL_ARCHIVE_METRICS_PORT.",
    )
    metrics_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="Address the Prometheus endpoints listen on: 127.0.0.1 (this machine only), or 0.0.0.0 "
        "for every interface (containers, a Prometheus on another host). Env STREAMDL_METRICS_HOST.",
    )
    log_level: str = Field("INFO", description="Python log level. Env STREAMDL_LOG_LEVEL.")
    connect_timeout_secs: float = Field(
        10.0,
        gt=0,
        le=600,
        description="How long a command waits for Kafka or Elasticsearch to first answer before it says which one "
        "did not and exits. Env STREAMDL_CONNECT_TIMEOUT_SECS.",
    )

    # --- The local stack -----------------------------------------------------
    kafka_version: str = Field(
        "3.9.1",
        description="Apache Kafka release the local stack runs (from Maven Central). Env STREAMDL_KAFKA_VERSION.",
    )
    es_version: str = Field(
        "8.19.4",
        description="Elasticsearch release the local stack runs (from Maven Central). Env STREAMDL_ES_VERSION.",
    )
    kafka_heap: str = Field("512m", description="Java heap of the local Kafka broker. Env STREAMDL_KAFKA_HEAP.")
    kafka_controller_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the local Kafka's KRaft controller listener; 0 = the broker's port + 1 (9093). "
        "Env STREAMDL_KAFKA_CONTROLLER_PORT.",
    )
    es_transport_port: int = Field(
        0,
        ge=0,
        le=65535,
        description="Port of the local Elasticsearch's transport (node-to-node) listener; 0 = the HTTP port + 100 "
        "(9300). Env STREAMDL_ES_TRANSPORT_PORT.",
    )
    es_heap: str = Field("1g", description="Java heap of the local Elasticsearch node. Env STREAMDL_ES_HEAP.")
    stack_timeout_secs: float = Field(
        120,
        gt=0,
        description="How long `stack up` waits for each service to become healthy. Env STREAMDL_STACK_TIMEOUT_SECS.",
    )
    tools_dir: Path = Field(
        Path("~/.cache/streamdl/tools"),
        description="Where tools built from the Go module proxy (Beam's Prism job server, helm) are cached, one "
        "folder per version. Env STREAMDL_TOOLS_DIR.",
    )
    beam_job_server_timeout_secs: float = Field(
        60,
        gt=0,
        le=3600,
        description="How long a retraining run on a portable Beam runner (Prism, Flink, Spark) waits for its job "
        "server to answer before it fails naming the runner. Env STREAMDL_BEAM_JOB_SERVER_TIMEOUT_SECS.",
    )
    job_server_port: int = Field(
        8099,
        ge=1,
        le=65535,
        description="Job port of the portable Beam job server that `stack up --with prism` starts on 127.0.0.1. "
        "Env STREAMDL_JOB_SERVER_PORT.",
    )

    @field_validator("kafka_bootstrap_servers")
    @classmethod
    def _check_bootstrap(cls, value: str) -> str:
        parts = [p.strip() for p in value.split(",")]
        bad = [p for p in parts if not _HOST_PORT.match(p) or not 0 < int(p.rsplit(":", 1)[1]) < 65536]
        if not parts or bad:
            raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return ",".join(parts)

    @field_validator("es_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        try:
            port_ok = parts.port is None or 0 < parts.port < 65536
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            raise ValueError(f"expected an http(s)://host[:port] URL, got {value!r}")
        return value.rstrip("/")

    @field_validator("kafka_security_protocol", "kafka_sasl_mechanism", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.strip().upper() if isinstance(value, str) else value

    @field_validator("kafka_ssl_ca_file", "es_ca_file")
    @classmethod
    def _check_ca_file(cls, value: Path | None) -> Path | None:
        if value is not None:
            if not value.is_file():
                raise ValueError(f"no such file: {value} (a PEM file of CA certificates)")
            import ssl

            try:
                ssl.create_default_context(cafile=str(value))
            except (ssl.SSLError, OSError, ValueError) as exc:
                raise ValueError(f"{value} is not a readable PEM file of CA certificates ({exc})") from None
        return value

    @model_validator(mode="after")
    def _check_security(self) -> Settings:
        """Combinations of the security settings that cannot work (never echoes a secret)."""
        protocol = self.kafka_security_protocol
        sasl, tls = protocol.startswith("SASL_"), protocol.endswith("SSL")
        if sasl and (not self.kafka_username or not self.kafka_password or not self.kafka_password.get_secret_value()):
            raise ValueError(
                f"STREAMDL_KAFKA_SECURITY_PROTOCOL={protocol} needs STREAMDL_KAFKA_USERNAME and "
                "STREAMDL_KAFKA_PASSWORD (or STREAMDL_KAFKA_PASSWORD_FILE)"
            )
        if not sasl and (self.kafka_username or self.kafka_password):
            raise ValueError(
                f"STREAMDL_KAFKA_USERNAME/STREAMDL_KAFKA_PASSWORD are only sent with SASL; set "
                f"STREAMDL_KAFKA_SECURITY_PROTOCOL to SASL_SSL (or SASL_PLAINTEXT), not {protocol}"
            )
        if self.kafka_ssl_ca_file and not tls:
            raise ValueError(
                "STREAMDL_KAFKA_SSL_CA_FILE is only used with TLS; "
                f"set STREAMDL_KAFKA_SECURITY_PROTOCOL to SSL or SASL_SSL, not {protocol}"
            )
        if self.es_api_key and (self.es_username or self.es_password):
            raise ValueError(
                "give Elasticsearch either an API key (STREAMDL_ES_API_KEY) or a user and password "
                "(STREAMDL_ES_USERNAME, STREAMDL_ES_PASSWORD), not both"
            )
        if bool(self.es_username) != bool(self.es_password):
            raise ValueError(
                "Elasticsearch basic auth needs both STREAMDL_ES_USERNAME and "
                "STREAMDL_ES_PASSWORD (or STREAMDL_ES_PASSWORD_FILE)"
            )
        if self.es_ca_file and not self.es_url.startswith("https://"):
            raise ValueError(f"STREAMDL_ES_CA_FILE is only used with an https:// STREAMDL_ES_URL, not {self.es_url}")
        return self

    def linger(self, stream: str) -> float:
        """The longest wait to fill a micro-batch of ``stream`` (``images`` or ``events``), seconds."""
        if self.max_batch_duration_secs is not None:
            return self.max_batch_duration_secs
        return self.events_batch_linger_secs if stream == "events" else self.images_batch_linger_secs

    def index_batches(self, stream: str) -> int:
        """How many computed micro-batches of ``stream`` the index step takes at once (``events_index_batches``)."""
        if stream != "events" or self.processing_guarantee == "exactly_once":
            return 1
        return self.events_index_batches

    @field_validator("worker_agents")
    @classmethod
    def _check_agents(cls, value: str) -> str:
        agents = [a.strip() for a in value.split(",") if a.strip()]
        unknown = [a for a in agents if a not in AGENT_NAMES]
        if not agents or unknown:
            raise ValueError(f"expected a comma-separated list of {', '.join(AGENT_NAMES)}, got {value!r}")
        return ",".join(dict.fromkeys(agents))

    @property
    def agents(self) -> tuple[str, ...]:
        """The agents a worker runs, e.g. ``("images", "events")``."""
        return tuple(self.worker_agents.split(","))

    @field_validator("kafka_heap", "es_heap")
    @classmethod
    def _check_heap(cls, value: str) -> str:
        if not re.fullmatch(r"\d+[mMgG]", value):
            raise ValueError(f"expected a Java heap size such as 512m or 1g, got {value!r}")
        return value.lower()

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        if value.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ValueError(f"expected DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}")
        return value.upper()

    @property
    def weights(self) -> str | None:
        """``model_weights`` as the model layer takes it: ``None`` (random weights) for ``none``."""
        return None if (self.model_weights or "").lower() == "none" else self.model_weights

    # --- Derived names ---------------------------------------------------------
    def topic(self, name: str) -> str:
        """Full topic name of one of :data:`TOPIC_NAMES`, e.g. ``streamdl.images``."""
        if name not in TOPIC_NAMES:
            raise ValueError(f"unknown topic {name!r}; known: {', '.join(TOPIC_NAMES)}")
        return f"{self.topic_prefix}{name}"

    def alias(self, name: str) -> str:
        """Elasticsearch alias of one of :data:`ALIAS_NAMES`, e.g. ``streamdl-images``."""
        if name not in ALIAS_NAMES:
            raise ValueError(f"unknown alias {name!r}; known: {', '.join(ALIAS_NAMES)}")
        return f"{self.index_prefix}{name}"

    @property
    def kafka_address(self) -> tuple[str, int]:
        """Host and port of the first bootstrap server (where the local broker listens)."""
        host, port = self.kafka_bootstrap_servers.split(",")[0].rsplit(":", 1)
        return host.strip("[]"), int(port)

    @property
    def es_address(self) -> tuple[str, int]:
        """Host and port of the Elasticsearch URL (where the local node listens)."""
        parts = urlsplit(self.es_url)
        return parts.hostname or "127.0.0.1", parts.port or (443 if parts.scheme == "https" else 9200)

    def masked(self) -> dict[str, Any]:
        """All settings as plain values, secrets shown as ``**********``."""
        out: dict[str, Any] = {}
        for key, value in self.model_dump().items():
            out[key] = (
                "**********" if isinstance(value, SecretStr) else (str(value) if isinstance(value, Path) else value)
            )
        return out


def settings_env(settings: Settings) -> dict[str, str]:
    """``settings`` as ``STREAMDL_*`` variables, so a child process sees exactly the same settings."""
    env: dict[str, str] = {}
    for key, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        env[env_var(key)] = str(value)
    return env


def env_var(field: str) -> str:
    """The environment variable that sets ``field``."""
    return f"{ENV_PREFIX}{field.upper()}"


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    env_file: str | os.PathLike | None = ".env",
    *,
    flags: Mapping[str, str] | None = None,
) -> Settings:
    """Build the settings from defaults, ``env_file``, the environment and ``overrides``.

    ``None`` values in ``overrides`` are ignored (a CLI flag that was not given).
    Raises :class:`SettingsError` naming the setting and its environment variable, or the flag that
    set it when ``flags`` (field -> the flag the user typed) has it.
    """
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    given.update(_secrets_from_files(env_file, given))
    try:
        return Settings(_env_file=env_file, **given)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"])
            if not field:  # a check of several settings together: its message names them
                lines.append(str(err["msg"]).removeprefix("Value error, "))
                continue
            got = "**********" if field in SECRET_FIELDS else repr(err.get("input"))
            msg = str(err["msg"]).removeprefix("Value error, ")
            msg = msg if got in msg else f"{msg}; got {got}"
            flag = (flags or {}).get(field)
            lines.append(f"{flag}: {msg}" if flag else f"setting {field} ({env_var(field)}): {msg}")
        raise SettingsError("invalid settings:\n  " + "\n  ".join(lines)) from None


SECRET_FIELDS = ("kafka_password", "es_password", "es_api_key", "webhook_secret", "web_token")
"""The secrets: masked everywhere, and each settable from a file with ``STREAMDL_<NAME>_FILE``."""


def _secrets_from_files(env_file: str | os.PathLike | None, given: Mapping[str, Any]) -> dict[str, str]:
    """The secrets named by ``STREAMDL_<SECRET>_FILE`` variables (environment, then ``env_file``):
    each file's content, stripped of surrounding white space (a trailing newline).

    Precedence is the usual one: an explicit override beats the environment beats ``env_file``.
    A secret set both directly and by a file at the same level is an error unless the two agree.
    """
    dotenv: dict[str, str] = {}
    if env_file is not None and Path(env_file).is_file():
        from dotenv import dotenv_values

        dotenv = {k.upper(): v for k, v in dotenv_values(env_file).items() if v is not None}
    found: dict[str, str] = {}
    for field in SECRET_FIELDS:
        var, file_var = env_var(field), f"{env_var(field)}_FILE"
        if field in given:
            continue
        in_env = file_var in os.environ
        path = os.environ.get(file_var) if in_env else dotenv.get(file_var)
        if not path:
            continue
        if not in_env and var in os.environ:  # the environment's value beats a file named in env_file
            continue
        try:
            value = Path(path).expanduser().read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or type(exc).__name__
            raise SettingsError(f"setting {field} ({file_var}): cannot read {path}: {reason}") from None
        if not value:
            raise SettingsError(f"setting {field} ({file_var}): {path} is empty")
        direct = os.environ.get(var) if in_env else dotenv.get(var)
        if direct is not None and direct.strip() != value:
            raise SettingsError(
                f"setting {field}: both {var} and {file_var} are set, to different values; unset one of them"
            )
        found[field] = value
    return found
