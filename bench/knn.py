"""``python -m bench.knn``: Elasticsearch HNSW k-NN against exact cosine and against Spark MLlib LSH, as one table.

For each (size, dims): clustered, non-negative ("ReLU-like") vectors with a fixed seed are indexed with
the product's own mapping (``images_index(dims)``: HNSW m=16, ef_construction=100, cosine) through
``ensure_index`` and bulk requests, refreshed and force-merged to one segment (so latency does not
depend on how many segments the bulk load happened to leave). Held-out vectors from the same
distribution are the queries. Ground truth is the exact top-10 by cosine (numpy). Measured:

* ES approximate knn (``k=10``, ``_source: false``) for each ``num_candidates``: recall@10 against
  the exact top-10, client-side wall time per request p50/p99 after a warm-up of 20 other queries;
* Spark MLlib ``BucketedRandomProjectionLSH.approxNearestNeighbors(df, key, 10)`` (the method of
  Databricks' Deep Learning Pipelines demo) on L2-normalised vectors, where Euclidean order equals
  cosine order, for a few bucketLength / numHashTables settings: recall@10 and the wall time of each
  call (one Spark job per query), on fewer queries because each call scans the cached data set;
* the indexing rate (first bulk request to refreshed), the force-merge time, the LSH hashing time.

Every index this creates is named ``bench-knn-*`` and is deleted at the end, also on failure.
"""

from __future__ import annotations

import argparse
import gc
import logging
import math
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from streamdl.connectors.es_bulk import bulk_index
from streamdl.connectors.es_client import ensure_index, es_client
from streamdl.connectors.es_mappings import images_index
from streamdl.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
K = 10
WARMUP = 20
LSH_WARMUP = 3
CLUSTERS = 50
GEN_CHUNK = 10_000
TARGET_RECALL = 0.95
TARGET_SPEEDUP = 10.0


def say(msg: str) -> None:
    print(f"[bench.knn] {msg}", file=sys.stderr, flush=True)


# --- data ----------------------------------------------------------------------------------------


class ClusteredVectors:
    """``CLUSTERS`` gaussian clusters in ``dims`` dimensions, clipped at 0 like ReLU embeddings.

    Cluster centres are N(0, 1) per dimension; cluster sizes are unequal (Dirichlet(2) weights).
    Within a cluster a point is ``centre + A_c u + 0.2 e``: ``u`` is N(0, I) in ``intrinsic_dim``
    dimensions and ``A_c`` a random per-cluster map to ``dims`` dimensions (0.7 per-dimension std), so
    the data has the low intrinsic dimension real image embeddings have; ``e`` is isotropic noise.
    ``intrinsic_dim=0`` gives plain isotropic clusters (std 0.7), in which, at high ``dims``, the 10
    nearest neighbours are hardly nearer than the 100th (a worst case for any approximate method).
    Everything derives from ``seed`` and ``dims``: the same arguments give the same vectors.
    """

    def __init__(self, dims: int, seed: int, intrinsic_dim: int) -> None:
        self.dims, self.seed, self.r = dims, seed, intrinsic_dim
        rng = np.random.default_rng([seed, dims])
        self.centres = rng.standard_normal((CLUSTERS, dims)).astype(np.float32)
        self.weights = rng.dirichlet(np.full(CLUSTERS, 2.0))
        if intrinsic_dim:
            self.maps = (
                rng.standard_normal((CLUSTERS, intrinsic_dim, dims)) * (0.7 / math.sqrt(intrinsic_dim))
            ).astype(np.float32)
            self.noise = 0.2
        else:
            self.maps, self.noise = None, 0.7

    def chunks(self, n: int, stream: int) -> Iterator[np.ndarray]:
        """``n`` vectors (float32) in chunks of at most ``GEN_CHUNK``; ``stream`` picks an independent sample."""
        rng = np.random.default_rng([self.seed, self.dims, stream])
        for start in range(0, n, GEN_CHUNK):
            m = min(GEN_CHUNK, n - start)
            labels = rng.choice(CLUSTERS, size=m, p=self.weights)
            x = self.centres[labels]
            if self.maps is not None:
                u = rng.standard_normal((m, self.r), dtype=np.float32)
                for c in np.unique(labels):
                    rows = labels == c
                    x[rows] += u[rows] @ self.maps[c]
            x += rng.standard_normal((m, self.dims), dtype=np.float32) * self.noise
            np.maximum(x, 0, out=x)
            zero = ~x.any(axis=1)  # cosine needs a non-zero vector; vanishingly rare at these sizes
            x[zero, 0] = 1.0
            yield x

    def sample(self, n: int, stream: int) -> np.ndarray:
        out = np.empty((n, self.dims), dtype=np.float32)
        pos = 0
        for chunk in self.chunks(n, stream):
            out[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        return out


def normalised(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def exact_top_k(base_n: np.ndarray, queries_n: np.ndarray, k: int = K, block: int = 50) -> np.ndarray:
    """Ids of the exact top-``k`` by cosine (both inputs L2-normalised), best first."""
    out = np.empty((len(queries_n), k), dtype=np.int64)
    for s in range(0, len(queries_n), block):
        sims = queries_n[s : s + block] @ base_n.T
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, part, axis=1), axis=1)
        out[s : s + block] = np.take_along_axis(part, order, axis=1)
    return out


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f[:K]) & set(t.tolist())) / K for f, t in zip(found, truth)]))


# --- results -------------------------------------------------------------------------------------


@dataclass
class Row:
    size: int
    dims: int
    method: str
    kind: str  # "es" or "lsh"
    recall: float | None
    p50: float | None
    p99: float | None
    queries: int
    note: str = ""
    num_candidates: int = 0  # ES rows


@dataclass
class Case:
    size: int
    dims: int
    rows: list[Row] = field(default_factory=list)
    index_rate: float = 0.0
    index_seconds: float = 0.0
    merge_seconds: float = 0.0
    segments_before: int = 0
    segments_after: int = 0
    lsh_note: str = ""


def pct(ms: list[float]) -> tuple[float, float]:
    a = np.asarray(ms)
    return float(np.percentile(a, 50)), float(np.percentile(a, 99))


# --- Elasticsearch -------------------------------------------------------------------------------


def segment_count(es, index: str) -> int:
    shards = es.indices.segments(index=index)["indices"][index]["shards"]
    return sum(len(copy["segments"]) for copies in shards.values() for copy in copies)


def es_case(
    es,
    tag: str,
    case: Case,
    base: np.ndarray,
    queries: np.ndarray,
    warmup: np.ndarray,
    truth: np.ndarray,
    candidates: list[int],
    index_type: str = "hnsw",
) -> None:
    alias = f"bench-knn-{tag}-{case.size}x{case.dims}-{index_type.replace('_', '')}"
    index = ensure_index(es, alias, "v1", images_index(case.dims, index_type=index_type))
    try:
        _es_measure(es, alias, index, case, base, queries, warmup, truth, candidates, index_type)
    finally:
        es.options(ignore_status=404).indices.delete(index=index)
        say(f"{case.size}x{case.dims}: deleted {index}")


def _es_measure(
    es,
    alias: str,
    index: str,
    case: Case,
    base: np.ndarray,
    queries: np.ndarray,
    warmup: np.ndarray,
    truth: np.ndarray,
    candidates: list[int],
    index_type: str = "hnsw",
) -> None:
    n, dims = case.size, case.dims
    per_bulk = max(100, min(5000, 4_000_000 // (dims * 11)))  # ~4 MB of JSON per request
    say(f"{n}x{dims}: indexing {n} vectors into {index} ({per_bulk} per bulk request, 2 requests in flight)")

    def send(start: int) -> int:
        docs = [
            (str(i), {"image_id": str(i), "embedding": base[i].tolist()})
            for i in range(start, min(n, start + per_bulk))
        ]
        rejected = bulk_index(es, index, docs)
        if rejected:
            raise RuntimeError(f"{len(rejected)} documents rejected, e.g. {rejected[0]}")
        return len(docs)

    t0 = time.perf_counter()
    done, last = 0, t0
    with ThreadPoolExecutor(max_workers=2) as pool:
        for sent in pool.map(send, range(0, n, per_bulk)):
            done += sent
            if time.perf_counter() - last > 10 or done == n:
                last = time.perf_counter()
                say(f"{n}x{dims}: indexed {done}/{n} ({done / (last - t0):.0f}/s)")
    es.indices.refresh(index=index)
    case.index_seconds = time.perf_counter() - t0
    case.index_rate = n / case.index_seconds
    count = es.count(index=index)["count"]
    if count != n:
        raise RuntimeError(f"{index} holds {count} documents, expected {n}")
    case.segments_before = segment_count(es, index)
    say(f"{n}x{dims}: {case.index_rate:.0f} docs/s to searchable; force-merging {case.segments_before} segments to 1")
    t0 = time.perf_counter()
    es.options(request_timeout=1800).indices.forcemerge(index=index, max_num_segments=1, wait_for_completion=True)
    es.indices.refresh(index=index)
    case.merge_seconds = time.perf_counter() - t0
    case.segments_after = segment_count(es, index)
    say(f"{n}x{dims}: force merge took {case.merge_seconds:.1f}s, {case.segments_after} segment(s)")

    took: list[float] = []

    def search(q: np.ndarray, nc: int) -> list[int]:
        resp = es.search(
            index=alias,
            knn={"field": "embedding", "query_vector": q.tolist(), "k": K, "num_candidates": nc},
            source=False,
            size=K,
            filter_path="took,hits.hits._id",
        )
        took.append(resp["took"])
        return [int(h["_id"]) for h in resp.get("hits", {}).get("hits", [])]

    for nc in candidates:
        if nc < K:
            say(f"{n}x{dims}: skipping num_candidates={nc} (must be >= k={K})")
            continue
        for q in warmup:
            search(q, nc)
        found, ms = [], []
        took.clear()
        for q in queries:
            t = time.perf_counter()
            found.append(search(q, nc))
            ms.append(1000 * (time.perf_counter() - t))
        p50, p99 = pct(ms)
        row = Row(
            n,
            dims,
            f"ES {index_type} nc={nc}",
            "es",
            recall(found, truth),
            p50,
            p99,
            len(queries),
            f"server `took` p50 {np.percentile(took, 50):.0f} ms",
            num_candidates=nc,
        )
        case.rows.append(row)
        say(
            f"{n}x{dims}: ES nc={nc}: recall@10 {row.recall:.3f}, p50 {p50:.1f} ms, p99 {p99:.1f} ms "
            f"({len(queries)} queries)"
        )


# --- Spark LSH -----------------------------------------------------------------------------------


class SparkLSH:
    """One local[2] Spark session for all sizes; started on first use."""

    def __init__(self, driver_memory: str) -> None:
        self.driver_memory = driver_memory
        self.spark = None

    def session(self):
        if self.spark is None:
            from pyspark.sql import SparkSession

            say(f"starting Spark (local[2], driver memory {self.driver_memory})")
            self.spark = (
                SparkSession.builder.master("local[2]")
                .appName("bench-knn")
                .config("spark.driver.memory", self.driver_memory)
                .config("spark.ui.enabled", "false")
                .config("spark.ui.showConsoleProgress", "false")
                .config("spark.sql.shuffle.partitions", "2")
                .getOrCreate()
            )
            self.spark.sparkContext.setLogLevel("ERROR")
        return self.spark

    def stop(self) -> None:
        if self.spark is not None:
            self.spark.stop()
            self.spark = None

    def run(
        self,
        case: Case,
        base_n: np.ndarray,
        queries_n: np.ndarray,
        warmup_n: np.ndarray,
        truth: np.ndarray,
        settings: list[tuple[float, int]],
    ) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        from pyspark.ml.feature import BucketedRandomProjectionLSH
        from pyspark.ml.functions import array_to_vector
        from pyspark.ml.linalg import Vectors

        n, dims = case.size, case.dims
        spark = self.session()
        with tempfile.TemporaryDirectory(prefix="bench-knn-") as tmp:
            path = f"{tmp}/vectors.parquet"
            t0 = time.perf_counter()
            with pq.ParquetWriter(path, pa.schema([("id", pa.int64()), ("v", pa.list_(pa.float32(), dims))])) as writer:
                for s in range(0, n, GEN_CHUNK):
                    chunk = base_n[s : s + GEN_CHUNK]
                    writer.write_table(
                        pa.table(
                            {
                                "id": pa.array(np.arange(s, s + len(chunk))),
                                "v": pa.FixedSizeListArray.from_arrays(pa.array(chunk.ravel()), dims),
                            }
                        )
                    )
            df = spark.read.parquet(path).select("id", array_to_vector("v").alias("features")).repartition(2).cache()
            df.count()
            say(f"{n}x{dims}: Spark data set loaded and cached in {time.perf_counter() - t0:.1f}s")
            try:
                for spread, tables in settings:
                    bucket = spread / math.sqrt(dims)
                    label = f"LSH (bucketLength={bucket:.3g}, numHashTables={tables})"
                    t0 = time.perf_counter()
                    model = BucketedRandomProjectionLSH(
                        inputCol="features", outputCol="hashes", bucketLength=bucket, numHashTables=tables, seed=7
                    ).fit(df)
                    hashed = model.transform(df).cache()
                    hashed.count()
                    hash_s = time.perf_counter() - t0
                    say(
                        f"{n}x{dims}: {label}: hashed in {hash_s:.1f}s; "
                        f"{LSH_WARMUP} warm-up + {len(queries_n)} timed queries"
                    )

                    def nearest(q: np.ndarray, model=model, hashed=hashed) -> list[int]:
                        rows = (
                            model.approxNearestNeighbors(hashed, Vectors.dense(q.astype(np.float64)), K)
                            .select("id")
                            .collect()
                        )
                        return [r["id"] for r in rows]

                    share = bucket_share(base_n, queries_n, bucket, tables, seed=7)
                    for q in warmup_n[:LSH_WARMUP]:
                        nearest(q)
                    found, ms = [], []
                    for i, q in enumerate(queries_n):
                        t = time.perf_counter()
                        found.append(nearest(q))
                        ms.append(1000 * (time.perf_counter() - t))
                        if (i + 1) % 10 == 0:
                            say(f"{n}x{dims}: {label}: {i + 1}/{len(queries_n)} queries, last {ms[-1]:.0f} ms")
                    hashed.unpersist()
                    p50, p99 = pct(ms)
                    short = sum(len(f) < K for f in found)
                    note = (
                        f"hashing {hash_s:.0f}s; "
                        f"~{100 * share:.0f}% of the vectors share a bucket with the query (scanned)"
                        + (f"; {short} queries got < {K} results" if short else "")
                    )
                    row = Row(
                        n, dims, label, "lsh", recall(found, truth[: len(queries_n)]), p50, p99, len(queries_n), note
                    )
                    case.rows.append(row)
                    say(f"{n}x{dims}: {label}: recall@10 {row.recall:.3f}, p50 {p50:.0f} ms, p99 {p99:.0f} ms")
            finally:
                df.unpersist()


def bucket_share(base_n: np.ndarray, queries_n: np.ndarray, bucket: float, tables: int, seed: int) -> float:
    """Estimated fraction of the data in the query's bucket in at least one table (what a single-probe query scans).

    Computed here with random unit projections of the same distribution as Spark's (not Spark's own ones):
    Spark's BucketedRandomProjectionLSH hashes with one projection per table, ``floor(x . r / bucketLength)``,
    and a candidate is any vector that equals the query's hash in any table (OR over tables, no AND).
    """
    rng = np.random.default_rng(seed)
    r = rng.standard_normal((base_n.shape[1], tables)).astype(np.float32)
    r /= np.linalg.norm(r, axis=0, keepdims=True)
    hb = np.floor(base_n @ r / bucket)
    hq = np.floor(queries_n @ r / bucket)
    return float(np.mean([(hb == h).any(axis=1).mean() for h in hq]))


# --- the target ----------------------------------------------------------------------------------


def target_check(case: Case) -> tuple[bool | None, str]:
    """``recall@10 >= 0.95`` for ES at a p50 latency >= 10x below LSH at the same or a higher recall.

    ES point: the smallest ``num_candidates`` with recall >= 0.95 (latency grows with it; picking the
    fastest measured p50 instead would pick noise). LSH point: the fastest LSH setting
    whose recall is at least that, i.e. >= 0.95 too (the same recall level); if no LSH setting gets there,
    LSH cannot match ES's recall at any measured latency, and the comparison is with its best-recall
    setting. Also given, as the most conservative number: the ratio to the fastest LSH setting at any
    recall. None: not checkable (no LSH measured).
    """
    es = sorted((r for r in case.rows if r.kind == "es"), key=lambda r: r.num_candidates)
    lsh = sorted((r for r in case.rows if r.kind == "lsh" and r.recall is not None), key=lambda r: r.p50)
    where = f"{case.size}x{case.dims}"
    if not es:
        return False, f"{where}: not met: no ES measurement"
    ok = [r for r in es if r.recall >= TARGET_RECALL]
    if not ok:
        best = max(es, key=lambda r: r.recall)
        return (
            False,
            f"{where}: not met: no num_candidates reaches recall@10 {TARGET_RECALL} (best {best.method}: "
            f"{best.recall:.3f})",
        )
    e = ok[0]
    es_text = f"{e.method} recall {e.recall:.3f} p50 {e.p50:.1f} ms (p99 {e.p99:.1f})"
    if not lsh:
        return None, f"{where}: ES reaches it ({es_text}); no LSH measured to compare"
    same = [r for r in lsh if r.recall >= TARGET_RECALL]
    lr = same[0] if same else max(lsh, key=lambda r: r.recall)
    ratio, ratio99 = lr.p50 / e.p50, lr.p99 / e.p99
    met = ratio >= TARGET_SPEEDUP
    text = (
        f"{where}: {'met' if met else 'not met'}: {es_text} vs {lr.method} recall {lr.recall:.3f} p50 {lr.p50:.0f} ms "
        f"(p99 {lr.p99:.0f}){'' if same else ' (no LSH setting reaches 0.95; its best recall)'}: "
        f"**{ratio:.0f}x** lower p50, {ratio99:.0f}x lower p99"
    )
    fastest = lsh[0]
    if fastest is not lr:
        text += (
            f"; vs the fastest LSH setting at any recall ({fastest.recall:.3f}, p50 {fastest.p50:.0f} ms): "
            f"{fastest.p50 / e.p50:.0f}x"
        )
    return met, text


# --- output --------------------------------------------------------------------------------------


def fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def render(cases: list[Case], args: argparse.Namespace, lsh_version: str | None) -> str:
    lines = [
        f"k-NN over {CLUSTERS}-cluster ReLU-like vectors (intrinsic dim {args.intrinsic_dim or 'full (isotropic)'}, "
        f"seed {args.seed}); "
        f"ES: product mapping (HNSW m=16, ef_construction=100, cosine; the index type of each row), 1 shard, "
        f"**force-merged to 1 segment**, "
        f"{args.queries} held-out queries after {WARMUP} warm-up; "
        + (
            f"LSH: Spark MLlib {lsh_version} BucketedRandomProjectionLSH, local[2], driver {args.driver_memory}, "
            f"L2-normalised vectors, {args.lsh_queries} queries after {LSH_WARMUP} warm-up (one Spark job each). "
            if lsh_version
            else "LSH skipped. "
        )
        + "Latency: client-side wall time per request.",
        "",
        "| size | dims | method | recall@10 | p50 ms | p99 ms | queries | notes |",
        "| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |",
    ]
    for c in cases:
        for r in c.rows:
            d = 1 if r.kind == "es" else 0
            lines.append(
                f"| {r.size} | {r.dims} | {r.method} | {fmt(r.recall, 3)} | {fmt(r.p50, d)} | {fmt(r.p99, d)} | "
                f"{r.queries or '-'} | {r.note} |"
            )
    lines += [
        "",
        "| size | dims | ES indexing (docs/s, bulk to refreshed) | segments before merge "
        "| force merge to 1 segment (s) |",
        "| ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cases:
        lines.append(
            f"| {c.size} | {c.dims} | {c.index_rate:.0f} ({c.index_seconds:.0f} s) | {c.segments_before} | "
            f"{c.merge_seconds:.1f} |"
        )
    lines += [
        "",
        f"Target: recall@10 >= {TARGET_RECALL} at latency >= {TARGET_SPEEDUP:.0f}x below LSH at same or higher recall "
        f"(ES: smallest num_candidates with recall >= {TARGET_RECALL}; "
        f"LSH: fastest setting with recall >= {TARGET_RECALL}; "
        "compared on p50):",
        "",
    ]
    verdicts = []
    for c in cases:
        met, text = target_check(c)
        verdicts.append(met)
        lines.append(f"- {text}")
    checked = [v for v in verdicts if v is not None]
    if not checked:
        overall = "not checked (no LSH measurement)" if all(v is None for v in verdicts) else "not met"
        if any(v is False for v in verdicts):
            overall = "not met"
    else:
        overall = "met" if all(checked) and all(v is not False for v in verdicts) else "not met"
        unchecked = [f"{c.size}x{c.dims}" for c, v in zip(cases, verdicts) if v is None]
        if unchecked:
            overall += f" (where LSH was measured; not checkable at {', '.join(unchecked)})"
    lines += ["", f"**Target: {overall}.**"]
    return "\n".join(lines)


def ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def lsh_settings(text: str) -> list[tuple[float, int]]:
    out = []
    for item in text.split(","):
        spread, tables = item.split(":")
        out.append((float(spread), int(tables)))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.knn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=ints, default=ints("10000,100000"), help="indexed vectors, comma-separated")
    parser.add_argument("--dims", type=ints, default=ints("64,1280"), help="dimensions, comma-separated")
    parser.add_argument("--num-candidates", type=ints, default=ints("10,50,100,200"), help="ES num_candidates values")
    parser.add_argument("--queries", type=int, default=200, help="held-out queries for ES")
    parser.add_argument(
        "--lsh-queries", type=int, default=30, help="held-out queries for LSH (the first ones of the ES set)"
    )
    parser.add_argument(
        "--lsh",
        type=lsh_settings,
        default=lsh_settings("2:3,0.5:5"),
        help="LSH settings as SPREAD:TABLES, comma-separated; bucketLength = SPREAD / sqrt(dims) "
        "(the spread of a unit vector's projection on a random direction is about 1/sqrt(dims))",
    )
    parser.add_argument(
        "--lsh-max-cells",
        type=float,
        default=150e6,
        help="skip LSH where size*dims exceeds this (Spark's per-query scan of the cached data gets too slow)",
    )
    parser.add_argument(
        "--index-types",
        type=lambda v: [t.strip() for t in v.split(",") if t.strip()],
        default=["hnsw"],
        help="dense_vector index_options types to compare, comma-separated (hnsw, int8_hnsw, bbq_hnsw)",
    )
    parser.add_argument("--skip-lsh", action="store_true")
    parser.add_argument("--driver-memory", default="4g")
    parser.add_argument(
        "--intrinsic-dim", type=int, default=16, help="latent dimension of each cluster (0: isotropic clusters)"
    )
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "knn.md")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    logging.getLogger("elastic_transport").setLevel(logging.ERROR)

    settings = load_settings({"state_dir": ROOT / ".streamdl"}, env_file=None)
    es = es_client(settings)
    if not es.options(ignore_status=[404, 503]).ping():
        from streamdl.infra.stack import LocalStack

        LocalStack(settings, say=lambda m: print(f"[stack] {m}", file=sys.stderr)).up()
    tag = uuid.uuid4().hex[:6]
    lsh = None if args.skip_lsh else SparkLSH(args.driver_memory)
    lsh_version = None
    if lsh is not None:
        import pyspark

        lsh_version = pyspark.__version__
    cases: list[Case] = []
    try:
        for dims in args.dims:
            data = ClusteredVectors(dims, args.seed, args.intrinsic_dim)
            queries = data.sample(args.queries, stream=1)
            warmup = data.sample(WARMUP, stream=2)
            for size in args.sizes:
                case = Case(size, dims)
                cases.append(case)
                say(f"{size}x{dims}: generating vectors (seed {args.seed})")
                base = data.sample(size, stream=0)
                base_n, queries_n = normalised(base), normalised(queries)
                say(f"{size}x{dims}: exact top-{K} by cosine for {len(queries)} queries")
                truth = exact_top_k(base_n, queries_n)
                for index_type in args.index_types:
                    es_case(es, tag, case, base, queries, warmup, truth, args.num_candidates, index_type)
                del base
                gc.collect()
                if lsh is not None:
                    if size * dims > args.lsh_max_cells:
                        case.rows.append(
                            Row(
                                size,
                                dims,
                                "LSH: not run",
                                "lsh",
                                None,
                                None,
                                None,
                                0,
                                f"size x dims > --lsh-max-cells {args.lsh_max_cells:.0f}",
                            )
                        )
                    else:
                        try:
                            lsh.run(case, base_n, queries_n[: args.lsh_queries], normalised(warmup), truth, args.lsh)
                        except Exception as exc:  # noqa: BLE001 - reported in the table instead of faked
                            say(f"{size}x{dims}: LSH failed: {type(exc).__name__}: {str(exc)[:300]}")
                            case.rows.append(
                                Row(
                                    size,
                                    dims,
                                    "LSH: failed",
                                    "lsh",
                                    None,
                                    None,
                                    None,
                                    0,
                                    f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}",
                                )
                            )
                            lsh.stop()
                del base_n
                gc.collect()
    finally:
        if lsh is not None:
            lsh.stop()
    table = render(cases, args, lsh_version)
    print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    command = "python -m bench.knn " + " ".join(sys.argv[1:] if argv is None else argv)
    args.out.write_text(f"<!-- {command.strip()}, {time.strftime('%Y-%m-%d %H:%M')} -->\n{table}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
