#!/usr/bin/env python3
"""Benchmark recoveryd's data path against the tools an operator would pick instead, on a
generated node-like tree, at two scales, in one run.

Usage (as root, from the project root):  bench/run.sh [--files N] [--big-mib M] [--scales 1,4]
                                                      [--repeat N] [--dir DIR] [--keep]

Peers: cp -a, rsync -aAXH (and -c --delete for restores, --link-dest for a second backup),
restic and borg (Debian packages; bench/run.sh installs them), each with its defaults. For
every scale it prints each figure, its ratio to the peer and the target, cold (page cache
dropped before the command) and, for restores, warm (the same restore just ran, unmeasured,
right before); the peak RSS
of every command; and at the end how every time grew from the first scale to the last.

Every figure is the median of `--repeat` rounds (3 by default; the spread is printed beside
it): the disk of a small VM varies by a third between two runs of the same command, enough to
decide a ratio on its own. In each round every tool runs once, one after the other, on the
same state (a first backup into an empty destination, a second backup after its own 1 % of
files rewritten, a restore after the same 5 % changed), so that a slow moment of the disk
falls on one round of all of them rather than on all rounds of one. The full restores of
restic and borg, which have no target, run once.

  first backup        recoveryctl --offline backup  vs  cp -a, rsync -aAXH, restic, borg (+ sync)
  second backup       after rewriting 1% of files   vs  the first; rsync --link-dest, restic, borg
  restore 5%          restore-files after 5% changed vs  rsync -aAXHc --delete; restic, borg (full)
  restore 0%          restore-files, nothing changed vs  the same rsync
  verify              recoveryctl verify throughput in MiB/s
"""

import argparse
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTL = os.environ.get("RECOVERYCTL") or os.path.join(
    os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "recoveryctl")
TREES = ["etc", "usr/local", "var/lib/kubelet"]
LABEL = b"system_u:object_r:etc_t:s0\0"


def drop_caches():
    subprocess.run(["sync"], check=True)
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
    except OSError:
        pass


def timed(cmd, cold=True, env=None, **kw):
    """Run cmd (after dropping caches when cold); return (seconds, peak RSS in KiB, stdout).

    The peak RSS comes from GNU time, which execs the command from a small process (a child
    forked from this Python process would report Python's own size)."""
    if cold:
        drop_caches()
    else:
        subprocess.run(["sync"], check=True)
    rss_file = "/tmp/recoveryd-bench.rss"
    t0 = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-o", rss_file, "-f", "%M"] + cmd, capture_output=True,
                       env=env, **kw)
    dt = time.perf_counter() - t0
    out, err = p.stdout.decode(), p.stderr.decode()
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out}{err}")
    with open(rss_file) as f:
        rss = int(f.read().split()[-1])
    return dt, rss, out


def timed_shell(script, cold=True, env=None):
    return timed(["bash", "-c", script], cold=cold, env=env)


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


def rsync(src_root, dst_root, flags="-aAXHc --delete", extra=""):
    cmds = []
    for t in TREES:
        os.makedirs(os.path.join(dst_root, t), exist_ok=True)
        link = f"--link-dest={extra}/{t}/" if extra else ""
        cmds.append(f"rsync {flags} {link} {src_root}/{t}/ {dst_root}/{t}/")
    return " && ".join(cmds) + " && sync"


def tool_env(d):
    env = dict(os.environ)
    env["RESTIC_PASSWORD"] = "bench"
    env["RESTIC_CACHE_DIR"] = os.path.join(d, "restic-cache")
    env["BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK"] = "yes"
    env["BORG_BASE_DIR"] = os.path.join(d, "borg-home")
    return env


class Results:
    def __init__(self):
        self.rows = []
        self.times = {}
        self.rss = {}

    def figure(self, scale, name, samples, rss):
        """A figure from its rounds' times: the median, and the largest peak RSS."""
        seconds = statistics.median(samples)
        self.times[(scale, name)] = seconds
        self.rss[(scale, name)] = rss
        spread = (f"  ({min(samples):.2f}-{max(samples):.2f} in {len(samples)})"
                  if len(samples) > 1 else "")
        print(f"  {name:<44} {seconds:8.2f}s  peak RSS {rss / 1024:7.1f} MiB{spread}", flush=True)

    def limit(self, scale, name, value, target, unit):
        """An absolute target: `value` (in `unit`) at most `target`."""
        ok = "ok" if value <= target else "MISSED"
        self.rows.append((scale, name, value, target, ok))
        print(f"  {name:<62} {value:6.3f} {unit} (target <= {target}) {ok}", flush=True)

    def ratio(self, scale, name, ours, theirs, target):
        r = self.times[(scale, ours)] / self.times[(scale, theirs)]
        ok = "ok" if target is None or r <= target else "MISSED"
        t = f"target <= {target}" if target is not None else "no target"
        self.rows.append((scale, name, r, target, ok))
        print(f"  ratio {name:<56} {r:6.2f}  ({t}) {ok}", flush=True)


def one_scale(args, scale, res):
    d = os.path.join(args.dir, f"x{scale}")
    shutil.rmtree(d, ignore_errors=True)
    node = os.path.join(d, "node")
    os.makedirs(os.path.join(node, "var/recovery"))
    os.makedirs(os.path.join(node, "proc/sys/kernel/random"))
    with open(os.path.join(node, "proc/sys/kernel/random/boot_id"), "w") as f:
        f.write("bench\n")
    config = os.path.join(d, "config.toml")
    with open(config, "w") as f:
        f.write(f'root = "{node}"\n[host]\nsystemd = false\nostree = false\ncluster = false\n'
                f'[backup]\nspace_margin = 0\nkeep = {args.repeat + 2}\n')
    ctl = [CTL, "--config", config]
    env = tool_env(d)
    rng = random.Random(42)
    t0 = time.perf_counter()
    n, total = generate(node, args.files * scale, args.big_mib * scale, rng)
    entries = sum(len(fs) + len(ds) for t in TREES for _, ds, fs in os.walk(os.path.join(node, t)))
    print(f"scale x{scale}: {n} files ({entries} entries), {total / (1 << 20):.0f} MiB of data "
          f"(+ a 1 GiB sparse file), generated in {time.perf_counter() - t0:.1f}s", flush=True)
    srcs = " ".join(os.path.join(node, t) for t in TREES)
    restic_repo = os.path.join(d, "restic")
    borg_repo = os.path.join(d, "borg")
    have = {t: shutil.which(t) is not None for t in ("restic", "borg")}

    def rounds(tools, prepare=None, reps=args.repeat):
        """Measure every tool `reps` times, in rounds: `prepare(round)` first, then each tool
        (name, command or a function of the round giving it, cold, shell, and what to do
        before it, unmeasured, or None) once. Returns the last round's output of each."""
        samples = {t[0]: [] for t in tools}
        rss = {t[0]: 0 for t in tools}
        outs = {}
        for r in range(reps):
            if prepare:
                prepare(r)
            for name, cmd, cold, shell, before in tools:
                if before:
                    before()
                cmd = cmd(r) if callable(cmd) else cmd
                t, peak, out = (timed_shell(cmd, cold=cold, env=env) if shell
                                else timed(cmd, cold=cold, env=env))
                samples[name].append(t)
                rss[name] = max(rss[name], peak)
                outs[name] = out
        for name, *_ in tools:
            res.figure(scale, name, samples[name], rss[name])
        return outs

    def fig(name, cmd, cold=True, shell=False):
        return rounds([(name, cmd, cold, shell, None)], reps=1)[name]

    def empty(path, trees=False):
        """An empty destination (with the trees' directories, for rsync)."""
        def clear():
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            for t in TREES if trees else ():
                os.makedirs(os.path.join(path, t))
        return clear

    def fresh_repo(tool, repo):
        def init():
            shutil.rmtree(repo, ignore_errors=True)
            cmd = (["restic", "init", "-q", "-r", repo] if tool == "restic"
                   else ["borg", "init", "-e", "none", repo])
            subprocess.run(cmd, env=env, check=True, capture_output=True)
        return init

    # First backup, each into an empty destination.
    cp_dst = os.path.join(d, "cp")
    rs_dst = os.path.join(d, "rsync1")
    state = os.path.join(node, "var/recovery")
    first = [
        ("cp -a", " && ".join(f"mkdir -p {cp_dst}/{os.path.dirname(t)} && cp -a {node}/{t} {cp_dst}/{t}"
                              for t in TREES) + " && sync", True, True, empty(cp_dst)),
        ("rsync -aAXH", rsync(node, rs_dst, "-aAXH"), True, True, empty(rs_dst, trees=True)),
        ("recoveryd backup", ctl + ["--offline", "backup"], True, False, empty(state)),
    ]
    if have["restic"]:
        first.append(("restic backup", f"restic -q -r {restic_repo} backup {srcs} && sync", True,
                      True, fresh_repo("restic", restic_repo)))
    if have["borg"]:
        first.append(("borg create", f"borg create {borg_repo}::one {srcs} && sync", True, True,
                      fresh_repo("borg", borg_repo)))
    rounds(first)
    res.ratio(scale, "first backup / cp -a", "recoveryd backup", "cp -a", 0.9)
    res.ratio(scale, "first backup / rsync -aAXH", "recoveryd backup", "rsync -aAXH", 1.0)
    for peer, name in (("restic", "restic backup"), ("borg", "borg create")):
        if have[peer]:
            res.ratio(scale, f"first backup / {name}", "recoveryd backup", name, None)

    out = rounds([("recoveryd verify", ctl + ["verify", "--json"], True, False, None)])[
        "recoveryd verify"]
    report = json.loads(out)
    mib = report["bytes_checked"] / (1 << 20)
    print(f"  verify: {mib / res.times[(scale, 'recoveryd verify')]:.0f} MiB/s "
          f"({mib:.0f} MiB, {report['files_checked']} files)")

    # Second backup, each round after its own 1 % rewritten.
    rewritten = []
    rs2_dst = os.path.join(d, "rsync2")
    second = [
        ("recoveryd second backup", ctl + ["--offline", "backup"], True, False, None),
        ("rsync -aAXH --link-dest", rsync(node, rs2_dst, "-aAXH", rs_dst), True, True,
         empty(rs2_dst, trees=True)),
    ]
    if have["restic"]:
        second.append(("restic second backup", f"restic -q -r {restic_repo} backup {srcs} && sync",
                       True, True, None))
    if have["borg"]:
        second.append(("borg second create",
                       lambda r: f"borg create {borg_repo}::two-{r} {srcs} && sync", True, True,
                       None))
    rounds(second, lambda r: rewritten.append(change(node, 0.01, seed=1 + r)))
    print(f"  ({', '.join(map(str, rewritten))} files rewritten)")
    res.ratio(scale, "second backup / first backup", "recoveryd second backup", "recoveryd backup", 0.1)
    if have["restic"]:
        res.ratio(scale, "second backup / restic second backup", "recoveryd second backup",
                  "restic second backup", 0.25)
    if have["borg"]:
        res.ratio(scale, "second backup / borg second create", "recoveryd second backup",
                  "borg second create", None)
    # The cp -a copy follows the node, so that rsync restores from the same state.
    subprocess.run(["bash", "-c", rsync(node, cp_dst)], check=True)

    restore = ctl + ["--offline", "restore-files", "--yes"]
    restore_rsync = rsync(cp_dst, node)

    def prime(cmd, shell, fraction):
        """Warm: the same restore just ran (the tool's binary, manifest, store or copy in the
        page cache). Without this, the cold run of the other tool, in between, would have
        dropped the cache."""
        if fraction:
            change(node, fraction, seed=5)
        subprocess.run(["bash", "-c", cmd] if shell else cmd, check=True, capture_output=True,
                       env=env)

    # Restore after 5 % changed, cold then warm; the peers restore the same change.
    changed = []

    def before_restore(cmd, shell, cold, fraction):
        def before():
            if not cold:
                prime(cmd, shell, fraction)
            if fraction:
                changed.append(change(node, fraction, seed=5))
        return before

    for temp, cold in (("cold", True), ("warm", False)):
        rounds([(f"{tool} 5% {temp}", cmd, cold, shell, before_restore(cmd, shell, cold, 0.05))
                for tool, cmd, shell in (("recoveryd restore", restore, False),
                                         ("rsync -aAXHc --delete", restore_rsync, True))])
    print(f"  ({changed[-1]} files changed)")
    res.ratio(scale, "restore 5% / rsync -aAXHc --delete, warm", "recoveryd restore 5% warm",
              "rsync -aAXHc --delete 5% warm", 0.25)
    res.ratio(scale, "restore 5% / rsync -aAXHc --delete, cold", "recoveryd restore 5% cold",
              "rsync -aAXHc --delete 5% cold", 0.15)
    if have["restic"]:
        out_dir = os.path.join(d, "restic-restore")
        fig("restic restore (full, to a new dir)",
            f"restic -q -r {restic_repo} restore latest --target {out_dir} && sync", shell=True)
    if have["borg"]:
        out_dir = os.path.join(d, "borg-extract")
        os.makedirs(out_dir)
        fig("borg extract (full, to a new dir)",
            f"cd {out_dir} && borg extract {borg_repo}::two-{args.repeat - 1} && sync", shell=True)

    # Restore with nothing to change.
    for temp, cold in (("cold", True), ("warm", False)):
        rounds([(f"{tool} 0% {temp}", cmd, cold, shell, before_restore(cmd, shell, cold, 0))
                for tool, cmd, shell in (("recoveryd restore", restore, False),
                                         ("rsync -aAXHc --delete", restore_rsync, True))])
    res.ratio(scale, "restore 0% / rsync -aAXHc --delete, warm", "recoveryd restore 0% warm",
              "rsync -aAXHc --delete 0% warm", None)
    if scale == 1:
        res.limit(scale, "restore with nothing to change, warm",
                  res.times[(scale, "recoveryd restore 0% warm")], 0.1, "s")
    if scale >= 4:
        peak = max(r for (sc, n), r in res.rss.items() if sc == scale and n.startswith("recoveryd"))
        res.limit(scale, "peak RSS of any recoveryd command", peak / 1024, 64, "MiB")
    if not args.keep:
        shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=12000)
    ap.add_argument("--big-mib", type=int, default=240, help="total size of the big binaries")
    ap.add_argument("--scales", default="1,4")
    ap.add_argument("--dir", default="/var/tmp/recoveryd-bench")
    ap.add_argument("--keep", action="store_true", help="keep the trees and repositories")
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds of every measurement; each figure is their median")
    args = ap.parse_args()
    if args.repeat < 1:
        sys.exit(f"--repeat {args.repeat}: every figure needs at least one round")
    if os.geteuid() != 0:
        sys.exit("run as root (owners, xattrs, dropping caches)")
    def version(cmd):
        p = subprocess.run(cmd, capture_output=True, text=True)
        return ((p.stdout or p.stderr).splitlines() or ["?"])[0]
    print(f"recoveryctl: {CTL}; " + "; ".join(
        version(c) for c in (["rsync", "--version"], ["restic", "version"], ["borg", "--version"])
        if shutil.which(c[0])), flush=True)
    scales = [int(x) for x in args.scales.split(",")]
    res = Results()
    for scale in scales:
        one_scale(args, scale, res)
    if len(scales) > 1:
        lo, hi = scales[0], scales[-1]
        limit = 1.1 * hi / lo
        print(f"growth x{lo} -> x{hi} (target <= {limit:.1f}x):")
        for (scale, name), t in sorted(res.times.items()):
            if scale != lo or (hi, name) not in res.times:
                continue
            g = res.times[(hi, name)] / t if t else float("inf")
            mark = "" if not name.startswith("recoveryd") else ("ok" if g <= limit else "MISSED")
            if mark:
                res.rows.append((hi, f"growth of {name}", g, limit, mark))
            print(f"  {name:<44} {g:6.2f}x {mark}")
    missed = [r for r in res.rows if r[4] == "MISSED"]
    print("all targets met" if not missed else
          "targets missed: " + ", ".join(f"x{r[0]} {r[1]}" for r in missed))


if __name__ == "__main__":
    main()
