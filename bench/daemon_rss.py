#!/usr/bin/env python3
"""The daemon at rest: resident memory of recoveryd after start, after a backup, after a storm
of status requests, and once it has been idle.

Usage (as root, from the project root):  bench/run.sh --daemon [--files N] [--requests N]
                                                      [--pause S] [--idle S]

The daemon runs as shipped (the static release binary beside RECOVERYCTL) on a private
system-like bus of its own (a real dbus-daemon), with the host integrations off, over a
generated tree of small files; the backup and the status requests go over its socket API, as
the backup Job's do. VmRSS is read from /proc; the idle figure is taken after tokio's blocking
threads have exited (they linger 10 s after their last task).
"""

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTL = os.environ.get("RECOVERYCTL") or os.path.join(ROOT, "target", "release", "recoveryctl")
DAEMON = os.path.join(os.path.dirname(CTL), "recoveryd")

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="*"/>
    <allow send_destination="*"/>
    <allow receive_type="*"/>
  </policy>
</busconfig>
"""


def rss_kib(pid):
    """VmRSS, and its heap and file-backed parts (RssAnon, RssFile), in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0])
    return out["VmRSS"], out["RssAnon"], out["RssFile"]


def threads(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def request(path, req):
    """Send one request line; return the reply (the last line)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect(path)
        s.sendall((json.dumps(req) + "\n").encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    lines = [l for l in data.decode().splitlines() if l.strip()]
    return json.loads(lines[-1])


def generate(node, files):
    rng = random.Random(7)
    for i in range(files):
        d = os.path.join(node, "etc", f"d{i % 50:02d}")
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, f"f{i}.conf"), "wb") as f:
            f.write(rng.randbytes(int(rng.lognormvariate(7.0, 1.0))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=2000)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--pause", type=float, default=0.0, help="seconds between the backup and the storm")
    ap.add_argument("--idle", type=float, default=12.0, help="seconds of rest before the last figure")
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="recoveryd-rss.")
    node = os.path.join(work, "node")
    os.makedirs(os.path.join(node, "var/recovery"))
    os.makedirs(os.path.join(node, "proc/sys/kernel/random"))
    with open(os.path.join(node, "proc/sys/kernel/random/boot_id"), "w") as f:
        f.write("bench\n")
    generate(node, args.files)
    config = os.path.join(work, "config.toml")
    with open(config, "w") as f:
        f.write(f'root = "{node}"\n[host]\nsystemd = false\nostree = false\ncluster = false\n'
                f'[backup]\npaths = ["/etc"]\nspace_margin = 0\n')
    bus_sock = os.path.join(work, "bus")
    with open(os.path.join(work, "bus.conf"), "w") as f:
        f.write(BUS_CONFIG.format(socket=bus_sock))
    bus = subprocess.Popen(["dbus-daemon", "--nofork", "--config-file", os.path.join(work, "bus.conf")])
    api = os.path.join(work, "recoveryd.sock")
    daemon = None
    try:
        for _ in range(100):
            if os.path.exists(bus_sock):
                break
            time.sleep(0.05)
        env = dict(os.environ, DBUS_SYSTEM_BUS_ADDRESS=f"unix:path={bus_sock}",
                   RUST_LOG="warn")
        daemon = subprocess.Popen([DAEMON, "--config", config, "--socket", api], env=env,
                                  stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "daemon.log"), "w"))
        for _ in range(200):
            if os.path.exists(api):
                break
            time.sleep(0.05)
        else:
            sys.exit(f"recoveryd did not bind {api}: {open(os.path.join(work, 'daemon.log')).read()}")
        time.sleep(0.5)
        pid = daemon.pid
        rows = [("after start", rss_kib(pid), threads(pid))]
        reply = request(api, {"op": "backup"})
        if reply.get("reply") != "started":
            sys.exit(f"the backup did not start: {reply}")
        # The request returns once the run has started; wait for its end with as few status
        # requests as possible (they are what the storm below measures).
        while True:
            time.sleep(0.5)
            st = request(api, {"op": "status"})
            last = (st.get("status") or st).get("last_backup") or {}
            if last.get("state") not in (None, "running"):
                break
        if last.get("state") != "succeeded":
            sys.exit(f"the backup did not succeed: {last}")
        rows.append((f"after a backup of {args.files} files", rss_kib(pid), threads(pid)))
        time.sleep(args.pause)
        t0 = time.perf_counter()
        for _ in range(args.requests):
            request(api, {"op": "status"})
        storm = time.perf_counter() - t0
        rows.append((f"after {args.requests} status requests ({storm:.1f} s)", rss_kib(pid), threads(pid)))
        time.sleep(args.idle)
        rows.append((f"idle {args.idle:.0f} s later (target <= 12 MiB)", rss_kib(pid), threads(pid)))
        print(f"recoveryd: {DAEMON}")
        for name, (kib, anon, file), n in rows:
            print(f"  {name:<48} {kib / 1024:6.1f} MiB (anonymous {anon / 1024:5.1f}, "
                  f"file {file / 1024:4.1f})  {n:3d} threads")
        idle = rows[-1][1][0] / 1024
        print("daemon idle RSS: " + ("ok" if idle <= 12 else "MISSED") + f" ({idle:.1f} MiB)")
    finally:
        if daemon:
            daemon.terminate()
            daemon.wait(timeout=30)
        bus.terminate()
        bus.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
