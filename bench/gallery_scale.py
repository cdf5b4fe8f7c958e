"""Gallery at scale: 1M synthetic 512-d identities, top-5 search latency, accuracy, memory,
on the built-in backend and (``--backend milvus``) on a Milvus server, in one run.

Templates are uniform on the unit sphere; each probe is an enrolled template plus Gaussian
noise scaled so that its cosine similarity with the template is about 0.6 (a realistic
genuine score). Each gallery is built through the public API (``enroll_many``, as users get
it), then searched one probe at a time in a fresh process, so the memory figure is what a
searching siamface process needs. The baseline, measured in the same run, is exact search
(faiss ``IndexFlatIP`` over the raw float32 vectors).

Reported (JSON on stdout), per backend:
  build_s / enroll_per_s   enroll_many of all identities (builtin: SQLite insert + index
                           build, one call; milvus: upserts in --milvus-chunk batches)
  rebuild_index_s      (builtin) rebuilding the derived index from the database alone
  disk_mb              gallery folder size (builtin) / server data folder (milvus)
  search.rss_delta_mb  memory a searching siamface process gains by opening the gallery
  search.p50_ms/p99_ms single-probe top-5 latency, end to end through Gallery.search
  own_in_top5          probes whose own identity is among the 5 results
  recall_at_5/1        overlap with exact search's 5 / same first result
  server_rss_mb        (milvus) resident memory of the server process after the searches
  baseline             the same figures for exact search, and ratios against it
  compare              (``--compare KINDS``) other built-in index kinds at ``--compare-n``

With ``--backend milvus`` a milvus-lite server (tests/milvus_server.py) is started on
127.0.0.1 for the run unless ``--milvus-uri`` points at one. milvus-lite is a pure-Python
single-process server: its figures say what the client, the protocol and the consistency
rules cost, not what a Milvus cluster's C++ query nodes would do (see docs/gallery.md).

The machine is shared: absolute times are noisy; ratios within one run are what matter.

    .venv/bin/python bench/gallery_scale.py                 # 1,000,000 identities, builtin
    .venv/bin/python bench/gallery_scale.py --backend milvus --n 100000 --milvus-probes 200
    .venv/bin/python bench/gallery_scale.py --n 100000 --compare pqfs,ivfpqfs,hnsw,usearch
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FINGERPRINT = "synthetic-512-d"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def unit_rows(x: np.ndarray) -> np.ndarray:
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def make_templates(n: int, d: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=np.float32)
    for i in range(0, n, 100_000):
        m = min(100_000, n - i)
        out[i : i + m] = unit_rows(rng.standard_normal((m, d), dtype=np.float32))
    return out


def make_probes(
    templates: np.ndarray, n_probes: int, genuine: float, seed: int, limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Probes = template + isotropic noise with E[cos] = ``genuine``: with noise variance
    s^2 per dimension, cos ~ 1/sqrt(1 + s^2 d), so s^2 d = 1/genuine^2 - 1."""
    rng = np.random.default_rng(seed + 1)
    n, d = templates.shape
    target = rng.choice(limit or n, size=n_probes, replace=False)
    sigma = np.sqrt((1.0 / genuine**2 - 1.0) / d)
    noise = sigma * rng.standard_normal((n_probes, d), dtype=np.float32)
    return unit_rows(templates[target] + noise), target.astype(np.int64)


def percentiles(lat_s: list[float]) -> dict:
    a = np.asarray(lat_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
    }


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file()) / 1e6


# -- the searching process ------------------------------------------------------------------
def search_worker(gallery: str, probes: str, top_k: int) -> None:
    """Open the gallery fresh, measure memory and single-probe latency, print JSON."""
    from siamface.gallery import Gallery

    q = np.load(probes)
    before = rss_mb()
    t = time.perf_counter()
    g = Gallery.open(gallery)
    g.search(q[0], top_k, fingerprint=FINGERPRINT)  # loads the index file / warms the server
    open_s = time.perf_counter() - t
    after = rss_mb()
    lat, found = [], []
    for v in q:
        t = time.perf_counter()
        r = g.search(v, top_k, fingerprint=FINGERPRINT)[0]
        lat.append(time.perf_counter() - t)
        found.append([int(m.name[1:]) for m in r.matches])
    out = {}
    if g.backend == "builtin":
        # the index alone (no database lookups, no Python result objects): where time goes
        index = g.derived.index
        idx_lat = []
        for v in q:
            t = time.perf_counter()
            index.search(v[None], top_k)
            idx_lat.append(time.perf_counter() - t)
        out["index_only"] = percentiles(idx_lat)
    info = g.info() if g.backend == "builtin" else g._backend_info()
    g.close()
    print(
        json.dumps(
            {
                **out,
                "open_s": round(open_s, 3),
                "rss_before_mb": round(before, 1),
                "rss_after_open_mb": round(after, 1),
                "rss_delta_mb": round(after - before, 1),
                "rss_after_search_mb": round(rss_mb(), 1),
                "index_kind": info["index"]["kind"],
                **percentiles(lat),
                "found": found,
            }
        )
    )


def run_search(spec: str, work: Path, q: np.ndarray, name: str) -> dict:
    np.save(work / f"probes_{name}.npy", q)
    proc = subprocess.run(
        [sys.executable, __file__, "--search-worker", spec, str(work / f"probes_{name}.npy"), "5"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        raise SystemExit(f"search worker failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def accuracy(found: list[list[int]], target: np.ndarray, top_exact: np.ndarray) -> dict:
    n = len(found)
    return {
        "own_in_top5": round(float(np.mean([target[j] in found[j] for j in range(n)])), 4),
        "recall_at_5": round(
            float(np.mean([len(set(found[j]) & set(top_exact[j].tolist())) / 5 for j in range(n)])),
            4,
        ),
        "recall_at_1": round(
            float(np.mean([found[j][:1] == top_exact[j][:1].tolist() for j in range(n)])), 4
        ),
    }


def proc_rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


# -- exact baseline and other index kinds -------------------------------------------------
def exact_baseline(x: np.ndarray, q: np.ndarray, k: int, n_timed: int) -> tuple[dict, np.ndarray]:
    import faiss

    from siamface.gallery.index import faiss_threads

    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, top = index.search(q, k)  # batched, for recall
    timed = {}
    for threads in (1, faiss.omp_get_max_threads()):
        lat = []
        with faiss_threads(threads):  # the gallery searches single probes on one thread
            for v in q[:n_timed]:
                t = time.perf_counter()
                index.search(v[None], k)
                lat.append(time.perf_counter() - t)
        timed[threads] = percentiles(lat)
    return {
        "kind": "exact faiss IndexFlatIP",
        **timed[1],
        "all_threads": timed[faiss.omp_get_max_threads()],
        "timed_probes": n_timed,
    }, top


def compare_kinds(kinds: list[str], x: np.ndarray, args: argparse.Namespace) -> list[dict]:
    """Each index kind in memory at len(x) vectors, searched as the gallery searches it."""
    import faiss

    from siamface.gallery import index as ix
    from siamface.gallery.sync import TRAIN_SAMPLE

    q, target = make_probes(x, min(args.probes, 300), args.genuine, args.seed + 7)
    exact = faiss.IndexFlatIP(x.shape[1])
    exact.add(x)
    _, top_exact = exact.search(q, 5)
    del exact
    rows = []
    for kind in kinds:
        t = time.perf_counter()
        idx = ix.make_index(kind, x.shape[1])
        if idx.needs_training:
            idx.train(x[:: max(1, len(x) // TRAIN_SAMPLE)], len(x))
        idx.add(np.arange(len(x), dtype=np.int64), x)
        build = time.perf_counter() - t
        lat, own, rec = [], 0, 0.0
        for j, v in enumerate(q):
            t = time.perf_counter()
            _, cand = idx.search(v[None], 5)  # candidates re-scored inside (refine kinds)
            lat.append(time.perf_counter() - t)
            best = cand[0][cand[0] >= 0]
            own += int(target[j] in best)
            rec += len(set(best.tolist()) & set(top_exact[j].tolist())) / 5
        rows.append(
            {
                "kind": kind,
                "n": len(x),
                "build_s": round(build, 1),
                "index_mb": round(len(idx.to_bytes()) / 1e6, 1),
                **percentiles(lat),
                "own_in_top5": round(own / len(q), 4),
                "recall_at_5": round(rec / len(q), 4),
                "params": idx.params,
            }
        )
        print(f"compare {rows[-1]}", file=sys.stderr, flush=True)
        del idx
    return rows


def bench_builtin(x: np.ndarray, q: np.ndarray, target, top_exact, work: Path, args) -> dict:
    from siamface.gallery import Gallery, NewPerson

    gdir = work / "gallery"
    if gdir.exists():
        shutil.rmtree(gdir)
    rss0 = rss_mb()
    t = time.perf_counter()
    g = Gallery.create(gdir, fingerprint=FINGERPRINT, embedding_size=args.dim, threshold=None)
    if args.index != "auto":
        g.set_index_kind(args.index)
    people = [NewPerson(f"i{i}", x[i : i + 1]) for i in range(len(x))]
    g.enroll_many(people, fingerprint=FINGERPRINT)
    del people
    build_s = time.perf_counter() - t
    build_rss = rss_mb() - rss0
    print(f"builtin: built in {build_s:.1f}s", file=sys.stderr, flush=True)
    rebuild_s = None
    if not args.no_rebuild:
        t = time.perf_counter()
        g.rebuild_index()
        rebuild_s = time.perf_counter() - t
    info = g.info()
    g.close()
    disk = {f.name: round(f.stat().st_size / 1e6, 1) for f in gdir.iterdir() if f.is_file()}
    search = run_search(str(gdir), work, q, "builtin")
    found = search.pop("found")
    print("builtin: searched", file=sys.stderr, flush=True)
    raw_mb = len(x) * args.dim * 4 / 1e6
    return {
        "index_kind": info["index"]["kind"],
        "build_s": round(build_s, 1),
        "enroll_per_s": round(len(x) / build_s, 1),
        "build_rss_delta_mb": round(build_rss, 1),
        "rebuild_index_s": None if rebuild_s is None else round(rebuild_s, 1),
        "disk_mb": round(sum(disk.values()), 1),
        "disk_files_mb": disk,
        "search": search,
        "memory_vs_raw": round(search["rss_delta_mb"] / raw_mb, 4),
        **accuracy(found, target, top_exact),
    }


def bench_milvus(x: np.ndarray, q: np.ndarray, target, top_exact, work: Path, args) -> dict:
    from siamface.gallery import Gallery, NewPerson

    server = None
    if args.milvus_uri:
        base = args.milvus_uri.rstrip("/")
    else:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from milvus_server import MilvusServer

        server = MilvusServer(work / "milvus").start()
        base = f"milvus://127.0.0.1:{server.port}"
    spec = f"{base}/scale_{os.getpid()}"
    try:
        t = time.perf_counter()
        g = Gallery.create(
            spec,
            fingerprint=FINGERPRINT,
            embedding_size=args.dim,
            threshold=None,
            index_kind=args.milvus_index,
        )
        rss0 = rss_mb()
        chunk = args.milvus_chunk
        for i in range(0, len(x), chunk):
            g.enroll_many(
                [NewPerson(f"i{j}", x[j : j + 1]) for j in range(i, min(i + chunk, len(x)))],
                fingerprint=FINGERPRINT,
            )
            print(f"milvus: {min(i + chunk, len(x))} enrolled", file=sys.stderr, flush=True)
        build_s = time.perf_counter() - t
        build_rss = rss_mb() - rss0
        n_people = len(g)
        g.close()
        search = run_search(spec, work, q, "milvus")
        found = search.pop("found")
        print("milvus: searched", file=sys.stderr, flush=True)
        out = {
            "server": "milvus-lite (started by the bench)" if server else args.milvus_uri,
            "index_kind": args.milvus_index,
            "people": n_people,
            "build_s": round(build_s, 1),
            "enroll_per_s": round(len(x) / build_s, 1),
            "build_rss_delta_mb": round(build_rss, 1),
            "search": search,
            "probes": len(q),
            **accuracy(found, target, top_exact),
        }
        if server is not None:
            out["server_rss_mb"] = proc_rss_mb(server.proc.pid)
            out["disk_mb"] = round(
                sum(f.stat().st_size for f in (work / "milvus").rglob("*") if f.is_file()) / 1e6, 1
            )
        return out
    finally:
        if server is not None:
            server.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="enrolled identities")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--probes", type=int, default=1000)
    p.add_argument("--genuine", type=float, default=0.6, help="mean genuine cosine of probes")
    p.add_argument("--index", default="auto", help="builtin gallery index kind (default: by size)")
    p.add_argument(
        "--backend",
        choices=["builtin", "milvus"],
        default="builtin",
        help="milvus: measure a Milvus gallery too, against builtin in the same run",
    )
    p.add_argument(
        "--milvus-uri", help="milvus://HOST:PORT of a running server (default: start one)"
    )
    p.add_argument(
        "--milvus-index", default="flat", help="Milvus index kind (flat, hnsw, ivf_flat)"
    )
    p.add_argument(
        "--milvus-probes", type=int, help="probes searched on Milvus (default: --probes)"
    )
    p.add_argument("--milvus-chunk", type=int, default=5000, help="people per enroll_many call")
    p.add_argument("--exact-timed", type=int, default=100, help="probes timed on exact search")
    p.add_argument("--compare", default="", help="comma list of index kinds to compare")
    p.add_argument("--compare-n", type=int, default=100_000)
    p.add_argument("--no-rebuild", action="store_true", help="skip timing an index rebuild")
    p.add_argument("--workdir", help="where to build the gallery (default: a temp folder)")
    p.add_argument("--keep", action="store_true", help="keep the gallery folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--search-worker", nargs=3, metavar=("GALLERY", "PROBES", "K"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.search_worker:
        search_worker(args.search_worker[0], args.search_worker[1], int(args.search_worker[2]))
        return

    work = Path(args.workdir or tempfile.mkdtemp(prefix="gallery_scale_", dir="/tmp"))
    work.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    x = make_templates(args.n, args.dim, args.seed)
    q, target = make_probes(x, args.probes, args.genuine, args.seed)
    gen_cos = np.einsum("ij,ij->i", q, x[target])
    print(f"data: {args.n} x {args.dim} in {time.perf_counter() - t:.1f}s", file=sys.stderr)

    base, top_exact = exact_baseline(x, q, 5, args.exact_timed)
    own_exact = float(np.mean([target[j] in top_exact[j] for j in range(len(q))]))
    raw_mb = args.n * args.dim * 4 / 1e6
    builtin = bench_builtin(x, q, target, top_exact, work, args)
    out = {
        "n": args.n,
        "dim": args.dim,
        "probes": len(q),
        "genuine_cos_mean": round(float(gen_cos.mean()), 4),
        "genuine_cos_std": round(float(gen_cos.std()), 4),
        "raw_vectors_mb": round(raw_mb, 1),
        "builtin": builtin,
        "baseline": {
            **base,
            "own_in_top5": round(own_exact, 4),
            "speedup_p50_builtin": round(base["p50_ms"] / builtin["search"]["p50_ms"], 1),
        },
        "targets": {
            "p50_lt_5ms": builtin["search"]["p50_ms"] < 5,
            "own_in_top5_ge_0.99": builtin["own_in_top5"] >= 0.99,
            "memory_within_2x_raw": builtin["search"]["rss_delta_mb"] <= 2 * raw_mb,
        },
    }
    if args.backend == "milvus":
        m = args.milvus_probes or len(q)
        mil = bench_milvus(x, q[:m], target[:m], top_exact[:m], work, args)
        out["milvus"] = mil
        out["milvus_vs_builtin"] = {
            "p50_latency_x": round(mil["search"]["p50_ms"] / builtin["search"]["p50_ms"], 1),
            "p99_latency_x": round(mil["search"]["p99_ms"] / builtin["search"]["p99_ms"], 1),
            "enroll_throughput_x": round(mil["enroll_per_s"] / builtin["enroll_per_s"], 3),
            "client_rss_delta_mb": [
                builtin["search"]["rss_delta_mb"],
                mil["search"]["rss_delta_mb"],
            ],
            "p50_vs_exact_baseline_x": round(mil["search"]["p50_ms"] / base["p50_ms"], 2),
        }
    if args.compare:
        out["compare"] = compare_kinds(
            [k for k in args.compare.split(",") if k], x[: args.compare_n], args
        )
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    out["cpu_count"] = os.cpu_count()
    out["loadavg"] = [round(v, 2) for v in os.getloadavg()]
    out["note"] = "shared 2-core machine: absolute times are noisy; compare within one run"
    print(json.dumps(out, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
