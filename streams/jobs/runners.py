"""The Beam runner a retraining job runs on: made ready before the run (nothing downloads at run time),
and a failed job reported naming the runner and the cause.

========================================  ===============================================================
Beam options after ``--``                  what runs the job
========================================  ===============================================================
(no ``--runner``)                          Beam's in-process local runner (``retrain_pipeline.LOCAL_RUNNER``)
``--runner=PrismRunner``                   Beam's Prism job server as a subprocess, built once from the Go
                                           module proxy (:func:`streamdl.infra.gotools.prism`) unless
                                           ``--prism_location`` names a binary
``--runner=PortableRunner``                any portable job server already running: ``streamdl stack up
``--job_endpoint=HOST:PORT``               --with prism``, or Flink's / Spark's Beam job server
``--environment_type=LOOPBACK``            (SDK harness in this process)
``--runner=FlinkRunner`` / ``SparkRunner``  Beam starts the runner's job server jar; ``--flink_job_server_jar``
                                           / ``--spark_job_server_jar`` must name a local jar (else Beam
                                           would download it at run time, which is refused here)
========================================  ===============================================================
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from streamdl.errors import StreamdlError
from streamdl.settings import Settings

JAR_OPTION = {"FlinkRunner": "--flink_job_server_jar", "SparkRunner": "--spark_job_server_jar"}


class RetrainJobFailed(StreamdlError):
    """The Beam job of a retraining run failed on its runner; nothing was registered."""


def option(args: Sequence[str], name: str) -> str | None:
    """The value of ``--name=value`` or ``--name value`` in ``args`` (the last one wins), else ``None``."""
    value = None
    for i, arg in enumerate(args):
        if arg.startswith(f"--{name}="):
            value = arg.split("=", 1)[1]
        elif arg == f"--{name}" and i + 1 < len(args):
            value = args[i + 1]
    return value


def runner_name(args: Sequence[str]) -> str:
    """The runner the options name, or ``"local (in-process)"``."""
    return option(args, "runner") or "local (in-process)"


def prepare(settings: Settings, beam_args: Sequence[str], say: Callable[[str], None] = print) -> list[str]:
    """``beam_args`` completed so that the named runner needs nothing from the internet at run time."""
    args = list(beam_args)
    runner = option(args, "runner")
    if runner in ("PortableRunner", "PrismRunner", *JAR_OPTION) and option(args, "job_server_timeout") is None:
        args.append(f"--job_server_timeout={settings.beam_job_server_timeout_secs:g}")
    if runner == "PrismRunner" and option(args, "prism_location") is None:
        from streamdl.infra.gotools import installed_prism

        try:
            binary = installed_prism().ensure(settings.tools_dir, say=say)
        except StreamdlError as exc:
            raise RetrainJobFailed(f"the Beam job cannot run on PrismRunner: {exc}") from exc
        args.append(f"--prism_location={binary}")
    if runner in JAR_OPTION and option(args, JAR_OPTION[runner][2:]) is None and option(args, "job_endpoint") is None:
        raise RetrainJobFailed(
            f"{runner} needs a local job server jar ({JAR_OPTION[runner]}=PATH) or a running job server "
            "(--runner=PortableRunner --job_endpoint=HOST:PORT); without them Beam downloads the jar at run time. "
            "See docs/beam-runners.md."
        )
    if runner == "PortableRunner" and option(args, "job_endpoint") is None:
        raise RetrainJobFailed(
            "PortableRunner needs --job_endpoint=HOST:PORT (e.g. 'streamdl stack up --with prism' serves "
            "localhost:8099)"
        )
    return args


def run_job(beam_args: Sequence[str], job: Callable[[list[str]], dict[str, int]]) -> dict[str, int]:
    """Run ``job(beam_args)``; any failure becomes :class:`RetrainJobFailed` naming the runner, the job
    endpoint when there is one, and the cause."""
    args = list(beam_args)
    where = runner_name(args)
    endpoint = option(args, "job_endpoint")
    if endpoint:
        where += f" at {endpoint}"
    try:
        return job(args)
    except StreamdlError:
        raise
    except Exception as exc:
        cause = str(exc).strip().splitlines()
        reason = cause[-1] if cause else type(exc).__name__
        raise RetrainJobFailed(
            f"the Beam job failed on {where}: {type(exc).__name__}: {reason[:2000]}; nothing was registered"
        ) from exc
