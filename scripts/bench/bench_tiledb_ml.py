"""The TileDB-ML part of scripts/bench.sh (read that first).

  bench_tiledb_ml.py make URI MIB   save a PyTorch model of about MIB MiB with
                                    tiledb-ml's own save()
  bench_tiledb_ml.py load URI       one tiledb-ml load() of it (a child of `run`)
  bench_tiledb_ml.py run --bin B --out DIR --registry R --runs N

`make` builds a stack of 2048x2048 float32 Linear layers (16 MiB of weights
each, seed 0) and saves it with `PyTorchTileDBModel(uri, model=...).save()`:
the array tiledb-ml writes (1 KiB zstd tiles, the state_dict pickled in the
`model` field). Needs torch and tiledb-ml in the venv.

`run` measures, each figure the median of N runs, the page cache dropped
before each:
  - tiledb-ml's own `load()` of the array into the same model, in a fresh
    Python process (the load call timed alone), and that process's peak RSS;
  - the first read of `model.safetensors` through a fresh read-only mount
    (default settings): open to last byte, which includes reading the field
    from TileDB and decoding it, and the daemon's peak RSS (VmHWM) and the
    memory it still holds after;
  - the second read of the same file (decoded model kept, spilled bytes
    read back);
  - the CPU time of load() (all threads of its process, the call alone)
    and of the daemon during the first read: on a shared machine wall
    times swing by half, the CPU work does not.
Targets (issue #13): first view read no slower than load(); daemon peak RSS
at most --cache-size (112 MiB) + --view-memory (2 GiB) + 128 MiB. Prints a
table, writes DIR/bench-tiledb-ml.json.
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import drop_caches, med, mount, read_all, say, timed  # noqa: E402

MIB = 1 << 20
LAYER = 2048
CACHE_MIB, VIEW_MIB, SLACK_MIB = 112, 2048, 128


def layers_for(mib):
    return max(1, mib // 16)


def build_model(n):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(*[torch.nn.Linear(LAYER, LAYER) for _ in range(n)])


def make(uri, mib):
    from tiledb.ml.models.pytorch import PyTorchTileDBModel

    n = layers_for(mib)
    model = build_model(n)
    t = time.perf_counter()
    PyTorchTileDBModel(uri=uri, model=model).save(meta={"bench_layers": n})
    say(f"tiledb-ml save() of {n} layers took {time.perf_counter() - t:.1f} s")


def load(uri):
    import tiledb
    from tiledb.ml.models.pytorch import PyTorchTileDBModel

    with tiledb.open(uri) as a:
        n = int(a.meta["bench_layers"])
    model = build_model(n)
    t, c = time.perf_counter(), time.process_time()
    PyTorchTileDBModel(uri=uri).load(model=model)
    dt, cpu = time.perf_counter() - t, time.process_time() - c
    print(json.dumps({"load_s": dt, "load_cpu_s": cpu, "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def run(a):
    out, reg = Path(a.out), Path(a.registry)
    uri = reg / "model"
    field_mib = None
    import tiledb

    with tiledb.open(str(uri)) as arr:
        field_mib = int(arr.meta["model_size"]) / MIB
    res = {"load_s": [], "load_cpu_s": [], "load_maxrss_mib": [], "view_first_s": [], "view_cpu_s": [],
           "view_second_s": [], "daemon_peak_mib": [], "daemon_after_mib": []}
    view_bytes = None
    for i in range(a.runs):
        drop_caches()
        p = subprocess.run([sys.executable, __file__, "load", str(uri)], capture_output=True, text=True)
        if p.returncode != 0:
            raise SystemExit(f"bench: tiledb-ml load() failed: {p.stderr.strip()}")
        r = json.loads(p.stdout.strip().splitlines()[-1])
        res["load_s"].append(r["load_s"])
        res["load_cpu_s"].append(r["load_cpu_s"])
        res["load_maxrss_mib"].append(r["maxrss_kib"] / 1024)

        drop_caches()
        mnt = out / "mnt-tiledb-ml"
        with mount(a.bin, reg, mnt, out / "mount.log", read_only=True) as m:
            view = mnt / "model" / "model.safetensors"
            cpu = m.cpu_s()
            dt, n = timed(read_all, view)
            res["view_first_s"].append(dt)
            res["view_cpu_s"].append(m.cpu_s() - cpu)
            view_bytes = n
            res["daemon_after_mib"].append(rss_kib(m.proc.pid) / 1024)
            dt2, _ = timed(read_all, view)
            res["view_second_s"].append(dt2)
            stats = m.stats()
        res["daemon_peak_mib"].append(m.hwm_kib / 1024)
        say(f"run {i + 1}: load() {res['load_s'][-1]:.1f} s, first view read {res['view_first_s'][-1]:.1f} s, "
            f"daemon peak {res['daemon_peak_mib'][-1]:.0f} MiB")
    report(res, field_mib, view_bytes, stats, a)


def report(res, field_mib, view_bytes, stats, a):
    limit = CACHE_MIB + VIEW_MIB + SLACK_MIB
    load_s, first_s = med(res["load_s"]), med(res["view_first_s"])
    peak = max(res["daemon_peak_mib"])
    print()
    print(f"modelfs benchmark, TileDB-ML column: PyTorch model saved by tiledb-ml save(), "
          f"`model` field {field_mib:.0f} MiB, model.safetensors {view_bytes / MIB:.0f} MiB; "
          f"median of {a.runs} runs")
    rows = [
        ("tiledb-ml load() into the model, cold", "load_s", "s"),
        ("first read of model.safetensors via the mount, cold", "view_first_s", "s"),
        ("second read of model.safetensors (decoded, spilled)", "view_second_s", "s"),
        ("  CPU time of load() (all its threads)", "load_cpu_s", "s"),
        ("  daemon CPU time during the first read", "view_cpu_s", "s"),
        ("  tiledb-ml load() process peak RSS", "load_maxrss_mib", "MiB"),
        ("  daemon peak RSS (VmHWM) over the first read", "daemon_peak_mib", "MiB"),
        ("  daemon RSS after the first read", "daemon_after_mib", "MiB"),
    ]
    for label, key, unit in rows:
        xs = res[key]
        runs = " ".join(f"{x:.1f}" for x in xs)
        print(f"{label:56} {med(xs):9.2f}{unit:4} {runs}")
    print(f"counters: ml_models_decoded={stats.get('ml_models_decoded')} "
          f"view_bytes_spilled={stats.get('view_bytes_spilled')} view_memory_used={stats.get('view_memory_used')}")
    print()
    ratio = load_s / first_s if first_s else 0
    verdict = lambda ok: "PASS" if ok else "FAIL"  # noqa: E731
    print(f"{'first view read / tiledb-ml load() (t_load/t_view)':68} {ratio:6.2f}  >= 1.0  {verdict(ratio >= 1.0)}")
    print(f"{'daemon peak RSS, MiB (cache 112 + view memory 2048 + 128)':68} {peak:6.0f} <= {limit}  "
          f"{verdict(peak <= limit)}")
    cpu_ratio = med(res["load_cpu_s"]) / med(res["view_cpu_s"]) if med(res["view_cpu_s"]) else 0
    print(f"{'CPU of the first view read / CPU of load() (cpu_load/cpu_view)':68} {cpu_ratio:6.2f}          info")
    res["cpu_ratio"] = cpu_ratio
    (Path(a.out) / "bench-tiledb-ml.json").write_text(json.dumps({
        "built_from": a.built_from, "field_mib": field_mib, "view_bytes": view_bytes, "runs": res,
        "ratio_load_over_view": ratio, "peak_limit_mib": limit, "counters": stats,
    }, indent=2))


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]))
        return
    if len(sys.argv) >= 2 and sys.argv[1] == "load":
        load(sys.argv[2])
        return
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["run"])
    for opt in ("--bin", "--out", "--registry"):
        p.add_argument(opt, required=True)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--built-from", default="unknown")
    run(p.parse_args())


if __name__ == "__main__":
    main()
