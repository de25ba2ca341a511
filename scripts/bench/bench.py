"""The measuring half of scripts/bench.sh (read that first).

  bench.py make FILE MIB        write a safetensors file of MIB MiB of weights
  bench.py run --bin B --out DIR --file F --registry R --runs N

`make` writes a model-shaped file with plain Python (numpy has no bfloat16):
a JSON header, then (at 1 GiB) 285 tensors from 4 bytes to tens of MiB, BF16 and F32,
normally distributed like trained weights (BF16 = top 16 bits of a float32).
Deterministic (seed 0).

`run` takes the file F, already imported as R/model.safetensors, and measures
everything listed in bench.sh; every figure is the median of N runs. Each
mount is a fresh `modelfs mount --foreground` child, so its pid gives the
daemon's peak RSS (VmHWM) for that phase only, and its chunk cache starts
empty. "Cold" = `sync; echo 3 > /proc/sys/vm/drop_caches` just before.
Prints a table and the targets, writes DIR/bench.json.
"""
import argparse
import json
import os
import platform
import random
import shutil
import statistics
import struct
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

MIB = 1 << 20
READ_BLOCK = MIB
RANDOM_READS, RANDOM_SIZE = 1000, 64 << 10


# ---------------------------------------------------------------- the file

def plan(target):
    """(name, dtype, shape) of a small decoder-only model, data = target bytes."""
    hidden, inter, kv, vocab = 1536, 4096, 256, 16384
    size = lambda dt, shape: (2 if dt == "BF16" else 4) * _prod(shape)

    def layer(i):
        p = f"model.layers.{i}"
        return [
            (f"{p}.input_layernorm.weight", "F32", [hidden]),
            (f"{p}.self_attn.q_proj.weight", "BF16", [hidden, hidden]),
            (f"{p}.self_attn.q_proj.bias", "F32", [hidden]),
            (f"{p}.self_attn.k_proj.weight", "BF16", [kv, hidden]),
            (f"{p}.self_attn.k_proj.bias", "F32", [kv]),
            (f"{p}.self_attn.v_proj.weight", "BF16", [kv, hidden]),
            (f"{p}.self_attn.v_proj.bias", "F32", [kv]),
            (f"{p}.self_attn.o_proj.weight", "BF16", [hidden, hidden]),
            (f"{p}.self_attn.rotary_emb.inv_freq", "F32", [64]),
            (f"{p}.post_attention_layernorm.weight", "F32", [hidden]),
            (f"{p}.mlp.gate_proj.weight", "BF16", [inter, hidden]),
            (f"{p}.mlp.up_proj.weight", "BF16", [inter, hidden]),
            (f"{p}.mlp.down_proj.weight", "BF16", [hidden, inter]),
            (f"{p}.mlp.residual_scale", "F32", [1]),
        ]

    out, left = [], target
    embed = ("model.embed_tokens.weight", "BF16", [vocab, hidden])
    if size(*embed[1:]) <= left // 2:
        out.append(embed)
        left -= size(*embed[1:])
    for t in [("model.norm.weight", "F32", [hidden]), ("model.logit_scale", "F32", [1])]:
        if size(*t[1:]) <= left:
            out.append(t)
            left -= size(*t[1:])
    i = 0
    while True:
        ts = layer(i)
        need = sum(size(*t[1:]) for t in ts)
        if need > left - 4 * hidden:  # keep room for a head
            break
        out += ts
        left -= need
        i += 1
    rows = left // (4 * hidden)
    if rows:
        out.append(("lm_head.weight", "F32", [rows, hidden]))
        left -= 4 * hidden * rows
    if left:
        out.append(("lm_head.bias", "F32", [left // 4]))
    return out


def _prod(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def make(path, mib):
    import numpy as np

    specs = plan(mib * MIB)
    header, off = {"__metadata__": {"format": "pt", "made_by": "modelfs scripts/bench"}}, 0
    for name, dt, shape in specs:
        n = (2 if dt == "BF16" else 4) * _prod(shape)
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        off += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    rng = np.random.default_rng(0)
    tmp = Path(str(path) + ".part")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(head)))
        f.write(head)
        for _, dt, shape in specs:
            n = _prod(shape)
            for start in range(0, n, 4 * MIB):
                x = rng.standard_normal(min(4 * MIB, n - start), dtype=np.float32)
                x *= 0.02
                f.write((x.view(np.uint32) >> 16).astype(np.uint16).tobytes() if dt == "BF16" else x.tobytes())
    os.replace(tmp, path)
    print(f"bench: wrote {path}: {len(specs)} tensors, {os.path.getsize(path) / MIB:.1f} MiB", file=sys.stderr)


# ---------------------------------------------------------------- helpers

def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def drop_caches():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


def read_all(path):
    """Sequential read with 1 MiB reads; returns bytes read."""
    buf, n = bytearray(READ_BLOCK), 0
    with open(path, "rb", buffering=0) as f:
        while k := f.readinto(buf):
            n += k
    return n


def timed(fn, *args):
    t = time.perf_counter()
    r = fn(*args)
    return time.perf_counter() - t, r


def run_cmd(argv):
    """Whole-process wall time of a command that must succeed."""
    t = time.perf_counter()
    p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        raise SystemExit(f"bench: {' '.join(map(str, argv))} failed ({p.returncode}): {p.stderr.strip()}")
    return dt


def mounted_paths():
    with open("/proc/self/mountinfo") as f:
        return {
            line.split()[4].encode().decode("unicode_escape") for line in f
        }


def vm_hwm_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM for pid {pid}")


class Mount:
    def __init__(self, path, proc):
        self.path, self.proc, self.hwm_kib = path, proc, None

    def cpu_s(self):
        """The daemon's CPU time so far (user + system), seconds."""
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stats(self):
        with open(self.path / ".modelfs-stats") as f:
            return json.load(f)


@contextmanager
def mount(bin_, registry, path, log, read_only, flags=()):
    path.mkdir(parents=True, exist_ok=True)
    if str(path) in mounted_paths():
        raise SystemExit(f"bench: {path} is already mounted (a previous run?); unmount it first")
    argv = [bin_, "mount", str(registry), str(path), "--foreground", "--log-file", str(log)]
    if read_only:
        argv.append("--read-only")
    argv.extend(flags)
    # Its own session: a Ctrl-C reaches this script (which unmounts), not the daemon.
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True)
    m = Mount(path, proc)
    try:
        deadline = time.monotonic() + 30
        while str(path) not in mounted_paths():
            if proc.poll() is not None:
                raise SystemExit(f"bench: the mount daemon exited ({proc.returncode}); see {log}")
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {path} not mounted after 30 s; see {log}")
            time.sleep(0.02)
        yield m
    finally:
        if proc.poll() is None:
            m.hwm_kib = vm_hwm_kib(proc.pid)
        for attempt in range(50):
            if str(path) not in mounted_paths():
                break
            lazy = ["--lazy"] if attempt == 49 else []
            subprocess.run([bin_, "unmount", *lazy, str(path)], capture_output=True)
            time.sleep(0.1)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            say(f"daemon {proc.pid} still running 30 s after unmount; terminating it")
            proc.terminate()
            proc.wait()


def med(xs):
    return statistics.median(xs)


# ---------------------------------------------------------------- run

def run(a):
    file, reg, out = Path(a.file), Path(a.registry), Path(a.out)
    runs, bin_ = a.runs, a.bin
    size = file.stat().st_size
    rel = "model.safetensors"
    log = out / "mount.log"
    res = {"runs": {}, "stats": {}, "rss_kib": {}, "loadavg_start": os.getloadavg()}
    R = res["runs"]
    mnt = lambda tag, ro=True: mount(bin_, reg, out / f"mnt-{tag}", log, ro)

    def sample(key, value):
        R.setdefault(key, []).append(value)

    import ml_dtypes  # noqa: F401  (gives numpy the bfloat16 that load_file needs for BF16)
    from safetensors import safe_open
    from safetensors.numpy import load_file

    # Local disk, for reference.
    for i in range(runs):
        say(f"local sequential read, cold and warm ({i + 1}/{runs})")
        drop_caches()
        sample("local_read_cold_s", timed(read_all, file)[0])
        sample("local_read_warm_s", timed(read_all, file)[0])

    # The library straight from TileDB, no FUSE.
    for i in range(runs):
        say(f"modelfs export to /dev/null, cold ({i + 1}/{runs})")
        drop_caches()
        sample("direct_export_cold_s", run_cmd([bin_, "export", "--quiet", f"{reg}/{rel}", "/dev/null"]))

    # Through the mount: a fresh mount each run, so its chunk cache is empty.
    read_hwm = []
    for i in range(runs):
        say(f"mount sequential read, cold and warm, beside the local file's ({i + 1}/{runs})")
        # The local file's cold read right beside, for the paired ratio.
        drop_caches()
        sample("pair_local_read_cold_s", timed(read_all, file)[0])
        with mnt("read") as m:
            path = m.path / rel
            drop_caches()
            c = m.cpu_s()
            dt, n = timed(read_all, path)
            sample("mount_read_cold_daemon_cpu_s", m.cpu_s() - c)
            if n != size:
                raise SystemExit(f"bench: read {n} bytes through the mount, expected {size}")
            sample("mount_read_cold_s", dt)
            res["stats"].setdefault("after_cold_read", []).append(m.stats())
            sample("mount_read_warm_s", timed(read_all, path)[0])
            if i == 0:
                res["stats"]["after_warm_read"] = m.stats()
                say("checking the mount's bytes against the local file")
                res["bytes_identical"] = same_bytes(path, file)
        read_hwm.append(m.hwm_kib)

    for i in range(runs):
        say(f"safetensors.numpy.load_file, cold, mount and local ({i + 1}/{runs})")
        with mnt("load") as m:
            drop_caches()
            dt, t = timed(load_file, str(m.path / rel))
            sample("mount_load_file_cold_s", dt)
            ntensors = len(t)
            if i == 0:
                res["stats"]["after_load_file"] = m.stats()
            del t
        read_hwm.append(m.hwm_kib)
        drop_caches()
        dt, t = timed(load_file, str(file))
        sample("local_load_file_cold_s", dt)
        del t
    res["tensors"] = ntensors

    disk_cache_column(res, a, sample, load_file)

    def keys(p):
        with safe_open(str(p), framework="numpy") as f:
            return list(f.keys())

    for i in range(runs):
        say(f"safe_open(...).keys(), first and second open on a fresh mount, cold ({i + 1}/{runs})")
        with mnt("header") as m:
            drop_caches()
            sample("mount_header_first_ms", timed(keys, m.path / rel)[0] * 1000)
            if i == 0:
                res["stats"]["after_first_header_open"] = m.stats()
            sample("mount_header_again_ms", timed(keys, m.path / rel)[0] * 1000)
        read_hwm.append(m.hwm_kib)
        drop_caches()
        sample("local_header_ms", timed(keys, file)[0] * 1000)

    def random_reads(p):
        rng, lat = random.Random(0), []
        fd = os.open(p, os.O_RDONLY)
        try:
            for _ in range(RANDOM_READS):
                off = rng.randrange(0, size - RANDOM_SIZE)
                t = time.perf_counter()
                n = len(os.pread(fd, RANDOM_SIZE, off))
                lat.append((time.perf_counter() - t) * 1000)
                assert n == RANDOM_SIZE
        finally:
            os.close(fd)
        q = statistics.quantiles(lat, n=100)
        return statistics.median(lat), q[98]

    for i in range(runs):
        say(f"{RANDOM_READS} random 64 KiB preads, cold, mount and local ({i + 1}/{runs})")
        with mnt("random") as m:
            drop_caches()
            p50, p99 = random_reads(m.path / rel)
            sample("mount_random_p50_ms", p50)
            sample("mount_random_p99_ms", p99)
            if i == 0:
                res["stats"]["after_random_reads"] = m.stats()
        read_hwm.append(m.hwm_kib)
        drop_caches()
        p50, p99 = random_reads(file)
        sample("local_random_p50_ms", p50)
        sample("local_random_p99_ms", p99)
    res["rss_kib"]["reads_per_mount"] = read_hwm
    res["rss_kib"]["reads"] = max(read_hwm)

    # Writes. The source stays in the page cache (read once here) so all three
    # compare write paths; `sync` before each run flushes the previous one's
    # data, and the `sync` right after each is timed separately.
    say("warming the source file for the writes")
    read_all(file)

    def write_run(key, fn):
        os.sync()
        sample(key, fn())
        t = time.perf_counter()
        os.sync()
        sample(key[: -len("_s")] + "_then_sync_s", time.perf_counter() - t)

    with mnt("cp", ro=False) as m:
        for i in range(runs):
            say(f"cp into the read-write mount ({i + 1}/{runs})")
            dest = m.path / f"bench-cp-{i}.safetensors"
            c = m.cpu_s()
            write_run("mount_cp_in_s", lambda: run_cmd(["cp", str(file), str(dest)]))
            sample("mount_cp_in_daemon_cpu_s", m.cpu_s() - c)
            if os.path.getsize(dest) != size:
                raise SystemExit(f"bench: {dest} has {os.path.getsize(dest)} bytes after cp, expected {size}")
            os.unlink(dest)
        res["stats"]["after_cp"] = m.stats()
    res["rss_kib"]["cp"] = m.hwm_kib

    scratch = out / "scratch"
    for i in range(runs):
        say(f"modelfs import into a fresh path ({i + 1}/{runs})")
        shutil.rmtree(scratch, ignore_errors=True)
        write_run("import_s", lambda: run_cmd([bin_, "import", "--quiet", str(file), f"{scratch}/imported.safetensors"]))
    shutil.rmtree(scratch, ignore_errors=True)

    local_copy = out / "cp-local.safetensors"
    for i in range(runs):
        say(f"cp to local disk ({i + 1}/{runs})")
        local_copy.unlink(missing_ok=True)
        write_run("local_cp_s", lambda: run_cmd(["cp", str(file), str(local_copy)]))
    local_copy.unlink(missing_ok=True)

    res["median"] = {k: med(v) for k, v in R.items()}
    report(res, size, a)


def wait_fill(m, timeout=120):
    """Waits until the mount has committed a disk cache entry."""
    deadline = time.monotonic() + timeout
    while m.stats()["disk_cache_fills"] < 1:
        if time.monotonic() > deadline:
            raise SystemExit("bench: the disk cache entry was not committed in time")
        time.sleep(0.05)


def disk_cache_column(res, a, sample, load_file):
    """The disk cache and FUSE passthrough (issue 14), beside the local file:
    the first cold read filling the cache, the warm re-read and a warm
    mmap-based load_file through passthrough, and, on a fresh daemon with
    the page cache dropped but the disk cache warm, a read and a load_file."""
    file, reg, out = Path(a.file), Path(a.registry), Path(a.out)
    rel, log, runs = "model.safetensors", out / "mount.log", a.runs
    cache = out / "disk-cache"

    def dc(tag):
        return mount(a.bin, reg, out / f"mnt-{tag}", log, True, ["--disk-cache", str(cache)])

    for i in range(runs):
        say(f"disk cache: first cold read (filling it), warm re-read and load_file through passthrough ({i + 1}/{runs})")
        shutil.rmtree(cache, ignore_errors=True)
        with dc("dc-fill") as m:
            path = m.path / rel
            drop_caches()
            c = m.cpu_s()
            sample("dc_fill_read_cold_s", timed(read_all, path)[0])
            sample("dc_fill_daemon_cpu_s", m.cpu_s() - c)
            wait_fill(m)
            # The first passthrough read brings the cache file into the page
            # cache (as the first local read does); the second is timed,
            # right beside a warm read of the local file.
            read_all(path)
            read_all(file)
            sample("pair_local_read_warm_s", timed(read_all, file)[0])
            c = m.cpu_s()
            sample("dc_warm_read_s", timed(read_all, path)[0])
            sample("dc_warm_daemon_cpu_s", m.cpu_s() - c)
            dt, t = timed(load_file, str(path))
            sample("dc_load_file_warm_s", dt)
            del t
            if i == 0:
                res["stats"]["disk_cache_after_fill_and_warm"] = m.stats()
        drop_caches()
        read_all(file)
        dt, t = timed(load_file, str(file))
        sample("local_load_file_warm_s", dt)
        del t
    # This machine's disk is virtual: its host keeps in its own cache what
    # was read, beyond drop_caches' reach. The local file was read by every
    # phase before; the cache file, just written, never: read it once so
    # both are compared from the same place.
    for entry in (cache / "v1").glob("*.data"):
        read_all(entry)
    for i in range(runs):
        say(f"disk cache warm, page cache cold, fresh daemon: read and load_file ({i + 1}/{runs})")
        drop_caches()
        sample("pair_dc_local_read_cold_s", timed(read_all, file)[0])
        with dc("dc-cold") as m:
            drop_caches()
            c = m.cpu_s()
            sample("dc_page_cold_read_s", timed(read_all, m.path / rel)[0])
            sample("dc_page_cold_daemon_cpu_s", m.cpu_s() - c)
            if i == 0:
                res["stats"]["disk_cache_fresh_daemon_read"] = m.stats()
        with dc("dc-cold-load") as m:
            drop_caches()
            dt, t = timed(load_file, str(m.path / rel))
            sample("dc_load_file_cold_s", dt)
            del t
    shutil.rmtree(cache, ignore_errors=True)


def same_bytes(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(16 * MIB), fb.read(16 * MIB)
            if x != y:
                return False
            if not x:
                return True


def git_now():
    return subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True).stdout.strip()


def report(res, size, a):
    m = res["median"]
    mbps = lambda s: size / s / 1e6
    rows = [
        ("sequential read, local disk, cold", "local_read_cold_s"),
        ("sequential read, local disk, warm", "local_read_warm_s"),
        ("direct TileDB read (modelfs export > /dev/null), cold", "direct_export_cold_s"),
        ("sequential read through the mount, cold", "mount_read_cold_s"),
        ("sequential re-read through the mount, warm", "mount_read_warm_s"),
        ("safetensors load_file, local disk, cold", "local_load_file_cold_s"),
        ("safetensors load_file, mount, cold", "mount_load_file_cold_s"),
        ("disk cache: first cold read, filling it", "dc_fill_read_cold_s"),
        ("disk cache: warm re-read, passthrough", "dc_warm_read_s"),
        ("disk cache warm, page cache cold, fresh daemon", "dc_page_cold_read_s"),
        ("  local disk, cold, beside the mount's first cold read", "pair_local_read_cold_s"),
        ("  local disk, warm, beside the passthrough warm re-read", "pair_local_read_warm_s"),
        ("  local disk, cold, beside the fresh daemon's read", "pair_dc_local_read_cold_s"),
        ("safetensors load_file, local disk, warm", "local_load_file_warm_s"),
        ("safetensors load_file, passthrough, warm", "dc_load_file_warm_s"),
        ("safetensors load_file, disk cache warm, page cold", "dc_load_file_cold_s"),
        ("cp to local disk", "local_cp_s"),
        ("cp into the mount (read-write)", "mount_cp_in_s"),
        ("modelfs import (fresh path)", "import_s"),
    ]
    print()
    print(f"modelfs benchmark: {size / MIB:.0f} MiB safetensors file, {res['tensors']} tensors, "
          f"median of {a.runs} runs; load average at start {res['loadavg_start'][0]:.1f}, "
          f"at end {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    print(f"{'':56} {'median':>9} {'MB/s':>8}   runs")
    for label, k in rows:
        print(f"{label:56} {m[k]:8.3f}s {mbps(m[k]):8.0f}   " + " ".join(f"{x:.2f}" for x in res["runs"][k]))
    for label, k in [("  daemon CPU time during the cold read through the mount", "mount_read_cold_daemon_cpu_s"),
                     ("  daemon CPU time, first cold read filling the cache", "dc_fill_daemon_cpu_s"),
                     ("  daemon CPU time, warm re-read through passthrough", "dc_warm_daemon_cpu_s"),
                     ("  daemon CPU time, disk cache warm, page cache cold", "dc_page_cold_daemon_cpu_s"),
                     ("  daemon CPU time during cp into the mount", "mount_cp_in_daemon_cpu_s"),
                     ("  sync right after cp to local disk", "local_cp_then_sync_s"),
                     ("  sync right after cp into the mount", "mount_cp_in_then_sync_s"),
                     ("  sync right after modelfs import", "import_then_sync_s")]:
        print(f"{label:56} {m[k]:8.3f}s {'':8}   " + " ".join(f"{x:.2f}" for x in res["runs"][k]))
    ms_rows = [
        ("safe_open().keys(), mount up, first open, cold", "mount_header_first_ms"),
        ("safe_open().keys(), mount up, second open", "mount_header_again_ms"),
        ("safe_open().keys(), local disk, cold", "local_header_ms"),
        ("random 64 KiB pread, mount, cold: p50", "mount_random_p50_ms"),
        ("random 64 KiB pread, mount, cold: p99", "mount_random_p99_ms"),
        ("random 64 KiB pread, local disk, cold: p50", "local_random_p50_ms"),
        ("random 64 KiB pread, local disk, cold: p99", "local_random_p99_ms"),
    ]
    for label, k in ms_rows:
        print(f"{label:56} {m[k]:7.2f}ms {'':8}   " + " ".join(f"{x:.1f}" for x in res["runs"][k]))
    rss = res["rss_kib"]
    print(f"{'daemon peak RSS (VmHWM), reads (max over read mounts)':56} {rss['reads'] / 1024:6.1f}MiB")
    print(f"{'daemon peak RSS (VmHWM), cp into the mount':56} {rss['cp'] / 1024:6.1f}MiB")
    keys = ("tiledb_reads", "tiledb_bytes", "cache_hits", "cache_misses", "cache_evictions",
            "prefetch_chunks", "prefetch_dropped", "reads_served", "bytes_served", "opens",
            "disk_cache_hits", "disk_cache_fills", "disk_cache_read_bytes", "passthrough_opens",
            "passthrough_fallbacks")
    for what, st in [("the first cold sequential read", res["stats"]["after_cold_read"][0]),
                     ("the first load_file", res["stats"]["after_load_file"]),
                     ("the first header-only open", res["stats"]["after_first_header_open"]),
                     (f"the first {RANDOM_READS} random reads", res["stats"]["after_random_reads"]),
                     ("the fill, a warm read and a load_file", res["stats"]["disk_cache_after_fill_and_warm"]),
                     ("a read on a fresh daemon, disk cache warm", res["stats"]["disk_cache_fresh_daemon_read"])]:
        print(f"counters after {what}: " + ", ".join(f"{k}={st[k]}" for k in keys if k in st))
    if not res["bytes_identical"]:
        print("WARNING: the bytes read through the mount differ from the local file")

    def paired(local, mount):
        """The median of the per-run ratios t_local/t_mount, each pair
        measured one right after the other: this machine's speed drifts
        between phases by more than the gaps measured."""
        return med([x / y for x, y in zip(res["runs"][local], res["runs"][mount])])

    ratios = [
        ("cold read through the mount / direct TileDB read (t_direct/t_mount)",
         m["direct_export_cold_s"] / m["mount_read_cold_s"], ">=", 0.9),
        ("warm re-read through the mount / warm local read (t_local/t_mount)",
         m["local_read_warm_s"] / m["mount_read_warm_s"], ">=", 0.8),
        ("cp into the mount / modelfs import (t_import/t_cp)",
         m["import_s"] / m["mount_cp_in_s"], ">=", 0.8),
        ("header-only open on a mount that is up (first open, cold), ms", m["mount_header_first_ms"], "<", 50),
        ("daemon peak RSS during reads, MiB", rss["reads"] / 1024, "<", 256),
        ("daemon peak RSS during cp, MiB", rss["cp"] / 1024, "<", 256),
        ("daemon peak RSS during reads, MiB (--cache-size 112 + 128)", rss["reads"] / 1024, "<=", 240),
        ("direct TileDB read / cold local read (t_local/t_direct)",
         m["local_read_cold_s"] / m["direct_export_cold_s"], None, None),
        ("warm re-read, passthrough / warm local read beside it (paired)",
         paired("pair_local_read_warm_s", "dc_warm_read_s"), ">=", 0.95),
        ("load_file warm, passthrough / local beside it (paired)",
         paired("local_load_file_warm_s", "dc_load_file_warm_s"), ">=", 0.95),
        ("disk cache warm, page cold, fresh daemon / cold local read (paired)",
         paired("pair_dc_local_read_cold_s", "dc_page_cold_read_s"), ">=", 0.9),
        ("load_file, disk cache warm, page cold / local cold",
         m["local_load_file_cold_s"] / m["dc_load_file_cold_s"], None, None),
        ("first cold read, no disk cache / cold local read (paired)",
         paired("pair_local_read_cold_s", "mount_read_cold_s"), ">=", 0.7),
        ("first cold read filling the disk cache / cold local read",
         m["local_read_cold_s"] / m["dc_fill_read_cold_s"], None, None),
        ("daemon CPU per GiB, cold read, no disk cache, s",
         m["mount_read_cold_daemon_cpu_s"] / (size / (1 << 30)), None, None),
        ("daemon CPU per GiB, cold read filling the disk cache, s",
         m["dc_fill_daemon_cpu_s"] / (size / (1 << 30)), None, None),
    ]
    print()
    res["targets"] = []
    for label, v, op, target in ratios:
        if op is None:
            verdict, tgt = "info", ""
        else:
            ok = {">=": v >= target, "<": v < target, "<=": v <= target}[op]
            verdict, tgt = ("PASS" if ok else "FAIL"), f"{op} {target}"
        res["targets"].append({"what": label, "value": v, "target": tgt, "verdict": verdict})
        print(f"{label:72} {v:8.2f}  {tgt:>7}  {verdict}")

    if git_now() != a.built_from:
        print(f"note: the binary was built from {a.built_from}; the tree is now at {git_now()}")
    res["config"] = {
        "file_bytes": size, "runs": a.runs, "binary": a.bin, "cache_size": "112M (default)",
        "built_from": a.built_from, "git_at_end": git_now(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "cpus": os.cpu_count(),
        "loadavg_start": res["loadavg_start"], "loadavg_end": os.getloadavg(),
    }
    with open(Path(a.out) / "bench.json", "w") as f:
        json.dump(res, f, indent=1)
    print(f"\nall figures: {Path(a.out) / 'bench.json'}")


def main():
    if len(sys.argv) >= 2 and sys.argv[1] == "make":
        make(Path(sys.argv[2]), int(sys.argv[3]))
        return
    p = argparse.ArgumentParser()
    p.add_argument("cmd", choices=["run"])
    for opt in ("--bin", "--out", "--file", "--registry"):
        p.add_argument(opt, required=True)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--built-from", default="unknown", help="git state the binary was built from")
    try:
        run(p.parse_args())
    except KeyboardInterrupt:
        say("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
