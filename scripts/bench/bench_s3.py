"""The S3 column of scripts/bench.sh: the same file on a registry on a Garage
node on loopback (started by bench.sh; TileDB reaches it through the TILEDB_*
and AWS_* variables of scripts/garage.sh's env file).

  bench_s3.py --bin B --out DIR --file F --registry s3://... --runs N
              --admin-port P --built-from G

Measures, each figure the median of N runs, "cold" = page cache dropped:
  - sequential read of F (imported as REG/model.safetensors) through a fresh
    mount, cold, and the library's direct read (`modelfs export` to
    /dev/null), cold;
  - the S3 requests Garage answered (its own request counter) for: mount
    start, `ls -l` of a 10-file model directory on a fresh mount, the same
    `ls -l` again within the metadata TTL, and a full read of F;
  - a registry of 1,000 model directories (made one `mkdir` at a time, as a
    team would grow it): `ls` of its root on a warm mount (listing re-read
    after the TTL), and mount start-up time against a 10-directory registry.
Prints a table and the targets, writes DIR/bench-s3.json.
"""
import argparse
import json
import os
import re
import sys
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import MIB, drop_caches, med, mount, read_all, run_cmd, say, timed  # noqa: E402

TTL_S = 1


def garage_requests(port):
    """Garage's S3 request counts by endpoint, from its metrics."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    counts = {}
    for line in text.splitlines():
        if line.startswith("api_s3_request_counter{"):
            labels, value = line.rsplit(" ", 1)
            endpoint = re.search(r'api_endpoint="([^"]+)"', labels).group(1)
            counts[endpoint] = counts.get(endpoint, 0) + int(float(value))
    return counts


def delta(before, after):
    d = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    return {k: v for k, v in sorted(d.items()) if v}


class Requests:
    """Counts the S3 requests made while the `with` body runs."""

    def __init__(self, port):
        self.port, self.by_endpoint = port, {}

    def __enter__(self):
        self.before = garage_requests(self.port)
        return self

    def __exit__(self, *exc):
        self.by_endpoint = delta(self.before, garage_requests(self.port))

    @property
    def total(self):
        return sum(self.by_endpoint.values())


def make_model_dir(path):
    """A 10-file model directory, as on a model hub."""
    path.mkdir(parents=True, exist_ok=True)
    files = {
        "config.json": b'{"architectures": ["BenchForCausalLM"], "hidden_size": 64}',
        "generation_config.json": b'{"max_new_tokens": 32}',
        "tokenizer.json": os.urandom(300_000),
        "tokenizer_config.json": b'{"model_max_length": 2048}',
        "special_tokens_map.json": b'{"eos_token": "</s>"}',
        "vocab.txt": b"\n".join(b"tok%d" % i for i in range(5000)),
        "merges.txt": b"a b\n" * 1000,
        "README.md": b"# bench model\n",
        "LICENSE": b"Apache-2.0\n",
        "training_args.bin": os.urandom(4000),
    }
    for name, data in files.items():
        (path / name).write_bytes(data)
    return path


def run(a):
    out, bin_, runs = Path(a.out), a.bin, a.runs
    reg = a.registry.rstrip("/")
    size = Path(a.file).stat().st_size
    log = out / "mount-s3.log"
    res = {"runs": {}, "requests": {}}
    R = res["runs"]

    def sample(key, value):
        R.setdefault(key, []).append(value)

    def mnt(registry, tag, *flags):
        return mount(bin_, registry, out / f"mnt-s3-{tag}", log, True, flags=["--metadata-ttl", str(TTL_S), *flags])

    # Cold sequential read: the library directly, and through a fresh mount.
    for i in range(runs):
        say(f"S3: modelfs export to /dev/null, cold ({i + 1}/{runs})")
        drop_caches()
        sample("s3_direct_export_cold_s", run_cmd([bin_, "export", "--quiet", f"{reg}/model.safetensors", "/dev/null"]))
        say(f"S3: sequential read through a fresh mount, cold ({i + 1}/{runs})")
        with mnt(reg, "read") as m:
            drop_caches()
            with Requests(a.admin_port) as rq:
                dt, n = timed(read_all, m.path / "model.safetensors")
            if n != size:
                raise SystemExit(f"bench: read {n} bytes through the S3 mount, expected {size}")
            sample("s3_mount_read_cold_s", dt)
            sample("s3_requests_full_read", rq.total)
            res["requests"]["full_read"] = rq.by_endpoint
            res.setdefault("stats_after_read", m.stats())

    # The requests of listing a model directory.
    say("S3: importing a 10-file model directory")
    run_cmd([bin_, "import", "--quiet", "--force", str(make_model_dir(out / "s3-model")), f"{reg}/bench-model"])
    for i in range(runs):
        say(f"S3: mount start and ls -l of a 10-file model directory ({i + 1}/{runs})")
        with Requests(a.admin_port) as start_rq:
            ctx = mnt(reg, "ls")
            m = ctx.__enter__()
        try:
            with Requests(a.admin_port) as rq:
                run_cmd(["ls", "-l", str(m.path / "bench-model")])
            sample("s3_requests_ls_l_10_files", rq.total)
            res["requests"]["ls_l_10_files"] = rq.by_endpoint
            with Requests(a.admin_port) as again:
                run_cmd(["ls", "-l", str(m.path / "bench-model")])
            sample("s3_requests_ls_l_again_within_ttl", again.total)
        finally:
            ctx.__exit__(None, None, None)
        sample("s3_requests_mount_start", start_rq.total)
        res["requests"]["mount_start"] = start_rq.by_endpoint

    # A registry of 1,000 model directories, and one of 10.
    for count in (10, 1000):
        many = f"{reg}-dirs-{count}-{int(time.time())}"
        say(f"S3: making a registry of {count} model directories, one mkdir at a time")
        t = time.perf_counter()
        make_dirs(many, count)
        res[f"make_{count}_dirs_s"] = time.perf_counter() - t
        for i in range(runs):
            say(f"S3: mount start-up and ls of {count} directories ({i + 1}/{runs})")
            t = time.perf_counter()
            with mnt(many, f"dirs-{count}") as m:
                sample(f"s3_mount_start_{count}_dirs_s", time.perf_counter() - t)
                listed = len(os.listdir(m.path))
                if listed != count:
                    raise SystemExit(f"bench: listed {listed} directories, expected {count}")
                # Past the TTL the listing is read from the registry again.
                time.sleep(TTL_S + 0.2)
                with Requests(a.admin_port) as rq:
                    dt, _ = timed(os.listdir, m.path)
                sample(f"s3_ls_{count}_dirs_warm_s", dt)
                sample(f"s3_requests_ls_{count}_dirs", rq.total)

    res["median"] = {k: med(v) for k, v in R.items()}
    report(res, size, a)


def make_dirs(root, count):
    """`count` model directories under the group `root`, each made and
    linked by its own group write (as `mkdir` through a mount does)."""
    import tiledb

    tiledb.Group.create(root)
    for i in range(count):
        child = f"{root}/model-{i:04d}"
        tiledb.Group.create(child)
        with tiledb.Group(root, "w") as g:
            g.add(f"model-{i:04d}", name=f"model-{i:04d}", relative=True)


def report(res, size, a):
    m = res["median"]
    print()
    print(f"modelfs benchmark, S3 column: {size / MIB:.0f} MiB safetensors file on one Garage node on loopback, "
          f"median of {a.runs} runs")
    rows = [
        ("direct TileDB read from S3 (export > /dev/null), cold", "s3_direct_export_cold_s", "s"),
        ("sequential read through the mount from S3, cold", "s3_mount_read_cold_s", "s"),
        ("mount start-up, registry of 10 directories", "s3_mount_start_10_dirs_s", "s"),
        ("mount start-up, registry of 1,000 directories", "s3_mount_start_1000_dirs_s", "s"),
        ("ls of 10 directories, warm mount, past the TTL", "s3_ls_10_dirs_warm_s", "s"),
        ("ls of 1,000 directories, warm mount, past the TTL", "s3_ls_1000_dirs_warm_s", "s"),
        ("S3 requests: mount start", "s3_requests_mount_start", ""),
        ("S3 requests: ls -l of a 10-file model directory", "s3_requests_ls_l_10_files", ""),
        ("S3 requests: the same ls -l again within the TTL", "s3_requests_ls_l_again_within_ttl", ""),
        ("S3 requests: full read of the file", "s3_requests_full_read", ""),
        ("S3 requests: ls of 1,000 directories", "s3_requests_ls_1000_dirs", ""),
    ]
    for label, k, unit in rows:
        v = m[k]
        shown = f"{v:8.3f}s" if unit == "s" else f"{v:9.0f}"
        print(f"{label:56} {shown}   " + " ".join(f"{x:.2f}" if unit else f"{x:.0f}" for x in res["runs"][k]))
    for what in ("mount_start", "ls_l_10_files", "full_read"):
        print(f"  requests by endpoint, {what}: {res['requests'].get(what)}")
    print(f"  making the registries: 10 directories {res['make_10_dirs_s']:.1f} s, "
          f"1,000 directories {res['make_1000_dirs_s']:.1f} s")
    ratio = m["s3_direct_export_cold_s"] / m["s3_mount_read_cold_s"]
    growth = m["s3_mount_start_1000_dirs_s"] / m["s3_mount_start_10_dirs_s"]
    res["targets"] = [
        {"what": "S3 cold read through the mount / direct TileDB read (t_direct/t_mount)",
         "value": ratio, "target": ">= 0.9", "verdict": "PASS" if ratio >= 0.9 else "FAIL"},
        {"what": "ls of 1,000 directories on a warm mount, s", "value": m["s3_ls_1000_dirs_warm_s"],
         "target": "< 2", "verdict": "PASS" if m["s3_ls_1000_dirs_warm_s"] < 2 else "FAIL"},
        {"what": "mount start-up, 1,000 directories / 10 directories", "value": growth,
         "target": "~1", "verdict": "PASS" if growth < 1.5 else "FAIL"},
    ]
    print()
    for t in res["targets"]:
        print(f"{t['what']:72} {t['value']:8.2f}  {t['target']:>7}  {t['verdict']}")
    res["config"] = {"registry": a.registry, "runs": a.runs, "built_from": a.built_from,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "cpus": os.cpu_count()}
    with open(Path(a.out) / "bench-s3.json", "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nall S3 figures: {Path(a.out) / 'bench-s3.json'}")


def main():
    p = argparse.ArgumentParser()
    for opt in ("--bin", "--out", "--file", "--registry", "--admin-port"):
        p.add_argument(opt, required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--built-from", default="unknown")
    try:
        run(p.parse_args())
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
