"""``streamdl retrain`` and ``streamdl models``: retraining from the archive and the model registry."""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime

from streamdl.errors import SettingsError
from streamdl.settings import Settings
from streamdl.times import parse_duration

EXIT_BUSY = 4
EXIT_TOO_FEW = 5
EXIT_NO_EVIDENCE = 6


def add_model_parsers(sub, common: argparse.ArgumentParser) -> None:
    retrain = sub.add_parser(
        "retrain",
        parents=[common],
        help="retrain the served model's classifier from the archive (Apache Beam)",
        description="Read the archived images and their latest 'label' events, embed them with the current version "
        "through Beam's RunInference, train a new classifier head, evaluate it against the current version, "
        "register it in MLflow and promote it if it passes the gate (then the workers swap it in). "
        "Beam pipeline options go after '--', e.g. 'streamdl retrain -- --runner=FlinkRunner ...'; without "
        "--runner the pipeline runs in this process (Beam's FnApiRunner) and downloads nothing. "
        "('--runner=DirectRunner' lets Beam try its PrismRunner first, which downloads a binary from GitHub.)",
    )
    retrain.add_argument("--since", help="archived images since: ISO time or a duration ago (7d)")
    retrain.add_argument("--until", help="archived images until: ISO time or a duration ago")
    retrain.add_argument("--every", help="run again every DURATION (1h, 30m), skipping a run when no label arrived")
    retrain.add_argument(
        "--search",
        choices=("grid", "random"),
        default="grid",
        help="learning rate and L2: a small grid (default) or random search",
    )
    retrain.add_argument("--trials", type=int, default=8, help="candidates of the random search (default 8)")
    retrain.add_argument("beam_args", nargs=argparse.REMAINDER, help="after '--': Beam pipeline options")

    models = sub.add_parser(
        "models",
        help="the model registry (MLflow): list, show, promote, roll back",
        description="The registered versions of the served model (STREAMDL_MODEL_NAME). Until the first "
        "'streamdl retrain' nothing is registered and the workers serve the base model (digits-cnn v1): "
        "'list' says so, and 'show', 'promote' and 'rollback' exit 2 with a one-line error (as they do for a "
        "version that is not registered or when there is nothing to roll back to). '--model NAME' names "
        "another registered model, e.g. an event model registered by 'streamdl train events' (workers load its "
        "champion when they start).",
    )
    models_sub = models.add_subparsers(dest="action", metavar="ACTION", required=True)
    models_sub.add_parser("list", parents=[common], help="the versions of a model (default: the served one)")
    show = models_sub.add_parser("show", parents=[common], help="one version: metrics, tags, where it is stored")
    show.add_argument("version")
    promote = models_sub.add_parser(
        "promote", parents=[common], help="make a version the one the workers serve, and announce it"
    )
    promote.add_argument("version")
    promote.add_argument(
        "--min-labels",
        type=int,
        metavar="N",
        help="promote only on live evidence: the version and the champion each have N joined labels and a "
        "sequential non-inferiority test says the version is not worse by more than --margin (exit 6 otherwise)",
    )
    promote.add_argument(
        "--margin", type=float, help="accuracy the version may lose against the champion (default: rollback_margin)"
    )
    promote.add_argument(
        "--alpha", type=float, help="the test's overall level over its looks (default: rollback_alpha)"
    )
    shadow = models_sub.add_parser(
        "shadow",
        parents=[common],
        help="score a version beside the champion on the same micro-batches; never served, its alerts never sent",
    )
    shadow.add_argument("version", nargs="?", help="the version (omit with --off)")
    shadow.add_argument("--off", action="store_true", help="stop the shadow version")
    canary = models_sub.add_parser(
        "canary", parents=[common], help="serve a version to a deterministic hash-fraction of the image ids"
    )
    canary.add_argument("version", nargs="?", help="the version (omit with --off)")
    canary.add_argument("--fraction", type=float, default=0.1, help="share of the ids it serves, 0..1 (default 0.1)")
    canary.add_argument("--off", action="store_true", help="stop the canary: the champion serves every id again")
    models_sub.add_parser(
        "rollback", parents=[common], help="serve the previously promoted version again, and announce it"
    )
    models_sub.add_parser(
        "compare",
        parents=[common],
        help="live accuracy (late labels) and drift of every version side by side (docs/model-quality.md)",
    )
    fetch = models_sub.add_parser(
        "fetch",
        parents=[common],
        help="download a Keras application's ImageNet weights into the Keras cache, checked against their hash",
        description="The one explicit download: NAME's weights file (featurizer, predictor or both) from Keras' "
        "URL or --mirror into the Keras cache ($KERAS_HOME/models or ~/.keras/models), checked against the MD5 "
        "Keras publishes before it is kept. Workers never download. Offline it fails at once with the URL and "
        "the manual steps.",
    )
    fetch.add_argument("name", help="a Keras application: MobileNetV2, ResNet50, InceptionV3, ...")
    fetch.add_argument(
        "--mode", choices=("featurize", "classify", "both"), default="both", help="which file(s) (default both)"
    )
    fetch.add_argument("--mirror", help="a folder URL holding the same file names, instead of Keras' own")


def _fetch(args: argparse.Namespace) -> int:
    from streamdl.models.fetch import fetch_weights

    for mode in ("featurize", "classify") if args.mode == "both" else (args.mode,):
        got = fetch_weights(args.name, mode, mirror=args.mirror)
        check = "MD5 matches the published hash" if got.verified else "Keras publishes no hash for it"
        print(
            f"{mode}: {got.path} ({'downloaded' if got.downloaded else 'already there'}; {check}; sha256 {got.sha256})"
        )
    return 0


def cmd_retrain(args: argparse.Namespace, settings: Settings) -> int:
    from streamdl.streams.jobs.retrain import RetrainBusy, TooFewLabels, retrain
    from streamdl.times import parse_since

    beam_args = [a for a in args.beam_args if a != "--"]
    every = parse_duration(args.every) if args.every else None
    since = parse_since(args.since) if args.since else None
    until = parse_since(args.until, flag="--until") if args.until else None
    while True:
        started = time.monotonic()
        try:
            result = retrain(
                settings,
                since=since,
                until=until,
                beam_args=beam_args,
                search=args.search,
                trials=args.trials,
                skip_unchanged=every is not None,
                say=_say,
            )
            stages = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
            print(
                f"{result.status}: version {result.version or '-'}: {result.reason}"
                + (f" ({stages})" if stages else "")
            )
        except RetrainBusy as exc:
            print(f"streamdl: {exc}", file=sys.stderr)
            if every is None:
                return EXIT_BUSY
        except TooFewLabels as exc:
            print(f"streamdl: stopped early: {exc}", file=sys.stderr)
            if every is None:
                return EXIT_TOO_FEW
        if every is None:
            return 0
        time.sleep(max(0.0, every - (time.monotonic() - started)))


def cmd_models(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "fetch":
        return _fetch(args)
    from streamdl.models.registry import Registry
    from streamdl.streams.jobs.retrain import announce

    registry = Registry.from_settings(settings)
    name = settings.model_name  # --model NAME: the image model, or an event model such as sensors-ae
    if args.action == "compare":
        from streamdl.connectors.es_client import es_client
        from streamdl.streams.quality.compare import compare

        champion = registry.champion(name) if Registry.exists(settings) else None
        roles = registry.roles(name) if Registry.exists(settings) else None
        marks = {}
        if roles is not None and roles.shadow:
            marks[roles.shadow] = "shadow"
        if roles is not None and roles.canary:
            marks[roles.canary] = f"canary@{roles.fraction:g}"
        es = es_client(settings)
        try:
            print(compare(settings, es, champion.version if champion else None, time.time(), marks))
        finally:
            es.close()
        return 0
    if args.action == "list":
        versions = registry.versions(name)
        if not versions:
            print(registry.unregistered(name))
            return 0
        print(
            f"{'version':>7}  {'kind':<5} {'role':<8}{'promoted':<9}{'test acc':>9}  {'created (UTC)':<20} gate / note"
        )
        roles = registry.roles(name)
        for v in versions:
            acc = v.metrics.get("test_accuracy", v.metrics.get("holdout_accuracy"))
            role = "*" if v.champion else roles.of(v.version) or ""
            created = datetime.fromtimestamp(v.created_ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S")
            print(
                f"{v.version:>7}  {v.kind:<5} {role:<8}{'yes' if v.promoted else 'no':<9}"
                f"{'' if acc is None else f'{acc:.4f}':>9}  {created:<20} "
                f"{v.tags.get('not_promoted') or v.tags.get('gate', '')}"
            )
        return 0
    if args.action == "show":
        v = registry.show(name, args.version)
        print(f"{name} version {v.version} ({v.kind}){' - serving' if v.champion else ''}")
        print(f"  source: {v.source}\n  run: {v.run_id or '-'}")
        for key, value in sorted(v.metrics.items()):
            print(f"  {key}: {value:.4f}")
        for key, value in sorted(v.tags.items()):
            print(f"  {key}: {value}")
        return 0
    if args.action in ("shadow", "canary"):
        return _role(args, settings, registry)
    if args.action == "promote":
        if args.min_labels is not None and not _evidence(args, settings, registry):
            return EXIT_NO_EVIDENCE
        before = registry.roles(name)
        version = registry.promote(name, args.version, reason="promoted by hand")
        _announce_ended_roles(settings, name, before, registry.roles(name))
    else:
        version = registry.rollback(name)
    if version.kind == "event":
        print(f"{name}: version {version.version} is the champion; workers load it when they (re)start")
        return 0
    announce(settings, version)
    print(f"{name}: version {version.version} now serves; announced on {settings.topic('model-updates')}")
    return 0


def _evidence(args: argparse.Namespace, settings: Settings, registry) -> bool:
    """``promote --min-labels``: print the verdict of the live evidence; whether it allows the promotion."""
    from streamdl.connectors.es_client import es_client
    from streamdl.streams.quality.promotion import promotion_evidence

    margin = settings.rollback_margin if args.margin is None else args.margin
    alpha = settings.rollback_alpha if args.alpha is None else args.alpha
    if args.min_labels < 1 or not 0 <= margin < 1 or not 0 < alpha < 0.5:
        raise SettingsError(
            f"--min-labels must be >= 1, --margin in [0, 1), --alpha in (0, 0.5). "
            f"Received: {args.min_labels}, {margin}, {alpha}"
        )
    es = es_client(settings)
    try:
        verdict = promotion_evidence(settings, es, registry, args.version, args.min_labels, margin, alpha)
    finally:
        es.close()
    print(f"{settings.model_name}: {'promoting' if verdict.accepted else 'not promoted'}: {verdict.message}",
          file=sys.stdout if verdict.accepted else sys.stderr)  # fmt: skip
    return verdict.accepted


def _role(args: argparse.Namespace, settings: Settings, registry) -> int:
    """``models shadow V`` / ``models canary V --fraction F`` (``--off`` ends the role): the registry's alias,
    announced on model-updates so every worker picks it up between micro-batches."""
    from streamdl.streams.jobs.retrain import announce_role

    name, role = settings.model_name, args.action
    if args.off == (args.version is not None):
        raise SettingsError(f"'streamdl models {role}' takes a VERSION or --off (not both)")
    fraction = args.fraction if role == "canary" else 0.0
    roles = registry.set_role(name, role, None if args.off else args.version, fraction)
    version = getattr(roles, role)
    announce_role(settings, name, role, version, roles.fraction if role == "canary" else 0.0)
    topic = settings.topic("model-updates")
    if version is None:
        print(f"{name}: no {role} version now; announced on {topic}")
    elif role == "canary":
        print(f"{name}: version {version} serves {roles.fraction:g} of the ids as the canary; announced on {topic}")
    else:
        print(f"{name}: version {version} runs as the shadow beside the champion; announced on {topic}")
    return 0


def _announce_ended_roles(settings: Settings, name: str, before, after) -> None:
    """A promoted shadow or canary leaves its role: the workers are told."""
    from streamdl.streams.jobs.retrain import announce_role

    for role in ("shadow", "canary"):
        if getattr(before, role) is not None and getattr(after, role) is None:
            announce_role(settings, name, role, None)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
