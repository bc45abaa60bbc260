"""The model registry: MLflow (a SQLite store under the state folder by default, or a team's server).

A registered model has the name the workers serve (``digits-cnn``). Its version 1 is the base
model itself (registered on first use, tag ``kind=base``); retrained versions (``kind=head``) are
classifier heads over the base's featurizer, stored as run artifacts (``head/head.keras`` and
``head/info.json``). The version the workers serve carries the alias ``champion``; the registered
model's tag ``champion_history`` keeps the promotions in order, so a rollback returns to the
previous one. A version may also run beside the champion: alias ``shadow`` (scored on the same
micro-batches, never served) or ``canary`` (served to the share of ids in the model's tag
``canary_fraction``); :meth:`Registry.roles` reads both.

Until the first ``streamdl retrain`` nothing is registered and the workers serve the base model as it is
(``digits-cnn`` v1); asking for a version then is a :class:`NotRegistered` error that says so.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from streamdl.models import digits
from streamdl.models.errors import ModelNotFound, RoleRefused

logger = logging.getLogger(__name__)

CHAMPION = "champion"
SHADOW = "shadow"
CANARY = "canary"
ROLES = (SHADOW, CANARY)
CANARY_FRACTION_TAG = "canary_fraction"
HISTORY_TAG = "champion_history"
EXPERIMENT = "streamdl-retraining"
REFERENCE_TAG = "drift_reference"
"""Version tag: the artifact URI of the version's drift reference (JSON, from its validation split)."""
REFERENCE_ARTIFACT = "drift/reference.json"


class NotRegistered(ModelNotFound):
    """The model has no registered version (nothing was retrained yet): the message says what serves."""


def base_model(name: str) -> str:
    """The model the workers serve while ``name`` has no registered version: ``digits-cnn v1``, or the name."""
    return f"{name} v{digits.VERSION}" if name == digits.MODEL_NAME else name


@dataclass(frozen=True)
class Version:
    """One registered version."""

    name: str
    version: str
    kind: str
    """``base`` (the model as trained by the project), ``head`` (a retrained classifier head) or ``event`` (an
    event model saved under the state folder, version folder in tag ``folder_version``)."""
    champion: bool
    created_ms: int
    run_id: str | None
    source: str
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    @property
    def promoted(self) -> bool:
        return self.tags.get("promoted") == "true"


@dataclass(frozen=True)
class Roles:
    """The versions running beside the champion: the shadow, and the canary with its share of ids."""

    shadow: str | None = None
    canary: str | None = None
    fraction: float = 0.0
    """The canary's share of ids (0 without a canary)."""

    def of(self, version: str) -> str | None:
        """``shadow``, ``canary`` or ``None`` for ``version``."""
        return SHADOW if version == self.shadow else CANARY if version == self.canary else None


def default_tracking_uri(state_dir: Path) -> str:
    folder = Path(state_dir).resolve() / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


class Registry:
    """A thin client over MLflow for the few things the product does with models."""

    def __init__(self, tracking_uri: str, artifact_root: Path) -> None:
        os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
        if not logging.getLogger().isEnabledFor(logging.DEBUG):  # "Creating initial MLflow database tables..."
            logging.getLogger("mlflow.store.db.utils").setLevel(logging.WARNING)
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri
        self.artifact_root = Path(artifact_root).resolve()
        self._state_dir: Path | None = None
        self.mlflow = mlflow
        self.client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)

    @classmethod
    def from_settings(cls, settings: Any) -> Registry:
        """The registry of the settings: artifacts beside a SQLite store, else under the state folder."""
        uri = settings.mlflow_tracking_uri or default_tracking_uri(settings.state_dir)
        local = uri.startswith("sqlite:///")
        artifacts = (
            Path(uri[len("sqlite:///") :]).parent / "artifacts"
            if local
            else Path(settings.state_dir) / "mlflow" / "artifacts"
        )
        registry = cls(uri, artifacts)
        registry._state_dir = Path(settings.state_dir)
        return registry

    @staticmethod
    def exists(settings: Any) -> bool:
        """Whether there is a registry to ask (a configured server, or the default SQLite file)."""
        return settings.mlflow_tracking_uri is not None or (Path(settings.state_dir) / "mlflow" / "mlflow.db").exists()

    # --- reading --------------------------------------------------------------------------
    def versions(self, name: str) -> list[Version]:
        """Every version of ``name``, oldest first (empty when it was never registered)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            return []
        champion = (model.aliases or {}).get(CHAMPION)
        found = self.client.search_model_versions(f"name='{name}'")
        return sorted((self._version(mv, champion) for mv in found), key=lambda v: int(v.version))

    def unregistered(self, name: str) -> str:
        """One line: ``name`` has no registered versions, what the workers serve instead, what registers it."""
        from streamdl.models.event_models import model_versions

        if self._state_dir is not None and (saved := model_versions(name, self._state_dir)):
            return (
                f"{name} has no registered versions in the registry ({self.tracking_uri}); the workers serve its "
                f"latest saved version {saved[-1]} ('streamdl train events --name {name}' registers the next one)"
            )
        return (
            f"{name} has no registered versions in the registry ({self.tracking_uri}); the workers serve the "
            f"base model {base_model(name)} (registered as version 1 by the first 'streamdl retrain')"
        )

    def show(self, name: str, version: str) -> Version:
        """One version; :class:`NotRegistered` when ``name`` has none, :class:`ModelNotFound` naming the
        versions there are when ``version`` is not one of them."""
        versions = self.versions(name)
        for v in versions:
            if v.version == str(version):
                return v
        if not versions:
            raise NotRegistered(
                f"no version {version!r}: {self.unregistered(name)}; run 'streamdl retrain' to register versions"
            )
        serving = next((f"; version {v.version} serves" for v in versions if v.champion), "")
        raise ModelNotFound(
            f"{name} has no version {version!r} in the registry ({self.tracking_uri}); versions: "
            f"{', '.join(v.version for v in versions)}{serving} ('streamdl models list' shows them)"
        )

    def champion(self, name: str) -> Version | None:
        """The version the workers serve, or ``None`` when nothing was promoted (image and event models alike)."""
        return next((v for v in self.versions(name) if v.champion), None)

    def reference(self, name: str, version: str) -> dict[str, Any] | None:
        """The drift reference saved with a version (:meth:`log_reference`), ``None`` when it has none."""
        uri = self.show(name, version).tags.get(REFERENCE_TAG)
        if not uri:
            return None
        return self.mlflow.artifacts.load_dict(uri)

    def roles(self, name: str) -> Roles:
        """The shadow and canary versions of ``name`` (none when it was never registered)."""
        from mlflow.exceptions import MlflowException

        try:
            model = self.client.get_registered_model(name)
        except MlflowException:
            return Roles()
        aliases = {k: str(v) for k, v in (model.aliases or {}).items()}
        canary = aliases.get(CANARY)
        fraction = float((model.tags or {}).get(CANARY_FRACTION_TAG) or 0.0) if canary else 0.0
        return Roles(shadow=aliases.get(SHADOW), canary=canary, fraction=fraction)

    def head_folder(self, version: Version) -> Path:
        """A local folder with the version's ``head.keras`` and ``info.json``."""
        if version.kind != "head":
            raise ValueError(f"{version.name} version {version.version} is the base model, not a head")
        local = self.mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=self.tracking_uri)
        return Path(local)

    # --- writing --------------------------------------------------------------------------
    def ensure_base(
        self,
        name: str,
        metrics: dict[str, float],
        source: str,
        reference: Callable[[], dict[str, Any]] | None = None,
    ) -> Version:
        """Register the base model as version 1 (promoted) if ``name`` has no versions yet; ``reference`` computes
        its drift reference (only when it is registered, or when version 1 has none yet)."""
        existing = self.versions(name)
        if existing:
            if reference is not None and REFERENCE_TAG not in existing[0].tags:
                self.log_reference(existing[0], reference())
            return existing[0]
        self._ensure_model(name)
        mv = self.client.create_model_version(
            name,
            source=source,
            tags={"kind": "base", "promoted": "true", **{f"metric.{k}": str(v) for k, v in metrics.items()}},
        )
        self._set_champion(name, str(mv.version), history=[str(mv.version)])
        logger.info("registered the base model %s as version %s", name, mv.version)
        if reference is not None:
            self.log_reference(self.show(name, str(mv.version)), reference())
        return self.show(name, str(mv.version))

    def register_event_model(self, name: str, folder: Path, metrics: dict[str, float]) -> Version:
        """Register a saved event model (its folder: ``model.keras``, ``features.json``, ``info.json``) as the next
        version of ``name`` and make it the champion, as a newly trained event model serves (tag ``kind=event``;
        ``folder_version`` is the version folder the workers load)."""
        self._ensure_model(name)
        folder = Path(folder).resolve()
        mv = self.client.create_model_version(
            name,
            source=folder.as_uri(),
            tags={
                "kind": "event",
                "folder_version": folder.name,
                **{f"metric.{k}": str(v) for k, v in metrics.items()},
            },
        )
        return self.promote(name, str(mv.version), reason="trained by 'streamdl train events'")

    def register_head(
        self, name: str, run_id: str, artifact_path: str, metrics: dict[str, float], tags: dict[str, str]
    ) -> Version:
        """Register the head logged by ``run_id`` under ``artifact_path`` as the next version of ``name``."""
        self._ensure_model(name)
        source = f"{self.client.get_run(run_id).info.artifact_uri}/{artifact_path}"
        mv = self.client.create_model_version(
            name,
            source=source,
            run_id=run_id,
            tags={"kind": "head", "promoted": "false", **tags, **{f"metric.{k}": str(v) for k, v in metrics.items()}},
        )
        return self.show(name, str(mv.version))

    def promote(self, name: str, version: str, reason: str = "") -> Version:
        """Make ``version`` the champion (served by the workers)."""
        target = self.show(name, version)
        history = self._history(name)
        if history and history[-1] == target.version:
            return target
        self.client.set_model_version_tag(name, target.version, "promoted", "true")
        if reason:
            self.client.set_model_version_tag(name, target.version, "promotion_reason", reason[:500])
        self._set_champion(name, target.version, history=[*history, target.version])
        for role in ROLES:  # a shadow or canary promoted to champion leaves its role
            if getattr(self.roles(name), role) == target.version:
                self.set_role(name, role, None)
        return self.show(name, version)

    def set_role(self, name: str, role: str, version: str | None, fraction: float = 0.0) -> Roles:
        """Make ``version`` the ``shadow`` or the ``canary`` (served to ``fraction`` of the ids) of ``name``, or,
        with ``version=None``, clear that role. The champion itself, or an event model, cannot take a role."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}. Received: role={role!r}")
        if version is None:
            from mlflow.exceptions import MlflowException

            try:
                self.client.delete_registered_model_alias(name, role)
            except MlflowException:
                pass  # no such alias (or model): nothing to clear
            return self.roles(name)
        target = self.show(name, version)
        other = getattr(self.roles(name), CANARY if role == SHADOW else SHADOW)
        if target.champion:
            raise RoleRefused(f"{name} version {target.version} is the champion; a {role} runs beside it")
        if target.kind == "event":
            raise RoleRefused(f"{name} version {target.version} is an event model; only image models take a {role}")
        if other == target.version:
            raise RoleRefused(
                f"{name} version {target.version} is the {CANARY if role == SHADOW else SHADOW} already; "
                "one role per version (end that one first with --off)"
            )
        if role == CANARY:
            if not 0.0 < fraction < 1.0:
                raise RoleRefused(f"a canary serves a share of the ids: 0 < fraction < 1. Received: {fraction}")
            self.client.set_registered_model_tag(name, CANARY_FRACTION_TAG, f"{fraction:g}")
        self.client.set_registered_model_alias(name, role, target.version)
        return self.roles(name)

    def rollback(self, name: str) -> Version:
        """Make the previously promoted version the champion again."""
        if not self.versions(name):
            raise NotRegistered(f"nothing to roll back to: {self.unregistered(name)}")
        history = self._history(name)
        if len(history) < 2:
            serving = f"; version {history[-1]} serves" if history else ""
            raise ModelNotFound(
                f"{name}: nothing to roll back to (promotions so far: {', '.join(history) or 'none'}{serving}); "
                "'streamdl models promote VERSION' serves another registered version"
            )
        self._set_champion(name, history[-2], history=history[:-1])
        return self.show(name, history[-2])

    def log_reference(self, version: Version, reference: dict[str, Any]) -> Version:
        """Save ``reference`` (JSON) as the artifact ``drift/reference.json`` of the version's run (a run of its own
        for a version without one: the base model, event models) and point the version's tag at it."""
        run_id = version.run_id
        if run_id is None:
            run = self.client.create_run(self.experiment_id(), run_name=f"{version.name}-v{version.version}-reference")
            run_id = run.info.run_id
            self.client.set_terminated(run_id)
        folder, file = REFERENCE_ARTIFACT.rsplit("/", 1)
        with tempfile.TemporaryDirectory(prefix="streamdl-reference-") as tmp:
            local = Path(tmp) / file
            local.write_text(json.dumps(reference, separators=(",", ":")), encoding="utf-8")  # compact: ~100 KB
            self.client.log_artifact(run_id, str(local), folder)
        uri = f"{self.client.get_run(run_id).info.artifact_uri}/{REFERENCE_ARTIFACT}"
        self.client.set_model_version_tag(version.name, version.version, REFERENCE_TAG, uri)
        return self.show(version.name, version.version)

    def model_tag(self, name: str, key: str) -> str | None:
        """A tag of the registered model (``None`` when it or the tag does not exist)."""
        from mlflow.exceptions import MlflowException

        try:
            return (self.client.get_registered_model(name).tags or {}).get(key)
        except MlflowException:
            return None

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(name, key, value)

    def note(self, name: str, version: str, key: str, value: str) -> None:
        self.client.set_model_version_tag(name, str(version), key, value[:5000])

    # --- internals ------------------------------------------------------------------------
    def experiment_id(self) -> str:
        found = self.client.get_experiment_by_name(EXPERIMENT)
        if found is not None:
            return found.experiment_id
        self.artifact_root.mkdir(parents=True, exist_ok=True)
        return self.client.create_experiment(EXPERIMENT, artifact_location=self.artifact_root.as_uri())

    def _ensure_model(self, name: str) -> None:
        from mlflow.exceptions import MlflowException

        try:
            self.client.get_registered_model(name)
        except MlflowException:
            self.client.create_registered_model(
                name,
                description=f"streamdl model {name}: version 1 is the base model, "
                "later versions retrained classifier heads",
            )

    def _history(self, name: str) -> list[str]:
        tags = self.client.get_registered_model(name).tags or {}
        return [v for v in tags.get(HISTORY_TAG, "").split(",") if v]

    def _set_champion(self, name: str, version: str, history: list[str]) -> None:
        self.client.set_registered_model_alias(name, CHAMPION, str(version))
        self.client.set_registered_model_tag(name, HISTORY_TAG, ",".join(history))

    @staticmethod
    def _version(mv: Any, champion: str | None) -> Version:
        tags = dict(mv.tags or {})
        metrics = {k[7:]: float(v) for k, v in tags.items() if k.startswith("metric.")}
        return Version(
            mv.name,
            str(mv.version),
            tags.get("kind", "head"),
            str(mv.version) == str(champion),
            int(mv.creation_timestamp or 0),
            mv.run_id or None,
            mv.source,
            metrics,
            {k: v for k, v in tags.items() if not k.startswith("metric.")},
        )


def head_info(folder: Path) -> dict[str, Any]:
    """The ``info.json`` of a downloaded head folder."""
    return json.loads((Path(folder) / "info.json").read_text(encoding="utf-8"))
