#!/usr/bin/python3
"""The libostree calls the fake rpm-ostreed makes on a real test sysroot, through libostree's
GObject bindings (Debian: gir1.2-ostree-1.0, python3-gi): the same library functions rpm-ostreed
itself calls (ostree_sysroot_get_deployments, ostree_sysroot_write_deployments), so that a fake
rollback or cleanup changes the sysroot exactly as the real daemon's would, and `ostree admin
status` agrees with what the fake reports.

Usage:
  ostree-sysroot.py status SYSROOT            JSON list of deployments in boot order
  ostree-sysroot.py write SYSROOT KEY...       write this order (KEY = osname:checksum.serial);
                                               deployments not named are removed
  ostree-sysroot.py set-default SYSROOT INDEX  what `ostree admin set-default` (ostree >= 2023.6)
                                               does: move deployment INDEX first, write, clean up
"""
import json
import sys

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, OSTree  # noqa: E402


def load(path):
    sysroot = OSTree.Sysroot.new(Gio.File.new_for_path(path))
    sysroot.load(None)
    return sysroot


def key(d):
    return f"{d.get_osname()}:{d.get_csum()}.{d.get_deployserial()}"


def status(path):
    sysroot = load(path)
    repo = sysroot.repo()
    out = []
    for i, d in enumerate(sysroot.get_deployments()):
        version = None
        ok, commit = repo.load_variant(OSTree.ObjectType.COMMIT, d.get_csum())
        if ok:
            meta = commit.get_child_value(0)
            v = meta.lookup_value("version", None)
            if v is not None:
                version = v.get_string()
        origin = d.get_origin()
        refspec = None
        if origin is not None:
            try:
                refspec = origin.get_string("origin", "refspec")
            except gi.repository.GLib.Error:
                refspec = None
        out.append(
            {
                "index": i,
                "osname": d.get_osname(),
                "checksum": d.get_csum(),
                "serial": d.get_deployserial(),
                "version": version,
                "pinned": d.is_pinned(),
                "origin": refspec,
            }
        )
    return out


def write(path, keys):
    sysroot = load(path)
    by_key = {key(d): d for d in sysroot.get_deployments()}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise SystemExit(f"no such deployment: {', '.join(missing)}")
    sysroot.write_deployments([by_key[k] for k in keys], None)


def set_default(path, index):
    sysroot = load(path)
    deployments = sysroot.get_deployments()
    if index < 0 or index >= len(deployments):
        raise SystemExit(f"Out of range deployment index {index}")
    target = deployments.pop(index)
    sysroot.write_deployments([target] + deployments, None)
    sysroot.cleanup(None)


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    cmd, path = sys.argv[1], sys.argv[2]
    if cmd == "status":
        json.dump(status(path), sys.stdout)
        sys.stdout.write("\n")
    elif cmd == "write":
        write(path, sys.argv[3:])
    elif cmd == "set-default":
        set_default(path, int(sys.argv[3]))
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
