"""Fetch the local stack's Java artifacts from Maven Central and unpack them into the state folder.

Maven's own cache (``~/.m2``) makes later fetches local; the unpacked distributions are kept
under ``<state_dir>/dist`` and reused while their ``.complete`` marker exists.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path

from streamdl.errors import StackError

logger = logging.getLogger(__name__)

POM = Path(__file__).with_name("pom.xml")
MIN_JAVA = 17


def find_java() -> tuple[Path, int]:
    """The ``java`` executable (``$JAVA_HOME`` first, then ``PATH``) and its major version."""
    import os

    candidates = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(Path(os.environ["JAVA_HOME"]) / "bin" / "java")
    if shutil.which("java"):
        candidates.append(Path(shutil.which("java")))  # type: ignore[arg-type]
    for java in candidates:
        if java.exists():
            out = subprocess.run([str(java), "-version"], capture_output=True, text=True).stderr
            match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
            if not match:
                continue
            major = int(match.group(1))
            major = int(match.group(2)) if major == 1 and match.group(2) else major
            if major < MIN_JAVA:
                raise StackError(
                    f"Java {MIN_JAVA} or newer is needed; {java} is Java {major}. "
                    "Install openjdk-17-jre-headless or set JAVA_HOME."
                )
            return java.resolve(), major
    raise StackError(
        f"Java {MIN_JAVA}+ is needed to run Kafka and Elasticsearch and none was found (PATH, JAVA_HOME). "
        "Install openjdk-17-jre-headless or set JAVA_HOME."
    )


def java_home(java: Path) -> Path:
    """The JDK/JRE folder of a resolved ``java`` executable."""
    return java.parent.parent


def _mvn(args: list[str], what: str) -> None:
    mvn = shutil.which("mvn")
    if not mvn:
        raise StackError(
            f"Maven (mvn) is needed to fetch {what} from Maven Central and it is not on PATH. "
            "Install it (apt-get install maven) or put a Maven 3 'mvn' on PATH."
        )
    cmd = [mvn, "-q", "-B", "-Dstyle.color=never", "-f", str(POM), *args]
    logger.debug("running %s", " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise StackError(
            f"Maven could not fetch {what} (exit {proc.returncode}). "
            f"Is Maven Central reachable, and does the version exist?\n{tail}"
        )


def fetch_kafka(dist_dir: Path, version: str, say: Callable[[str], None] = print) -> Path:
    """Kafka's runtime classpath folder (``.../kafka-VERSION/libs``), fetched once."""
    home = dist_dir / f"kafka-{version}"
    if (home / ".complete").exists():
        return home / "libs"
    say(f"fetching Apache Kafka {version} from Maven Central (once; cached in ~/.m2) ...")
    tmp = dist_dir / f".kafka-{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    _mvn(
        [
            f"-Dkafka.version={version}",
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            "-DexcludeTypes=zip",
            f"-DoutputDirectory={tmp / 'libs'}",
        ],
        f"Apache Kafka {version}",
    )
    if not any((tmp / "libs").glob(f"kafka_2.13-{version}.jar")):
        raise StackError(f"Maven ran but kafka_2.13-{version}.jar is not in {tmp / 'libs'}")
    (tmp / ".complete").touch()
    shutil.rmtree(home, ignore_errors=True)
    tmp.rename(home)
    return home / "libs"


def fetch_elasticsearch(dist_dir: Path, version: str, say: Callable[[str], None] = print) -> Path:
    """The unpacked Elasticsearch home (``.../elasticsearch-VERSION``), fetched once."""
    home = dist_dir / f"elasticsearch-{version}"
    if (home / ".complete").exists():
        return home
    say(f"fetching Elasticsearch {version} from Maven Central (once; cached in ~/.m2) ...")
    tmp = dist_dir / f".elasticsearch-{version}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    _mvn(
        [f"-Des.version={version}", "dependency:copy-dependencies", "-DincludeTypes=zip", f"-DoutputDirectory={tmp}"],
        f"Elasticsearch {version}",
    )
    archive = tmp / f"elasticsearch-{version}.zip"
    if not archive.exists():
        raise StackError(f"Maven ran but {archive.name} is not in {tmp}")
    _unzip(archive, tmp)
    archive.unlink()
    unpacked = tmp / f"elasticsearch-{version}"
    (unpacked / ".complete").touch()
    shutil.rmtree(home, ignore_errors=True)
    unpacked.rename(home)
    shutil.rmtree(tmp, ignore_errors=True)
    return home


def _unzip(archive: Path, dest: Path) -> None:
    """Unpack keeping the archive's file modes (zipfile alone drops the executable bits)."""
    with zipfile.ZipFile(archive) as zf:
        for info in zf.infolist():
            path = Path(zf.extract(info, dest))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode | 0o444 | (0o111 if path.is_dir() else 0))
            elif path.is_dir():
                path.chmod(0o755)
