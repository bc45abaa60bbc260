"""Small process helpers for the local stack: pid files, liveness, ports, stopping, log tails."""

from __future__ import annotations

import os
import random
import signal
import socket
import time
from pathlib import Path


def read_pid(path: Path) -> int | None:
    """The pid stored in ``path``, or ``None`` when there is no (valid) pid file."""
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def write_pid(path: Path, pid: int) -> None:
    """Store ``pid`` in ``path`` (atomically)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def cmdline(pid: int) -> str:
    """The command line of ``pid`` (empty when it does not exist)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_alive(pid: int | None, marker: str) -> bool:
    """Whether ``pid`` runs, is not a zombie, and its command line contains ``marker``.

    The marker guards against a stale pid file whose number the system gave to another process.
    """
    if not pid:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z" and marker in cmdline(pid)


def children(pid: int) -> list[int]:
    """Direct and indirect child pids of ``pid``."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        kids: list[str] = []
        for task in Path(f"/proc/{parent}/task").glob("*"):  # a JVM forks from any of its threads
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                continue
        for kid in map(int, kids):
            found.append(kid)
            todo.append(kid)
    return found


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` and its children, in bytes (0 when gone)."""
    total = 0
    for p in [pid, *children(pid)]:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def port_is_free(host: str, port: int) -> bool:
    """Whether a TCP server could listen on ``host:port`` now."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


LOWEST_PORT = 10_000
"""Where :func:`free_port` starts looking."""


def outgoing_ports_start() -> int:
    """The first port of the range the kernel gives outgoing connections (Linux's ``ip_local_port_range``;
    32768 where it cannot be read, at or below every system's default)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1", count: int = 1) -> int:
    """The first of ``count`` consecutive TCP ports free on ``host`` right now, below the range the kernel gives
    outgoing connections: a port the system picked itself (bind to 0) is in that range, and a client connection
    could take it, or the port after it, before the caller listens there."""
    top = max(outgoing_ports_start(), LOWEST_PORT + 1000)
    rng = random.SystemRandom()
    for _ in range(1000):
        first = rng.randrange(LOWEST_PORT, top - count + 1)
        if all(port_is_free(host, first + i) for i in range(count)):
            return first
    raise RuntimeError(f"no {count} free consecutive TCP ports on {host} between {LOWEST_PORT} and {top}")


def stop_process(pid: int, timeout: float = 60.0) -> bool:
    """SIGTERM ``pid`` (and its process group), wait up to ``timeout``, then SIGKILL.

    Returns ``True`` when it stopped on SIGTERM, ``False`` when it had to be killed.
    """
    family = [pid, *children(pid)]
    _signal_all(family, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(_exists(p) for p in family):
            return True
        time.sleep(0.2)
    _signal_all(family, signal.SIGKILL)
    for _ in range(50):
        if not any(_exists(p) for p in family):
            break
        time.sleep(0.1)
    return False


def _signal_all(pids: list[int], sig: int) -> None:
    for p in pids:
        try:
            os.kill(p, sig)
        except ProcessLookupError:
            pass


def _exists(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our own child
    except ChildProcessError:
        pass
    return is_alive(pid, marker="")


def tail(path: Path, lines: int = 30) -> str:
    """The last ``lines`` lines of a text file ('' when missing)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 200 * lines))
            data = fh.read().decode(errors="replace")
    except OSError:
        return ""
    return "\n".join(data.splitlines()[-lines:])
