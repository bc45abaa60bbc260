"""Command-line tools built from the Go module proxy with ``go install`` and cached.

Each tool is built once per version into ``<tools_dir>/<name>-<version>/`` (``STREAMDL_TOOLS_DIR``);
Go's own module and build caches make a rebuild after a cache wipe quick. Used for Beam's Prism
job server (the portable runner, same version as the installed apache-beam) and for ``helm`` (the
chart checks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from streamdl.errors import StackError


@dataclass(frozen=True)
class GoTool:
    """A ``main`` package on the Go module proxy, at one version."""

    name: str
    package: str
    """The ``main`` package path, e.g. ``helm.sh/helm/v3/cmd/helm``."""
    version: str
    """A module version such as ``v3.22.0``."""

    def path(self, tools_dir: Path) -> Path:
        return Path(tools_dir).expanduser() / f"{self.name}-{self.version}" / self.name

    def ensure(self, tools_dir: Path, say: Callable[[str], None] = print, timeout: float = 1200) -> Path:
        """The built binary, built first when missing; :class:`StackError` saying why when it cannot be."""
        binary = self.path(tools_dir)
        if binary.is_file() and os.access(binary, os.X_OK):
            return binary
        go = shutil.which("go")
        if not go:
            raise StackError(
                f"Go is needed to build {self.name} {self.version} from the Go module proxy and 'go' is not on PATH. "
                "Install Go 1.22+ (apt-get install golang) or put the binary at " + str(binary)
            )
        say(f"building {self.name} {self.version} from the Go module proxy (once; cached in {binary.parent}) ...")
        partial = binary.parent.with_name(binary.parent.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        env = {**os.environ, "GOBIN": str(partial), "CGO_ENABLED": "0"}
        try:
            proc = subprocess.run(
                [go, "install", f"{self.package}@{self.version}"],
                env=env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise StackError(f"building {self.name} {self.version} took over {timeout:.0f}s; it was stopped") from None
        if proc.returncode != 0 or not (partial / self.name).is_file():
            tail = "\n".join(proc.stderr.strip().splitlines()[-15:])
            raise StackError(
                f"'go install {self.package}@{self.version}' failed (exit {proc.returncode}). "
                f"Is the Go module proxy reachable (GOPROXY)?\n{tail}"
            )
        shutil.rmtree(binary.parent, ignore_errors=True)
        partial.rename(binary.parent)
        return binary


def prism(beam_version: str) -> GoTool:
    """Beam's Prism runner (a portable job server) matching the installed Python SDK ``beam_version``."""
    return GoTool("prism", "github.com/apache/beam/sdks/v2/go/cmd/prism", f"v{beam_version}")


HELM = GoTool("helm", "helm.sh/helm/v3/cmd/helm", "v3.22.0")


def installed_prism() -> GoTool:
    """Prism for the installed apache-beam."""
    from importlib.metadata import version

    return prism(version("apache-beam"))


def main(argv: list[str] | None = None) -> int:
    """``python -m streamdl.infra.gotools [helm] [prism]``: build the named tools (all by default) into the cache;
    ``make test`` runs it as a setup step so no test downloads."""
    import sys

    from streamdl.settings import load_settings

    tools = {"helm": HELM, "prism": installed_prism()}
    names = (argv if argv is not None else sys.argv[1:]) or list(tools)
    unknown = [n for n in names if n not in tools]
    if unknown:
        print(f"unknown tool {', '.join(unknown)}; known: {', '.join(tools)}", file=sys.stderr)
        return 2
    tools_dir = load_settings(env_file=None).tools_dir
    try:
        for name in names:
            print(f"{name}: {tools[name].ensure(tools_dir)}")
    except StackError as exc:
        print(f"streamdl: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
