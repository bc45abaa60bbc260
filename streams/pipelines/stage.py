"""The stage contract every pipeline implements and every driver (Faust agent, reindex, benchmark) calls.

Lifecycle, each step called once unless said otherwise::

    setup()                   connect, load the model, create indices; raises when a setting or a service is wrong
    compute(batch)    many    CPU only, no I/O: decode or validate, one model call, documents and outputs
    index_documents(c) many   Elasticsearch: the batch's documents (and what they need: neighbour lookups)
                              and the alerts the rules raise on them; returns once they are acknowledged,
                              refused documents made dead letters (no alert)
    publish(computed) many    the sinks: returns only when every output is acknowledged; raises when one is not
    stop()                    from another thread at shutdown: a step stuck in retries gives up
    close()                   flush what is in flight and close the clients

A batch goes through ``compute``, ``index_documents`` and ``publish`` in that order, and the batches go through each
step in order, one at a time per step; the steps of different batches may overlap (three threads): while
batch N publishes, N+1 indexes and N+2 computes. So Elasticsearch sees batch N's documents before N+1's
(neighbour lookups of N+1 find them), and the rules see the batches in order. ``write`` is both I/O steps
of one batch, for drivers without overlap. No step raises for bad input: a message a stage refuses becomes
a :class:`~streamdl.records.DeadLetter` with its reason.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field

from streamdl.records import DeadLetter, Document, InMessage
from streamdl.streams.pipelines.alerts import AlertBatch, Scored


@dataclass
class Computed:
    """What ``compute`` hands to ``write`` for one micro-batch."""

    size: int
    """Messages in the batch (dead letters included)."""
    documents: list[Document] = field(default_factory=list)
    predictions: dict[str, bytes] = field(default_factory=dict)
    """The JSON prediction of each document id, for the predictions topic."""
    messages: dict[str, InMessage] = field(default_factory=dict)
    """The source message of each document id."""
    scored: dict[str, Scored] = field(default_factory=dict)
    """What the alert rules look at, by document id."""
    dead: list[DeadLetter] = field(default_factory=list)
    shadow: list[Document] = field(default_factory=list)
    """The shadow version's prediction of each image (:mod:`~streamdl.streams.pipelines.roles`): never served."""
    shadow_predictions: dict[str, bytes] = field(default_factory=dict)
    """The JSON shadow prediction of each image id, for the shadow predictions topic."""
    alerts: AlertBatch = field(default_factory=AlertBatch)
    """The alerts ``index_documents`` raised on the indexed documents and claimed: what ``publish`` publishes."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time spent per step (``decode``, ``model``, ...), for the metrics and the batch log line."""

    def refuse(self, message: InMessage, code: str, reason: str, stage: str) -> None:
        """Make ``message`` a dead letter."""
        self.dead.append(DeadLetter(message, code, reason, stage))

    @classmethod
    def merged(cls, parts: Sequence[Computed]) -> Computed:
        """Consecutive computed batches as one, in order (group commit: one index step, one publish); their
        documents' ids must differ. One part is returned as it is."""
        if len(parts) == 1:
            return parts[0]
        out = cls(size=0)
        for part in parts:
            out.size += part.size
            out.documents += part.documents
            out.predictions.update(part.predictions)
            out.messages.update(part.messages)
            out.scored.update(part.scored)
            out.dead += part.dead
            out.shadow += part.shadow
            out.shadow_predictions.update(part.shadow_predictions)
            out.alerts.extend(part.alerts)
            for step, seconds in part.seconds.items():
                out.seconds[step] = out.seconds.get(step, 0.0) + seconds
        return out


@dataclass
class BatchReport:
    """What one micro-batch did."""

    size: int = 0
    indexed: int = 0
    alerts: int = 0
    dead_letters: dict[str, int] = field(default_factory=dict)
    """Dead letters by reason code."""
    seconds: dict[str, float] = field(default_factory=dict)


class Stage(ABC):
    """A pipeline over micro-batches of Kafka messages (see the module docstring for the lifecycle)."""

    @abstractmethod
    def setup(self) -> None:
        """Called once before the first batch: connect, load, create what is missing; fail fast."""

    @abstractmethod
    def compute(self, batch: Sequence[InMessage]) -> Computed:
        """Called per micro-batch on the compute thread: CPU only, no I/O, never raises for bad input."""

    @abstractmethod
    def index_documents(self, computed: Computed) -> Computed:
        """Called per micro-batch on the index thread, in batch order: returns (``computed``, with the documents
        Elasticsearch refused for good made dead letters, and ``alerts`` set) once the documents are acknowledged;
        raises when they are not (the batch is then not committed and comes again)."""

    @abstractmethod
    def publish(self, computed: Computed) -> BatchReport:
        """Called per micro-batch on the publish thread, in batch order, after :meth:`index_documents`: returns
        only when every output is acknowledged; raises when one is not (the batch is then not committed and
        comes again)."""

    def write(self, computed: Computed) -> BatchReport:
        """Both I/O steps of one micro-batch (drivers without overlap)."""
        return self.publish(self.index_documents(computed))

    def process_batch(self, batch: Sequence[InMessage]) -> BatchReport:
        """All steps of one micro-batch (drivers without overlap: reindex, benchmarks, tests)."""
        return self.write(self.compute(batch))

    def stop(self) -> None:  # noqa: B027 - optional hook
        """Called from another thread at shutdown: a write waiting out an outage gives up."""

    @abstractmethod
    def close(self) -> None:
        """Called once at the end: flush what is in flight, close the clients."""
