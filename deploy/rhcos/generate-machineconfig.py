#!/usr/bin/env python3
"""Write the MachineConfig that installs recoveryd on RHCOS nodes that do not layer the RPM,
from the very files the RPM installs (systemd/, selinux/) and deploy/rhcos/'s two boot-time
helpers, so that nothing is copied by hand (tests/packaging.rs checks the checked-in output is
current, decodes every file and compares it byte for byte with its source).

    deploy/rhcos/generate-machineconfig.py [--role master] \\
        [--binaries-image REGISTRY/recoveryd/binaries@sha256:<digest>] > machineconfig.yaml

Why the binaries are not in the MachineConfig: they are ~12 MiB each, static and stripped
(~5 MiB gzipped), and a MachineConfig is one etcd object (at most ~1.5 MiB) that the MCO also
merges into every rendered config of the pool. So the MachineConfig carries the units, the
D-Bus files, the configuration and the SELinux module (~60 KiB in all), and a oneshot unit,
recoveryd-install.service, copies the static binaries out of an image pinned by digest into
/usr/local/bin (deploy/image/Containerfile, stage "binaries"). The units run `recoveryctl` by
bare name, which systemd looks up in /usr/local/bin before /usr/bin; recoveryd.service names
/usr/bin/recoveryd (systemd labels the socket from that path), which a drop-in here points at
/usr/local/bin/recoveryd. selinux/recoveryd.fc labels both places.

Ignition spec 3.2.0: the oldest the MCO of every supported release (OpenShift >= 4.13, see
docs/openshift.md) reads, and all of this needs (files with data URLs, units with contents).
"""

import argparse
import base64
import os
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLACEHOLDER_IMAGE = "REGISTRY/recoveryd/binaries@sha256:" + "0" * 64

# Where each installed file comes from, and its mode. The RPM's paths under /usr are mapped to
# their writable equivalents: /usr is read-only on RHCOS, and /usr/local is /var/usrlocal.
FILES = [
    ("/etc/tmpfiles.d/recoveryd.conf", "systemd/recoveryd.tmpfiles", 0o644),
    ("/etc/dbus-1/system.d/org.recoveryd.Recovery1.conf", "systemd/org.recoveryd.Recovery1.conf", 0o644),
    (
        "/usr/local/share/dbus-1/system-services/org.recoveryd.Recovery1.service",
        "systemd/org.recoveryd.Recovery1.service",
        0o644,
    ),
    ("/etc/recoveryd/config.toml", "systemd/config.toml", 0o644),
    ("/usr/local/share/recoveryd/recoveryd.pp.bz2", None, 0o644),  # compiled below
    ("/usr/local/libexec/recoveryd-install", "deploy/rhcos/recoveryd-install.sh", 0o755),
    ("/usr/local/libexec/recoveryd-selinux", "deploy/rhcos/recoveryd-selinux.sh", 0o755),
    # recoveryd's own files in /usr/local are neither backed up nor restored.
    ("/etc/recoveryd/config.d/50-rhcos.toml", "deploy/rhcos/50-rhcos.toml", 0o644),
]
# The RPM's units, and the two that only this way of installing needs.
UNITS = [
    ("recoveryd.service", "systemd/recoveryd.service"),
    ("recoveryd.socket", "systemd/recoveryd.socket"),
    ("recoveryd-resume.service", "systemd/recoveryd-resume.service"),
    ("recoveryd-resume-offline.service", "systemd/recoveryd-resume-offline.service"),
    ("recoveryd-selinux.service", "deploy/rhcos/recoveryd-selinux.service"),
    ("recoveryd-install.service", "deploy/rhcos/recoveryd-install.service"),
]


# The daemon's unit names the RPM's /usr/bin/recoveryd by absolute path (the socket's SELinux
# label is computed from it); here the binary is in /usr/local/bin.
DROPINS = {
    "recoveryd.service": [
        (
            "10-usr-local.conf",
            "# recoveryd from /usr/local/bin, where recoveryd-install.service puts it.\n"
            "[Service]\nExecStart=\nExecStart=/usr/local/bin/recoveryd\n",
        )
    ],
}


def read(rel):
    with open(os.path.join(ROOT, rel), "rb") as f:
        return f.read()


def selinux_module():
    """The module as the recoveryd-selinux package ships it: selinux/recoveryd.pp, bzip2 -9
    (rpm/build.sh compiles it; compiled here when it is missing)."""
    pp = os.path.join(ROOT, "selinux", "recoveryd.pp")
    if not os.path.exists(pp):
        sys.exit(f"{pp} is missing: build it with rpm/build.sh (or make -C selinux -f "
                 "/usr/share/selinux/devel/Makefile recoveryd.pp)")
    return subprocess.run(["bzip2", "-9", "-c", pp], check=True, stdout=subprocess.PIPE).stdout


def data_url(content):
    return "data:;base64," + base64.b64encode(content).decode()


def preset_enabled():
    """The units the RPM's preset enables (systemd/80-recoveryd.preset)."""
    enabled = set()
    for line in read("systemd/80-recoveryd.preset").decode().splitlines():
        words = line.split()
        if len(words) == 2 and words[0] == "enable":
            enabled.add(words[1])
    return enabled


def machine_config(role, image):
    files = []
    for path, source, mode in FILES:
        content = selinux_module() if source is None else read(source)
        files.append({"path": path, "mode": mode, "overwrite": True,
                      "contents": {"source": data_url(content)}})
    files.append({"path": "/etc/recoveryd/binaries-image", "mode": 0o644, "overwrite": True,
                  "contents": {"source": data_url((image + "\n").encode())}})
    enabled = preset_enabled() | {"recoveryd-selinux.service", "recoveryd-install.service"}
    units = []
    for name, source in UNITS:
        unit = {"name": name, "contents": read(source).decode()}
        if name in DROPINS:
            unit["dropins"] = [{"name": n, "contents": c} for n, c in DROPINS[name]]
        if name in enabled:
            unit["enabled"] = True
        units.append(unit)
    return {
        "apiVersion": "machineconfiguration.openshift.io/v1",
        "kind": "MachineConfig",
        "metadata": {
            "name": f"50-{role}-recoveryd",
            "labels": {"machineconfiguration.openshift.io/role": role},
        },
        "spec": {
            "config": {
                "ignition": {"version": "3.2.0"},
                "storage": {"files": files},
                "systemd": {"units": units},
            }
        },
    }


class Literal(str):
    pass


def literal(dumper, s):
    return dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--role", default="master", help="the MachineConfigPool's role (default: master, single-node)")
    p.add_argument("--binaries-image", default=PLACEHOLDER_IMAGE,
                   help="the binaries image, by digest (default: a placeholder to replace)")
    a = p.parse_args()
    mc = machine_config(a.role, a.binaries_image)
    for u in mc["spec"]["config"]["systemd"]["units"]:
        u["contents"] = Literal(u["contents"])
    yaml.add_representer(Literal, literal)
    sys.stdout.write(
        "# Generated by deploy/rhcos/generate-machineconfig.py from systemd/, selinux/ and\n"
        "# deploy/rhcos/: do not edit. Installs recoveryd on RHCOS nodes that do not layer the RPM;\n"
        "# replace the binaries image placeholder (--binaries-image) before applying it.\n"
    )
    sys.stdout.write(yaml.dump(mc, sort_keys=False, width=100))


if __name__ == "__main__":
    main()
