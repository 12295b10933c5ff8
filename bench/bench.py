#!/usr/bin/env python3
"""Benchmark recoveryd's data path against cp -a and rsync on a generated node-like tree.

Usage (as root, from the project root):  bench/run.sh [--files N] [--big-mib M] [--dir DIR]

Everything runs in one process, on one generated tree, with the page cache dropped before each
timed command, and prints each measurement as a ratio:

  backup            recoveryctl --offline backup  vs  cp -a  (both followed by sync)
  restore 5%        restore-files after changing 5% of files  vs  rsync -aAXHc --delete
  restore 0%        restore-files with nothing changed  vs  the same rsync
  second backup     backup after changing 1% of files  vs  the first backup
  verify            recoveryctl verify throughput in MiB/s
  peak memory       maximum resident set size of each recoveryctl command
"""

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTL = os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "recoveryctl")
TREES = ["etc", "usr/local", "var/lib/kubelet"]
LABEL = b"system_u:object_r:etc_t:s0\0"


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(cmd, **kw):
    """Run cmd after dropping caches; return (seconds, peak RSS in KiB, stdout).

    The peak RSS comes from GNU time, which execs the command from a small process (a child
    forked from this Python process would report Python's own size)."""
    drop_caches()
    rss_file = "/tmp/recoveryd-bench.rss"
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-o", rss_file, "-f", "%M"] + cmd, capture_output=True, **kw)
    dt = time.perf_counter() - t0
    out, err = p.stdout.decode(), p.stderr.decode()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}{err}")
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    return dt, rss, out


def timed_shell(script):
    return timed(["bash", "-c", script])


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)
    os.setxattr(path, "security.selinux", LABEL)


def generate(node, files, big_mib, rng):
    """A tree shaped like a node: many small configs, some medium files, a few big binaries,
    a sparse file, symlinks, hardlinks and xattrs on everything."""
    total = 0
    n = 0
    shares = {"etc": 0.55, "usr/local": 0.25, "var/lib/kubelet": 0.20}
    for tree, share in shares.items():
        count = int(files * share)
        for i in range(count):
            d = os.path.join(node, tree, f"d{i % 97:02d}", f"s{i % 7}")
            size = int(rng.lognormvariate(7.0, 1.2)) if tree == "etc" else int(rng.lognormvariate(9.0, 1.3))
            size = min(size, 2 << 20)
            data = rng.randbytes(size)
            p = os.path.join(d, f"f{i}.conf")
            write(p, data)
            if i % 10 == 0:
                os.setxattr(p, "user.checksum", str(i).encode())
            total += size
            n += 1
        for i in range(0, count, 50):
            link = os.path.join(node, tree, f"d{i % 97:02d}", f"link{i}")
            os.symlink(f"s{i % 7}/f{i}.conf", link)
        for i in range(0, count, 200):
            src = os.path.join(node, tree, f"d{i % 97:02d}", f"s{i % 7}", f"f{i}.conf")
            os.link(src, src + ".hard")
    for i in range(4):
        p = os.path.join(node, "usr/local/bin", f"binary{i}")
        write(p, rng.randbytes(big_mib * (1 << 20) // 4))
        total += big_mib * (1 << 20) // 4
        n += 1
    sparse = os.path.join(node, "var/lib/kubelet", "sparse.img")
    write(sparse, b"")
    with open(sparse, "r+b") as f:
        f.truncate(1 << 30)
        for off in range(0, 1 << 30, 128 << 20):
            f.seek(off)
            f.write(rng.randbytes(1 << 20))
            total += 1 << 20
    n += 1
    return n, total


def all_files(node):
    out = []
    for tree in TREES:
        for dp, _, fs in os.walk(os.path.join(node, tree)):
            for f in fs:
                p = os.path.join(dp, f)
                if os.path.isfile(p) and not os.path.islink(p) and not f.endswith(".img"):
                    out.append(p)
    out.sort()
    return out


def change(node, fraction, seed):
    """Rewrite a deterministic fraction of the files (same size, new content)."""
    rng = random.Random(seed)
    files = all_files(node)
    picked = rng.sample(files, max(1, int(len(files) * fraction)))
    for p in picked:
        size = os.path.getsize(p)
        with open(p, "r+b") as f:
            f.write(rng.randbytes(max(size, 1)))
    return len(picked)


def rsync(src_root, dst_root):
    cmds = []
    for t in TREES:
        cmds.append(f"rsync -aAXHc --delete {src_root}/{t}/ {dst_root}/{t}/")
    return " && ".join(cmds) + " && sync"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=12000)
    ap.add_argument("--big-mib", type=int, default=240, help="total size of the big binaries")
    ap.add_argument("--dir", default="/var/tmp/recoveryd-bench")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (owners, xattrs, dropping caches)")

    shutil.rmtree(args.dir, ignore_errors=True)
    node = os.path.join(args.dir, "node")
    os.makedirs(os.path.join(node, "var/recovery"))
    os.makedirs(os.path.join(node, "proc/sys/kernel/random"))
    with open(os.path.join(node, "proc/sys/kernel/random/boot_id"), "w") as f:
        f.write("bench\n")
    config = os.path.join(args.dir, "config.toml")
    with open(config, "w") as f:
        f.write(f'root = "{node}"\n[host]\nsystemd = false\nostree = false\ncluster = false\n'
                f'[backup]\nspace_margin = 0\nkeep = 3\n')
    ctl = [CTL, "--config", config]

    rng = random.Random(42)
    t0 = time.perf_counter()
    n, total = generate(node, args.files, args.big_mib, rng)
    print(f"tree: {n} files, {total / (1 << 20):.0f} MiB of data (+ a 1 GiB sparse file), "
          f"generated in {time.perf_counter() - t0:.1f}s under {node}")

    results = []

    def row(name, ours, theirs, target, unit="s"):
        ratio = ours / theirs if theirs else float("inf")
        ok = "ok" if ratio <= target else "MISSED"
        results.append((name, ours, theirs, ratio, target, ok))
        print(f"{name:<34} ours {ours:8.2f}{unit}  reference {theirs:8.2f}{unit}  ratio {ratio:5.2f} "
              f"(target <= {target}) {ok}", flush=True)

    # Backup vs cp -a.
    cp_dst = os.path.join(args.dir, "cp")
    cp_script = " && ".join(f"mkdir -p {cp_dst}/{os.path.dirname(t)} && cp -a {node}/{t} {cp_dst}/{t}" for t in TREES) + " && sync"
    t_cp, _, _ = timed_shell(cp_script)
    t_b1, rss_b1, _ = timed(ctl + ["--offline", "backup"])
    subprocess.run(["sync"], check=True)
    row("backup (incl. hash, verify) vs cp -a", t_b1, t_cp, 1.0)

    # Verify throughput.
    t_v, rss_v, out = timed(ctl + ["verify", "--json"])
    report = json.loads(out)
    mib = report["bytes_checked"] / (1 << 20)
    print(f"{'verify':<34} {mib / t_v:8.0f} MiB/s ({mib:.0f} MiB, {report['files_checked']} files in {t_v:.2f}s)")

    # Restore after changing 5% vs rsync -aAXHc --delete from the cp -a copy.
    changed = change(node, 0.05, seed=5)
    t_r5, rss_r5, _ = timed(ctl + ["--offline", "restore-files"])
    change(node, 0.05, seed=5)
    t_rs5, _, _ = timed_shell(rsync(cp_dst, node))
    row(f"restore, {changed} files changed (5%)", t_r5, t_rs5, 0.33)

    # Restore with nothing changed vs the same rsync.
    t_r0, rss_r0, _ = timed(ctl + ["--offline", "restore-files"])
    t_rs0, _, _ = timed_shell(rsync(cp_dst, node))
    row("restore, nothing changed", t_r0, t_rs0, 0.2)

    # Second backup with 1% changed vs the first backup.
    changed = change(node, 0.01, seed=1)
    t_b2, rss_b2, _ = timed(ctl + ["--offline", "backup"])
    row(f"second backup, {changed} files changed (1%)", t_b2, t_b1, 0.1)

    print(f"{'peak memory (max RSS)':<34} backup {rss_b1 / 1024:.0f} MiB, second backup {rss_b2 / 1024:.0f} MiB, "
          f"verify {rss_v / 1024:.0f} MiB, restore {max(rss_r5, rss_r0) / 1024:.0f} MiB")
    missed = [r for r in results if r[5] != "ok"]
    print("all targets met" if not missed else f"targets missed: {', '.join(r[0] for r in missed)}")


if __name__ == "__main__":
    main()
