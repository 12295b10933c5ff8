#!/usr/bin/env python3
"""Check a MachineConfig the way the MCO and Ignition would read it: the MachineConfig's own
shape, then its `spec.config` against Ignition's configuration specification v3.2.0
(https://coreos.github.io/ignition/configuration-v3_2/), strictly: every key must be one the
spec defines (Ignition rejects unknown keys), with the spec's types, and what Ignition checks
beyond types -- absolute clean paths, no path or unit twice, parseable data URLs, modes within
07777, unit names with a unit suffix. No Ignition validator can be installed here (it is not
packaged for Debian), so this is the spec's subset that the generated MachineConfig uses,
written from the spec; a key outside that subset is an error, not a pass.

    tests/validate-ignition.py FILE.yaml        # exit 0, or 1 with one line per problem
"""

import base64
import posixpath
import re
import sys
import urllib.parse

import yaml

problems = []


def bad(where, what):
    problems.append(f"{where}: {what}")


def keys(where, obj, allowed, required=()):
    if not isinstance(obj, dict):
        bad(where, f"expected an object, got {type(obj).__name__}")
        return False
    for k in obj:
        if k not in allowed:
            bad(where, f"unknown key {k!r} (the spec allows {sorted(allowed)})")
    for k in required:
        if k not in obj:
            bad(where, f"missing {k!r}")
    return True


def typed(where, value, kind):
    if kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if not ok:
        bad(where, f"expected {kind.__name__}, got {type(value).__name__}")
    return ok


def data_url(where, url):
    """RFC 2397: data:[<mediatype>][;base64],<data>; returns the bytes."""
    if not url.startswith("data:") or "," not in url:
        bad(where, f"not a data URL: {url[:40]!r}")
        return None
    head, data = url[5:].split(",", 1)
    if head.endswith(";base64"):
        try:
            return base64.b64decode(data, validate=True)
        except ValueError as e:
            bad(where, f"bad base64: {e}")
            return None
    return urllib.parse.unquote_to_bytes(data)


def resource(where, r):
    if not keys(where, r, {"compression", "httpHeaders", "source", "verification"}):
        return
    if "compression" in r and r["compression"] not in (None, "", "gzip"):
        bad(where, f"compression {r['compression']!r} (null or gzip)")
    if "verification" in r:
        v = r["verification"]
        if keys(f"{where}.verification", v, {"hash"}) and "hash" in v and v["hash"] is not None:
            if not re.fullmatch(r"(sha512-[0-9a-f]{128}|sha256-[0-9a-f]{64})", v["hash"]):
                bad(f"{where}.verification.hash", f"not <sha512|sha256>-<hex>: {v['hash']!r}")
    if "source" in r and r["source"] is not None and typed(f"{where}.source", r["source"], str):
        scheme = r["source"].split(":", 1)[0]
        if scheme not in ("http", "https", "tftp", "s3", "gs", "data"):
            bad(f"{where}.source", f"unsupported scheme {scheme!r}")
        elif scheme == "data":
            data_url(f"{where}.source", r["source"])
        else:
            # The MCO writes a MachineConfig's files itself and fetches nothing.
            bad(f"{where}.source", "the MCO accepts only data URLs in a MachineConfig")


def node_owner(where, o):
    if keys(where, o, {"id", "name"}):
        if o.get("id") is not None:
            typed(f"{where}.id", o["id"], int)
        if o.get("name") is not None:
            typed(f"{where}.name", o["name"], str)


def clean_path(where, p):
    if not typed(where, p, str):
        return
    if not p.startswith("/") or posixpath.normpath(p) != p or p == "/":
        bad(where, f"{p!r} is not an absolute, clean path")


UNIT_SUFFIXES = (".service", ".socket", ".target", ".timer", ".path", ".mount", ".automount",
                 ".swap", ".slice", ".scope", ".device")


def ignition(config):
    where = "spec.config"
    keys(where, config, {"ignition", "kernelArguments", "passwd", "storage", "systemd"}, ("ignition",))
    ign = config.get("ignition", {})
    if keys(f"{where}.ignition", ign, {"config", "proxy", "security", "timeouts", "version"}, ("version",)):
        if ign.get("version") != "3.2.0":
            bad(f"{where}.ignition.version", f"{ign.get('version')!r}, expected '3.2.0'")
    storage = config.get("storage", {})
    keys(f"{where}.storage", storage, {"directories", "disks", "files", "filesystems", "links", "luks", "raid"})
    seen = set()
    for i, f in enumerate(storage.get("files", []) or []):
        w = f"{where}.storage.files[{i}]"
        if not keys(w, f, {"group", "user", "overwrite", "path", "append", "contents", "mode"}, ("path",)):
            continue
        clean_path(f"{w}.path", f.get("path"))
        if f.get("path") in seen:
            bad(f"{w}.path", f"{f['path']} appears twice")
        seen.add(f.get("path"))
        if "mode" in f and f["mode"] is not None and typed(f"{w}.mode", f["mode"], int):
            if not 0 <= f["mode"] <= 0o7777:
                bad(f"{w}.mode", f"{f['mode']} is not a mode")
        if "overwrite" in f:
            typed(f"{w}.overwrite", f["overwrite"], bool)
        for o in ("user", "group"):
            if o in f:
                node_owner(f"{w}.{o}", f[o])
        if "contents" in f:
            resource(f"{w}.contents", f["contents"])
        for j, a in enumerate(f.get("append", []) or []):
            resource(f"{w}.append[{j}]", a)
    units = set()
    systemd = config.get("systemd", {})
    keys(f"{where}.systemd", systemd, {"units"})
    for i, u in enumerate(systemd.get("units", []) or []):
        w = f"{where}.systemd.units[{i}]"
        if not keys(w, u, {"contents", "dropins", "enabled", "mask", "name"}, ("name",)):
            continue
        name = u.get("name")
        if typed(f"{w}.name", name, str) and (not name.endswith(UNIT_SUFFIXES) or "/" in name):
            bad(f"{w}.name", f"{name!r} is not a unit name")
        if name in units:
            bad(f"{w}.name", f"{name} appears twice")
        units.add(name)
        for k in ("enabled", "mask"):
            if k in u and u[k] is not None:
                typed(f"{w}.{k}", u[k], bool)
        if "contents" in u and typed(f"{w}.contents", u["contents"], str):
            if not re.search(r"^\[(Unit|Service|Socket|Install)\]$", u["contents"], re.M):
                bad(f"{w}.contents", "no unit section")
        for j, d in enumerate(u.get("dropins", []) or []):
            keys(f"{w}.dropins[{j}]", d, {"contents", "name"}, ("name",))


def machine_config(doc):
    keys("", doc, {"apiVersion", "kind", "metadata", "spec"}, ("apiVersion", "kind", "metadata", "spec"))
    if doc.get("apiVersion") != "machineconfiguration.openshift.io/v1" or doc.get("kind") != "MachineConfig":
        bad("", f"not a MachineConfig: {doc.get('apiVersion')}/{doc.get('kind')}")
    meta = doc.get("metadata", {})
    name = meta.get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?", name or ""):
        bad("metadata.name", f"{name!r} is not a DNS subdomain name")
    role = (meta.get("labels") or {}).get("machineconfiguration.openshift.io/role")
    if not role:
        bad("metadata.labels", "no machineconfiguration.openshift.io/role: no pool would select it")
    spec = doc.get("spec", {})
    keys("spec", spec, {"config", "osImageURL", "kernelArguments", "extensions", "fips", "kernelType"})
    if "config" in spec:
        ignition(spec["config"])
    if "osImageURL" in spec and not re.search(r"@sha256:[0-9a-f]{64}$", spec["osImageURL"]):
        bad("spec.osImageURL", "an OS image must be pinned by digest")


def main():
    with open(sys.argv[1]) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        bad(sys.argv[1], "no document")
    for d in docs:
        machine_config(d)
    for p in problems:
        print(f"{sys.argv[1]}: {p}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
