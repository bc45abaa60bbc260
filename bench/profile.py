"""Where a worker's CPU goes: py-spy samples of every thread of a running process, as top-N tables.

:class:`Profile` runs ``py-spy record`` (from PyPI, the ``bench`` extra) against a process while a
benchmark drives it, then reads the collapsed stacks it wrote: samples are only taken of threads
that are running (py-spy leaves idle threads out), so shares are of the CPU the process used.
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")

STAGES = (
    ("compute thread (validate, model, documents)", ("EventPipeline.compute", "ImagePipeline.compute")),
    (
        "index thread (neighbour lookups, rules, one bulk: documents and alerts)",
        ("ImagePipeline.index_documents", "BatchWriter.index_documents"),
    ),
    ("publish thread (sinks)", ("BatchWriter.publish",)),
)
"""A sample belongs to the first stage one of whose functions is on its stack; else to the event loop."""

WAITING = ("select", "readinto", "_worker", "wait", "poll", "flush", "acquire", "recv_into", "sleep")
"""Innermost functions that are (mostly) a thread blocked in a system call py-spy did not see as idle."""

AREAS = (
    ("Faust / mode / aiokafka", ("faust/", "mode/", "aiokafka/", "kafka/")),
    ("asyncio event loop", ("asyncio/", "selectors.py", "uvloop")),
    (
        "Elasticsearch client (HTTP)",
        ("elasticsearch/", "elastic_transport/", "urllib3/", "http/", "socket.py", "ssl.py"),
    ),
    ("confluent-kafka producer/consumer", ("confluent_kafka/",)),
    ("TensorFlow / Keras / numpy", ("tensorflow/", "keras/", "numpy/", "tf_keras/")),
    ("JSON (json, orjson)", ("json/", "orjson")),
    ("event validation", ("event_schema.py", "times.py")),
    ("pipelines (streamdl)", ("streamdl/", "streams/", "connectors/", "models/")),
    ("logging, metrics", ("logging/", "prometheus_client/")),
    ("threads, queues", ("threading.py", "concurrent/", "queue.py")),
)
"""The area of a sample is that of its innermost frame (where the CPU was), by the frame's file."""

OURS = ("streamdl/", "streams/", "connectors/", "models/", "bench/")


def frame_parts(frame: str) -> tuple[str, str]:
    """``(function, file)`` of one py-spy frame such as ``encode (streamdl/connectors/es_bulk.py:34)``."""
    m = _FRAME.match(frame)
    return (m["func"], m["file"]) if m else (frame, "")


class Profile:
    """``py-spy record`` of ``pid`` from :meth:`start` until :meth:`stop`, then :meth:`tables`."""

    def __init__(self, out: Path, rate: int = 100) -> None:
        self.out, self.rate = out, rate
        self.proc: subprocess.Popen | None = None
        self.stacks: Counter[str] = Counter()

    @staticmethod
    def available() -> bool:
        return (
            shutil.which("py-spy", path=str(Path(sys.executable).parent)) is not None
            or shutil.which("py-spy") is not None
        )

    def start(self, pid: int) -> Profile:
        exe = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or "py-spy"
        self.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = [exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw", "--output", str(self.out)]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        return self

    def stop(self) -> None:
        """Stop sampling (py-spy writes its file on SIGINT) and read the stacks."""
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGINT)
        _, err = self.proc.communicate(timeout=60)
        if not self.out.exists():
            raise RuntimeError(f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}")
        for line in self.out.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if stack:
                self.stacks[stack] += int(count)

    @property
    def samples(self) -> int:
        return sum(self.stacks.values())

    def by_stage(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            funcs = {frame_parts(f)[0] for f in stack.split(";")}
            out[next((name for name, fs in STAGES if funcs & set(fs)), "event loop (Faust agent, consumer)")] += n
        return dict(out.most_common())

    def by_area(self) -> dict[str, int]:
        out: Counter[str] = Counter()
        for stack, n in self.stacks.items():
            func, file = frame_parts(stack.split(";")[-1])
            if func.rpartition(".")[2] in WAITING:
                out["blocked: select, socket read, queue or flush wait"] += n
                continue
            out[
                next(
                    (name for name, keys in AREAS if any(k in file for k in keys)), "other (C extensions, interpreter)"
                )
            ] += n
        return dict(out.most_common())

    def top(self, n: int = 15, inclusive: bool = False) -> list[tuple[str, int]]:
        """The ``n`` functions with the most samples: where the CPU was (self), or, of the product's own
        functions, those the CPU was under (inclusive)."""
        out: Counter[str] = Counter()
        for stack, count in self.stacks.items():
            frames = stack.split(";")
            names = {_name(f) for f in frames if _ours(f)} if inclusive else {_name(frames[-1])}
            for name in names:
                out[name] += count
        return out.most_common(n)

    def tables(self, title: str, n: int = 15) -> str:
        total = max(self.samples, 1)
        lines = [f"Profile of {title}: py-spy, {self.samples} samples of running threads at {self.rate} Hz.", ""]
        lines += ["| thread (by the stage on the stack) | share of CPU samples |", "| --- | ---: |"]
        lines += [f"| {k} | {100 * v / total:.1f} % |" for k, v in self.by_stage().items()]
        lines += ["", "| area (innermost frame) | share of CPU samples |", "| --- | ---: |"]
        lines += [f"| {k} | {100 * v / total:.1f} % |" for k, v in self.by_area().items()]
        lines += ["", f"Top {n} functions: self (where the CPU was), and the product's functions inclusive", ""]
        lines += ["| # | self | function | inclusive | function |", "| ---: | ---: | --- | ---: | --- |"]
        for i, ((sname, s), (iname, inc)) in enumerate(zip(self.top(n), self.top(n, inclusive=True)), 1):
            lines.append(f"| {i} | {100 * s / total:.1f} % | `{sname}` | {100 * inc / total:.1f} % | `{iname}` |")
        return "\n".join(lines)


def _ours(frame: str) -> bool:
    func, file = frame_parts(frame)
    entry = func in ("<module>", "main", "cmd_worker", "run_worker", "run")  # the process's entry points
    return any(k in file for k in OURS) and "site-packages" not in file and not entry


def _name(frame: str) -> str:
    func, file = frame_parts(frame)
    parts = file.split("/")
    return f"{func} ({'/'.join(parts[-2:])})" if file else func
