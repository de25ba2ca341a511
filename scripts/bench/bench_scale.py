"""The SCALE column of scripts/bench.sh: directories of many entries.

  bench_scale.py --bin B --out DIR --base URI --label local|s3
                 [--entries 10000] [--small 100] [--ops 20]
                 [--grow 10000] [--remove 1000] [--admin-port P]

BASE is a local directory or an s3:// prefix (TileDB reaches Garage through
the TILEDB_* and AWS_* variables of scripts/garage.sh's env file). Measures:
  - registries whose root holds ENTRIES and SMALL model directories, each
    made through the registry API (TileDB-Py: the directories, then one
    group write naming them all); on a fresh mount of each: mount start-up,
    `ls` of the root, `ls -l` of the root (another fresh mount), then OPS
    `mkdir`s and OPS create-and-close of a 3-byte file beside them (medians;
    on S3 also the requests Garage answered for each);
  - on S3 (CHANGED > 0): CHANGED of the ENTRIES directories get a mode
    written by TileDB-Py (the stats the mount kept of them no longer hold),
    then `ls -l` on a fresh mount (which reads those one by one and keeps
    their stats) and on the next fresh mount;
  - growth through a mount: GROW `mkdir`s one after another in an empty
    registry, then REMOVE `rmdir`s; the median time of the ten around the
    100th and of the last ten, and the bytes the root directory's own files
    (member lists and metadata) hold afterwards, once the mount has deleted
    what its changes replaced.
Prints a table with the targets, writes DIR/bench-scale-LABEL.json.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import med, mount, run_cmd, say  # noqa: E402
from bench_s3 import Requests  # noqa: E402

# Seconds the mount keeps replaced member lists before deleting them
# (RETIRE_GRACE in src/tiledb/group_history.rs), with a margin.
RETIRE_WAIT_S = 5


def make_registry(uri, count):
    """A root group naming `count` model directories in one group write."""
    import tiledb

    tiledb.Group.create(uri)
    names = [f"model-{i:05d}" for i in range(count)]
    for n in names:
        tiledb.Group.create(f"{uri}/{n}")
    with tiledb.Group(uri, "w") as g:
        for n in names:
            g.add(n, name=n, relative=True)


def own_bytes(uri):
    """Bytes in the group's `__group/`, `__meta/` and `__modelfs_journal/`
    folders."""
    import tiledb

    vfs = tiledb.VFS()
    total = 0
    for sub in ("__group", "__meta", "__modelfs_journal"):
        d = f"{uri}/{sub}"
        if not vfs.is_dir(d):
            continue
        for f in vfs.ls(d):
            total += vfs.file_size(f)
    return total


def timed_op(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def write_small(path):
    with open(path, "wb") as f:
        f.write(b"hi\n")


def at_size(a, uri, count, res):
    """Mount start, ls, ls -l, mkdir and create at `count` siblings."""
    out, key = Path(a.out), f"{count}"
    log = out / f"mount-scale-{a.label}.log"
    mnt = out / f"mnt-scale-{a.label}"
    t = time.perf_counter()
    with mount(a.bin, uri, mnt, log, False) as m:
        res[f"mount_start_{key}_s"] = time.perf_counter() - t
        dt = timed_op(lambda: os.listdir(m.path))
        listed = len(os.listdir(m.path))
        if listed != count:
            raise SystemExit(f"bench: listed {listed} entries, expected {count}")
        res[f"ls_{key}_s"] = dt
    with mount(a.bin, uri, mnt, log, False) as m:
        if a.admin_port:
            with Requests(a.admin_port) as rq:
                res[f"ls_l_{key}_s"] = run_cmd(["ls", "-l", str(m.path)])
            res[f"requests_ls_l_{key}"] = rq.total
        else:
            res[f"ls_l_{key}_s"] = run_cmd(["ls", "-l", str(m.path)])
        mk, cr, mk_rq, cr_rq = [], [], [], []
        for i in range(a.ops):
            if a.admin_port:
                with Requests(a.admin_port) as rq:
                    mk.append(timed_op(lambda: os.mkdir(m.path / f"new-{i}")))
                mk_rq.append(rq.total)
                with Requests(a.admin_port) as rq:
                    cr.append(timed_op(lambda: write_small(m.path / f"new-{i}.txt")))
                cr_rq.append(rq.total)
            else:
                mk.append(timed_op(lambda: os.mkdir(m.path / f"new-{i}")))
                cr.append(timed_op(lambda: write_small(m.path / f"new-{i}.txt")))
        res[f"mkdir_{key}_ms"] = med(mk) * 1000
        res[f"create_{key}_ms"] = med(cr) * 1000
        if a.admin_port:
            res[f"requests_mkdir_{key}"] = med(mk_rq)
            res[f"requests_create_{key}"] = med(cr_rq)


def changed(a, uri, res):
    """`ls -l` after CHANGED directories changed behind the mounts' back."""
    import numpy as np
    import tiledb

    out = Path(a.out)
    log = out / f"mount-scale-{a.label}.log"
    step = max(1, a.entries // a.changed)
    t = time.perf_counter()
    for i in range(0, a.entries, step)[: a.changed]:
        with tiledb.Group(f"{uri}/model-{i:05d}", "w") as g:
            g.meta["modelfs.mode"] = np.uint64(0o750)
    res["change_s"] = time.perf_counter() - t
    for when in ("first", "next"):
        with mount(a.bin, uri, out / f"mnt-scale-{a.label}", log, False) as m:
            with Requests(a.admin_port) as rq:
                res[f"ls_l_changed_{when}_s"] = run_cmd(["ls", "-l", str(m.path)])
            res[f"requests_ls_l_changed_{when}"] = rq.total


def growth(a, uri, res):
    """GROW mkdirs, then REMOVE rmdirs, one after another through a mount."""
    import tiledb

    out = Path(a.out)
    tiledb.Group.create(uri)
    log = out / f"mount-scale-{a.label}.log"
    with mount(a.bin, uri, out / f"mnt-scale-{a.label}", log, False) as m:
        times = []
        t0 = time.perf_counter()
        for i in range(a.grow):
            times.append(timed_op(lambda: os.mkdir(m.path / f"run-{i:05d}")))
            if (i + 1) % 1000 == 0:
                say(f"{a.label}: {i + 1} mkdirs, the last one {times[-1] * 1000:.0f} ms")
        res["grow_s"] = time.perf_counter() - t0
        removes = []
        for i in range(0, a.grow, max(1, a.grow // a.remove))[: a.remove]:
            removes.append(timed_op(lambda: os.rmdir(m.path / f"run-{i:05d}")))
        res["remove_last10_ms"] = med(removes[-10:]) * 1000
        around = min(100, a.grow // 2)
        res["mkdir_near_100th_ms"] = med(times[max(0, around - 5) : around + 5]) * 1000
        res["mkdir_last10_ms"] = med(times[-10:]) * 1000
        res["mkdir_times_ms_every_500"] = [round(times[i] * 1000, 1) for i in range(0, len(times), 500)]
        res["grown_entries"] = len(os.listdir(m.path))
        time.sleep(RETIRE_WAIT_S)
        res["membership_bytes"] = own_bytes(uri)


def report(res, a):
    local = a.label == "local"
    big, small = str(a.entries), str(a.small)
    rows = [
        (f"mount start-up, {a.entries:,} entries / {a.small}", f"mount_start_{big}_s", f"mount_start_{small}_s", "s"),
        (f"ls of the root, fresh mount, {a.entries:,} / {a.small}", f"ls_{big}_s", f"ls_{small}_s", "s"),
        (f"ls -l of the root, fresh mount, {a.entries:,} / {a.small}", f"ls_l_{big}_s", f"ls_l_{small}_s", "s"),
        (f"mkdir at {a.entries:,} siblings / at {a.small}", f"mkdir_{big}_ms", f"mkdir_{small}_ms", "ms"),
        (f"create+close at {a.entries:,} siblings / at {a.small}", f"create_{big}_ms", f"create_{small}_ms", "ms"),
    ]
    print(f"\nSCALE ({a.label}), medians; built from {a.built_from}")
    for what, k_big, k_small, unit in rows:
        print(f"  {what:55} {res[k_big]:9.3f} {unit} / {res[k_small]:9.3f} {unit}  ({res[k_big] / res[k_small]:.2f}x)")
    if a.admin_port:
        for op in ("mkdir", "create"):
            print(
                f"  S3 requests per {op}, {a.entries:,} / {a.small} siblings"
                f"{'':20} {res[f'requests_{op}_{big}']:6.0f} / {res[f'requests_{op}_{small}']:6.0f}"
            )
    if a.admin_port:
        print(
            f"  S3 requests per ls -l, {a.entries:,} / {a.small}{'':27}"
            f" {res[f'requests_ls_l_{big}']:6.0f} / {res[f'requests_ls_l_{small}']:6.0f}"
        )
    if "ls_l_changed_first_s" in res:
        print(
            f"  ls -l after {a.changed:,} of the {a.entries:,} changed behind the mounts' back:"
            f" {res['ls_l_changed_first_s']:.2f} s ({res['requests_ls_l_changed_first']:.0f} requests),"
            f" the next fresh mount {res['ls_l_changed_next_s']:.2f} s ({res['requests_ls_l_changed_next']:.0f})"
        )
    if "grow_s" in res:
        print(
            f"  growth through the mount: {a.grow:,} mkdirs in {res['grow_s']:.0f} s; mkdir near the 100th"
            f" {res['mkdir_near_100th_ms']:.1f} ms, last ten {res['mkdir_last10_ms']:.1f} ms"
            f" ({res['mkdir_last10_ms'] / res['mkdir_near_100th_ms']:.2f}x); rmdir, last ten {res['remove_last10_ms']:.1f} ms"
        )
        print(
            f"  membership storage after {a.grow:,} mkdirs and {a.remove:,} rmdirs:"
            f" {res['membership_bytes'] / 1e6:.2f} MB"
        )
    limit_op, limit_ls, limit_lsl = (50, 1, 2) if local else (250, 2, 5)
    targets = [
        (f"mkdir at {a.entries:,} within 2x of at {a.small}", res[f"mkdir_{big}_ms"] / res[f"mkdir_{small}_ms"], 2),
        (f"create at {a.entries:,} within 2x of at {a.small}", res[f"create_{big}_ms"] / res[f"create_{small}_ms"], 2),
        (f"mkdir at {a.entries:,} siblings, ms", res[f"mkdir_{big}_ms"], limit_op),
        (f"create+close at {a.entries:,} siblings, ms", res[f"create_{big}_ms"], limit_op),
        (f"ls of {a.entries:,} entries, fresh mount, s", res[f"ls_{big}_s"], limit_ls),
        (f"ls -l of {a.entries:,} entries, fresh mount, s", res[f"ls_l_{big}_s"], limit_lsl),
        (
            f"mount start-up at {a.entries:,} / at {a.small} entries",
            res[f"mount_start_{big}_s"] / res[f"mount_start_{small}_s"],
            1.5,
        ),
    ]
    if "grow_s" in res:
        targets += [
            (
                f"the {a.grow:,}th mkdir within 2x of the 100th",
                res["mkdir_last10_ms"] / res["mkdir_near_100th_ms"],
                2,
            ),
            (f"membership storage after the growth, MB", res["membership_bytes"] / 1e6, 2),
        ]
    res["targets"] = []
    print("  targets:")
    for what, value, limit in targets:
        verdict = "PASS" if value <= limit else "FAIL"
        res["targets"].append({"what": what, "value": value, "target": f"<= {limit}", "verdict": verdict})
        print(f"    {verdict}  {what}: {value:.2f} (target <= {limit})")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bin", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--base", required=True)
    p.add_argument("--label", required=True)
    p.add_argument("--entries", type=int, default=10000)
    p.add_argument("--small", type=int, default=100)
    p.add_argument("--ops", type=int, default=20)
    p.add_argument("--grow", type=int, default=10000)
    p.add_argument("--remove", type=int, default=1000)
    p.add_argument("--admin-port", type=int, default=0)
    p.add_argument("--changed", type=int, default=0)
    p.add_argument("--built-from", default="?")
    a = p.parse_args()
    base = a.base.rstrip("/")
    stamp = int(time.time())
    res = {"label": a.label, "built_from": a.built_from}
    for count in (a.small, a.entries):
        uri = f"{base}/scale-{count}-{stamp}"
        say(f"{a.label}: a registry of {count:,} model directories (registry API)")
        t = time.perf_counter()
        make_registry(uri, count)
        res[f"make_{count}_s"] = time.perf_counter() - t
        say(f"{a.label}: mount, ls, ls -l, mkdir and create at {count:,} entries")
        at_size(a, uri, count, res)
        if count == a.entries and a.changed and a.admin_port:
            say(f"{a.label}: ls -l after {a.changed:,} directories changed behind the mounts' back")
            changed(a, uri, res)
    if a.grow:
        say(f"{a.label}: {a.grow:,} mkdirs and {a.remove:,} rmdirs through a mount")
        growth(a, f"{base}/scale-grow-{stamp}", res)
    report(res, a)
    Path(a.out, f"bench-scale-{a.label}.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
