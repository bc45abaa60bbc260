"""``python -m bench.neighbours``: the cost of the images agent's neighbour lookups, per form of the query.

For each image of a micro-batch the images agent looks up its nearest neighbours in the index
(:class:`~streamdl.streams.pipelines.neighbours.NeighbourCheck`: one multi-search per batch). This measures,
in one run on the local Elasticsearch, an index of ``--size`` clustered vectors (``bench.knn``'s data) and
batches of ``--batch`` lookups of vectors that are in the index (as when a message comes again):

- **filtered** (before the seventh session): ``k`` neighbours with an ``ids`` filter leaving the image out,
  ``_source`` read for the image id;
- **NeighbourCheck** (now): ``k + 1`` neighbours, no filter, no ``_source``; the image itself dropped in Python.

Per form: Elasticsearch's CPU per lookup (from /proc), wall time per batch, and whether both forms found the
same neighbours. Rounds alternate the forms. The table goes to ``bench/results/neighbours.md``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from bench.cpu import cpu_of
from bench.knn import ClusteredVectors
from streamdl.connectors.es_bulk import bulk_index
from streamdl.connectors.es_client import ensure_index, es_client
from streamdl.connectors.es_mappings import images_index
from streamdl.infra.stack import LocalStack
from streamdl.records import Document
from streamdl.settings import Settings, load_settings
from streamdl.streams.pipelines.neighbours import NeighbourCheck

ROOT = Path(__file__).resolve().parent.parent
Lookup = Callable[[Sequence[Document]], list[list[str]]]


def say(msg: str) -> None:
    print(f"[bench.neighbours] {msg}", file=sys.stderr, flush=True)


def filtered(settings: Settings, es, alias: str) -> Lookup:
    """The lookups as they were: an ``ids`` filter leaves the image out, ``_source`` gives the image id."""
    k = settings.neighbour_k

    def lookup(docs: Sequence[Document]) -> list[list[str]]:
        searches: list[dict] = []
        for doc in docs:
            knn = {
                "field": "embedding",
                "query_vector": doc.body["embedding"],
                "k": k,
                "num_candidates": max(20, 4 * k),
                "filter": {"bool": {"must_not": [{"ids": {"values": [doc.id]}}]}},
            }
            searches += [{"index": alias}, {"knn": knn, "size": k, "_source": ["image_id"]}]
        responses = es.msearch(searches=searches)["responses"]
        return [[h["_source"]["image_id"] for h in r["hits"]["hits"]] for r in responses]

    return lookup


def product(settings: Settings, es, alias: str) -> Lookup:
    """The product's :class:`NeighbourCheck`, every lookup made a finding (threshold -1) to read its neighbours."""
    check = NeighbourCheck(settings.model_copy(update={"near_duplicate_threshold": -1.0}), es, alias)

    def lookup(docs: Sequence[Document]) -> list[list[str]]:
        found = check.findings(docs)
        return [[n["image_id"] for n in found[d.id]["near_duplicate"]["neighbours"]] for d in docs]

    return lookup


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=10_000, help="vectors in the index")
    parser.add_argument("--dims", type=int, default=64, help="vector size (digits-cnn: 64; MobileNetV2: 1280)")
    parser.add_argument("--batch", type=int, default=64, help="lookups per multi-search (the images batch size)")
    parser.add_argument("--batches", type=int, default=20, help="batches per form and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "neighbours.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    settings = load_settings({"state_dir": ROOT / ".streamdl"}, env_file=None)
    local = LocalStack(settings, say=lambda m: print(f"[stack] {m}", file=sys.stderr))
    local.up()
    es, pid = es_client(settings), local.service("elasticsearch").pid()

    alias = f"bench-neighbours-{uuid.uuid4().hex[:6]}"
    index = ensure_index(es, alias, "v1", images_index(args.dims))
    try:
        vectors = ClusteredVectors(args.dims, seed=7, intrinsic_dim=8).sample(args.size, stream=0)
        ids = [f"img-{i}" for i in range(args.size)]
        say(f"indexing {args.size} vectors of {args.dims}")
        for start in range(0, args.size, 500):  # bulks of 500: 1,280-dim vectors make large requests
            part = zip(ids[start : start + 500], vectors[start : start + 500])
            bulk_index(es, alias, [(i, {"image_id": i, "embedding": v.tolist()}) for i, v in part])
        es.indices.refresh(index=alias)
        es.indices.forcemerge(index=alias, max_num_segments=1)
        rng = np.random.default_rng(1)
        picks = rng.choice(args.size, size=(args.batches, args.batch), replace=False)
        batches = [[Document(ids[j], {"embedding": vectors[j].tolist()}) for j in row] for row in picks]
        forms = {"filtered by id, _source (before)": filtered, "NeighbourCheck: k + 1, no filter (now)": product}
        lookups = {name: make(settings, es, alias) for name, make in forms.items()}
        cpu: dict[str, list[float]] = {name: [] for name in forms}
        wall: dict[str, list[float]] = {name: [] for name in forms}
        found: dict[str, list[list[str]]] = {}
        for name, lookup in lookups.items():  # warm-up, and the neighbours each form finds
            found[name] = [n for b in batches for n in lookup(b)]
        for r in range(args.rounds):
            for name, lookup in lookups.items():
                c0 = cpu_of(pid)
                for b in batches:
                    t = time.perf_counter()
                    lookup(b)
                    wall[name].append(time.perf_counter() - t)
                cpu[name].append((cpu_of(pid) - c0) / (args.batches * args.batch))
            say(f"round {r + 1}: " + ", ".join(f"{n.split(':')[0]} {1000 * cpu[n][-1]:.3f} ms CPU" for n in forms))
    finally:
        es.options(ignore_status=404).indices.delete(index=index)

    before, now = list(forms)
    same = sum(len(set(a) & set(b)) for a, b in zip(found[before], found[now]))
    total = sum(len(a) for a in found[before])
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"<!-- python -m bench.neighbours, {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} UTC -->",
        f"Neighbour lookups ({settings.neighbour_k} neighbours, batches of {args.batch}) in an index of {args.size} "
        f"vectors of {args.dims} dims, {args.rounds} rounds in turns; {os.cpu_count()} cores, load average {load} "
        "at the end, this Elasticsearch on the same cores",
        "",
        "| form | Elasticsearch CPU per lookup (ms), by round | wall per batch (ms, median) | vs before |",
        "| --- | ---: | ---: | ---: |",
    ]
    base = statistics.mean(cpu[before])
    for name in forms:
        per_round = " / ".join(f"{1000 * c:.3f}" for c in cpu[name])
        lines.append(
            f"| {name} | {per_round} | {1000 * statistics.median(wall[name]):.1f} | "
            f"{statistics.mean(cpu[name]) / base:.2f} |"
        )
    lines += ["", f"Same neighbours found by both forms: {same} of {total} ({same / total:.1%})."]
    table = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(table, encoding="utf-8")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
