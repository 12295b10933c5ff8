//! Packaging: the SELinux module compiles, `rpm/build.sh` builds the RPMs (prebuilt mode of
//! `rpm/recoveryd.spec`), they hold every file the units, the bus files and the policy refer
//! to, rpmlint finds no error, the units pass `systemd-analyze verify` in the extracted payload,
//! and `deploy/backup-job.yaml` is the unprivileged Job it should be.
//!
//! Needs (Debian 12, as `tests/setup-host.sh` installs them): rpm, rpmlint, cpio,
//! selinux-policy-dev, checkpolicy, semodule-utils, systemd, python3-yaml. The release
//! binaries come from `$RECOVERYD_BIN_DIR` (default: `rpm/build.sh` runs the static release
//! build, `deploy/build-static.sh`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Run a command; panic with its output unless it succeeds.
fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (is its package installed?)"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({})\nstdout:\n{}\nstderr:\n{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// One entry of an RPM's file list.
#[derive(Debug, Clone)]
struct RpmFile {
    mode: u32,
    flags: String,
    user: String,
    group: String,
}

impl RpmFile {
    fn is_dir(&self) -> bool {
        self.mode & 0o170000 == 0o040000
    }
    fn is_regular(&self) -> bool {
        self.mode & 0o170000 == 0o100000
    }
}

struct Built {
    rpms: Vec<PathBuf>,
    /// Every path of every package, with its metadata.
    files: BTreeMap<String, RpmFile>,
}

impl Built {
    fn rpm(&self, name: &str) -> &Path {
        self.rpms
            .iter()
            .find(|p| {
                let f = p.file_name().unwrap().to_string_lossy();
                f.starts_with(&format!("{name}-0")) || f.starts_with(&format!("{name}-1"))
            })
            .unwrap_or_else(|| panic!("no {name} package among {:?}", self.rpms))
    }

    fn file(&self, path: &str) -> &RpmFile {
        self.files.get(path).unwrap_or_else(|| {
            panic!(
                "{path} is not in the packages; they hold:\n{}",
                self.files.keys().cloned().collect::<Vec<_>>().join("\n")
            )
        })
    }
}

/// `rpm/build.sh` once for every test of this file.
/// A failed build is remembered too, so that the other tests report it instead of running
/// build.sh again (concurrently, in the same directory).
fn built() -> &'static Built {
    static BUILT: OnceLock<Result<Built, String>> = OnceLock::new();
    let result = BUILT.get_or_init(|| {
        std::panic::catch_unwind(build_rpms).map_err(|e| {
            e.downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default()
        })
    });
    match result {
        Ok(b) => b,
        Err(e) => panic!("rpm/build.sh did not produce the packages: {e}"),
    }
}

fn build_rpms() -> Built {
    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("packaging-rpms");
    let _ = std::fs::remove_dir_all(&out_dir);
    let mut cmd = Command::new(root().join("rpm/build.sh"));
    cmd.arg(&out_dir).stdin(Stdio::null());
    // RECOVERYD_BIN_DIR, when set, is passed on as it is (build.sh reads it).
    let out = run_ok(&mut cmd);
    eprintln!("{}", text(&out.stderr));
    let rpms: Vec<PathBuf> = text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(PathBuf::from)
        .collect();
    assert_eq!(
        rpms.len(),
        2,
        "expected recoveryd and recoveryd-selinux: {rpms:?}"
    );
    for r in &rpms {
        assert!(
            r.is_file(),
            "{} was printed but does not exist",
            r.display()
        );
    }

    let mut files = BTreeMap::new();
    for r in &rpms {
        let out = run_ok(Command::new("rpm").args([
            "-qp",
            "--qf",
            "[%{FILEMODES} %{FILEFLAGS:fflags} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILENAMES}\n]",
        ]).arg(r));
        for line in text(&out.stdout).lines() {
            let mut it = line.splitn(5, ' ');
            let mode: u32 = it.next().unwrap().parse().unwrap();
            let flags = it.next().unwrap().to_string();
            let user = it.next().unwrap().to_string();
            let group = it.next().unwrap().to_string();
            let path = it.next().unwrap().to_string();
            files.insert(
                path,
                RpmFile {
                    mode,
                    flags,
                    user,
                    group,
                },
            );
        }
    }
    Built { rpms, files }
}

// ------------------------------------------------------------------------------------------
// The SELinux module
// ------------------------------------------------------------------------------------------

/// A module of another domain that calls every interface of recoveryd.if, as the backup Job's
/// or an administrator's module would: interfaces are only expanded where they are called.
const CLIENT_MODULE: &str = "policy_module(recoveryd_client, 1.0.0)
type recoveryd_client_t;
domain_type(recoveryd_client_t)
role system_r types recoveryd_client_t;
recoveryd_domtrans(recoveryd_client_t)
recoveryd_domtrans_ctl(recoveryd_client_t)
recoveryd_run_ctl(recoveryd_client_t, system_r)
recoveryd_exec_ctl(recoveryd_client_t)
recoveryd_stream_connect(recoveryd_client_t)
recoveryd_dbus_chat(recoveryd_client_t)
recoveryd_read_config(recoveryd_client_t)
recoveryd_read_state(recoveryd_client_t)
recoveryd_admin(recoveryd_client_t, system_r)
";

/// Compile selinux/recoveryd.pp and the client module in a scratch directory (the Makefile
/// writes tmp/ beside its sources); returns the directory and make's output.
fn compile_modules() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    for f in ["recoveryd.te", "recoveryd.if", "recoveryd.fc"] {
        std::fs::copy(root().join("selinux").join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(dir.path().join("recoveryd_client.te"), CLIENT_MODULE).unwrap();
    let out = run_ok(Command::new("make").arg("-C").arg(dir.path()).args([
        "-f",
        "/usr/share/selinux/devel/Makefile",
        "recoveryd.pp",
        "recoveryd_client.pp",
    ]));
    let all = text(&out.stdout) + &text(&out.stderr);
    (dir, all)
}

#[test]
fn selinux_module_compiles() {
    let (dir, all) = compile_modules();
    assert!(
        !all.to_lowercase().contains("warning"),
        "the modules compile with warnings:\n{all}"
    );
    for pp in ["recoveryd.pp", "recoveryd_client.pp"] {
        let len = std::fs::metadata(dir.path().join(pp))
            .map(|m| m.len())
            .unwrap_or(0);
        assert!(len > 500, "no {pp} (or a tiny one: {len} bytes):\n{all}");
    }
}

/// Where the reference policy itself is installed (Debian: selinux-policy-default), the module
/// links against it with every neverallow rule checked, as `semodule -i` would on a node.
/// Without that package the check is reported and skipped.
#[test]
fn selinux_module_links_against_the_installed_policy() {
    let store = Path::new("/usr/share/selinux/default");
    assert!(
        store.join("base.pp.bz2").exists() || store.join("base.pp").exists(),
        "no reference policy in {} (Debian package selinux-policy-default; tests/setup-host.sh installs it)",
        store.display()
    );
    let (dir, _) = compile_modules();
    // Every module of the policy, decompressed, then ours.
    let mods = dir.path().join("modules");
    std::fs::create_dir(&mods).unwrap();
    let mut others = Vec::new();
    for e in std::fs::read_dir(store).unwrap() {
        let p = e.unwrap().path();
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".pp.bz2").or(name.strip_suffix(".pp")) else {
            continue;
        };
        let dest = mods.join(format!("{stem}.pp"));
        if name.ends_with(".bz2") {
            let out = run_ok(Command::new("bzip2").arg("-dc").arg(&p));
            std::fs::write(&dest, out.stdout).unwrap();
        } else {
            std::fs::copy(&p, &dest).unwrap();
        }
        if !["base", "recoveryd", "recoveryd_client"].contains(&stem) {
            others.push(dest);
        }
    }
    let linked = dir.path().join("all.lnk");
    run_ok(
        Command::new("semodule_link")
            .arg("-o")
            .arg(&linked)
            .arg(mods.join("base.pp"))
            .args(&others)
            .arg(dir.path().join("recoveryd.pp"))
            .arg(dir.path().join("recoveryd_client.pp")),
    );
    // Without -a: the neverallow assertions are checked.
    run_ok(
        Command::new("semodule_expand")
            .arg(&linked)
            .arg(dir.path().join("policy.bin")),
    );
}

/// The types the daemon, the CLI and the Job rely on are declared, and the interfaces other modules
/// call exist.
#[test]
fn selinux_module_declares_the_documented_types_and_interfaces() {
    let te = std::fs::read_to_string(root().join("selinux/recoveryd.te")).unwrap();
    for t in [
        "recoveryd_t",
        "recoveryd_exec_t",
        "recoveryctl_exec_t",
        "recoveryd_var_t",
        "recoveryd_var_run_t",
        "recoveryd_conf_t",
        "recoveryd_unit_file_t",
    ] {
        assert!(
            te.contains(&format!("type {t};")),
            "recoveryd.te does not declare {t}"
        );
    }
    assert!(te.contains("init_daemon_domain(recoveryd_t, recoveryd_exec_t)"));
    assert!(te.contains("recoveryd_stream_connect(container_t)"));
    let iface = std::fs::read_to_string(root().join("selinux/recoveryd.if")).unwrap();
    for i in [
        "recoveryd_stream_connect",
        "recoveryd_dbus_chat",
        "recoveryd_domtrans",
        "recoveryd_admin",
    ] {
        assert!(
            iface.contains(&format!("interface(`{i}'")),
            "recoveryd.if lacks {i}"
        );
    }
    let job = std::fs::read_to_string(root().join("deploy/backup-job.yaml")).unwrap();
    assert!(
        job.contains("type: container_t"),
        "the Job must run in the domain the module allows"
    );
}

// ------------------------------------------------------------------------------------------
// The RPMs
// ------------------------------------------------------------------------------------------

#[test]
fn rpms_hold_every_installed_file() {
    let b = built();
    for p in [
        "/usr/bin/recoveryd",
        "/usr/bin/recoveryctl",
        "/usr/lib/systemd/system/recoveryd.service",
        "/usr/lib/systemd/system/recoveryd.socket",
        "/usr/lib/systemd/system/recoveryd-resume.service",
        "/usr/lib/systemd/system/recoveryd-resume-offline.service",
        "/usr/lib/systemd/system-preset/80-recoveryd.preset",
        "/usr/share/dbus-1/system.d/org.recoveryd.Recovery1.conf",
        "/usr/share/dbus-1/system-services/org.recoveryd.Recovery1.service",
        "/usr/lib/tmpfiles.d/recoveryd.conf",
        "/etc/recoveryd/config.toml",
        "/etc/recoveryd/config.d",
        "/usr/lib/recoveryd/config.d",
        "/var/recovery",
        "/run/recoveryd",
        "/usr/share/bash-completion/completions/recoveryctl",
        "/usr/share/zsh/site-functions/_recoveryctl",
        "/usr/share/fish/vendor_completions.d/recoveryctl.fish",
        "/usr/share/doc/recoveryd/README.md",
        "/usr/share/doc/recoveryd/architecture.md",
        "/usr/share/doc/recoveryd/config.md",
        "/usr/share/doc/recoveryd/operations.md",
        "/usr/share/doc/recoveryd/openshift.md",
        "/usr/share/selinux/packages/targeted/recoveryd.pp.bz2",
        "/usr/share/selinux/devel/include/distributed/recoveryd.if",
    ] {
        b.file(p);
    }
    // Man pages (compressed or not, as the build host's rpm does it): one per command.
    for page in [
        "recoveryctl",
        "recoveryctl-backup",
        "recoveryctl-generations-protect",
    ] {
        let prefix = format!("/usr/share/man/man1/{page}.1");
        assert!(
            b.files.keys().any(|k| k.starts_with(&prefix)),
            "no man page {prefix}*: {:?}",
            b.files
                .keys()
                .filter(|k| k.contains("/man/"))
                .collect::<Vec<_>>()
        );
    }
    for bin in ["/usr/bin/recoveryd", "/usr/bin/recoveryctl"] {
        let f = b.file(bin);
        assert!(
            f.is_regular() && f.mode & 0o777 == 0o755,
            "{bin}: mode {:o}",
            f.mode
        );
    }

    let config = b.file("/etc/recoveryd/config.toml");
    assert!(
        config.flags.contains('c') && config.flags.contains('n'),
        "config.toml must be %config(noreplace), flags {:?}",
        config.flags
    );
    let state = b.file("/var/recovery");
    assert!(
        state.is_dir() && state.mode & 0o7777 == 0o700,
        "/var/recovery: mode {:o}",
        state.mode
    );
    assert_eq!(
        (state.user.as_str(), state.group.as_str()),
        ("root", "root")
    );
    let run = b.file("/run/recoveryd");
    assert!(
        run.is_dir() && run.flags.contains('g'),
        "/run/recoveryd must be a %ghost dir"
    );

    // The module's package is noarch; the daemon's is not.
    assert!(
        b.rpm("recoveryd-selinux")
            .to_string_lossy()
            .ends_with(".noarch.rpm")
    );
    assert!(
        !b.rpm("recoveryd")
            .to_string_lossy()
            .ends_with(".noarch.rpm")
    );
    let sel = text(
        &run_ok(
            Command::new("rpm")
                .arg("-qlp")
                .arg(b.rpm("recoveryd-selinux")),
        )
        .stdout,
    );
    assert!(
        sel.lines().all(|l| l.starts_with("/usr/share/selinux/")),
        "{sel}"
    );
}

/// Every path `selinux/recoveryd.fc` labels is installed by the packages (a regex matches at
/// least one packaged path; `--` entries match a regular file).
#[test]
fn every_file_context_path_is_packaged() {
    let b = built();
    let fc = std::fs::read_to_string(root().join("selinux/recoveryd.fc")).unwrap();
    let mut n = 0;
    for line in fc
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let regex = fields[0];
        let regular_only = fields.get(1) == Some(&"--");
        // The static binaries the RHCOS MachineConfig's installer puts in /usr/local/bin
        // (/var/usrlocal/bin): the packaged binary of the same name, and where the installer
        // puts it.
        if let Some(name) = regex
            .strip_prefix("/usr/local/bin/")
            .or_else(|| regex.strip_prefix("/var/usrlocal/bin/"))
        {
            assert!(regular_only, "{line}");
            b.file(&format!("/usr/bin/{name}"));
            let installer =
                std::fs::read_to_string(root().join("deploy/rhcos/recoveryd-install.sh")).unwrap();
            assert!(
                installer.contains("bin=$prefix/usr/local/bin")
                    && installer.contains("for b in recoveryd recoveryctl"),
                "deploy/rhcos/recoveryd-install.sh no longer installs {name} into /usr/local/bin"
            );
            n += 1;
            continue;
        }
        let pattern = FcRegex::parse(regex);
        let matched: Vec<&String> = b
            .files
            .iter()
            .filter(|(p, f)| pattern.matches(p) && (!regular_only || f.is_regular()))
            .map(|(p, _)| p)
            .collect();
        assert!(!matched.is_empty(), "no packaged path matches {line:?}");
        // And the path the regex is anchored on (its literal prefix) is itself packaged.
        let literal = pattern.literal_prefix();
        if pattern.ends_with_subtree() {
            b.file(&literal);
        }
        n += 1;
    }
    assert!(n >= 6, "recoveryd.fc has only {n} entries");
}

/// Every program a unit or the bus activation file runs, every unit they name, and every
/// documentation file they point at, is in the package.
#[test]
fn unit_references_are_packaged() {
    let b = built();
    let systemd = root().join("systemd");
    let mut execs = 0;
    for unit in [
        "recoveryd.service",
        "recoveryd.socket",
        "recoveryd-resume.service",
        "recoveryd-resume-offline.service",
    ] {
        let body = std::fs::read_to_string(systemd.join(unit)).unwrap();
        for line in body.lines().map(str::trim) {
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            match key {
                "ExecStart" | "ExecStartPre" | "ExecStartPost" | "ExecStop" | "ExecReload" => {
                    let program = value
                        .trim_start_matches(['-', '@', ':', '+', '!'])
                        .split_whitespace()
                        .next()
                        .unwrap();
                    if unit == "recoveryd.service" {
                        // By absolute path: systemd labels the listening socket from it (a
                        // bare name leaves the socket init_t, and accept() is denied).
                        assert_eq!(
                            program, "/usr/bin/recoveryd",
                            "{unit}: the socket-activated daemon must be named by its path"
                        );
                        b.file(program);
                    } else {
                        // A bare name, which systemd looks up in /usr/local/bin and then
                        // /usr/bin: the RPM's binary in /usr/bin, or the MachineConfig's in
                        // /usr/local/bin.
                        assert!(
                            !program.contains('/'),
                            "{unit}: {program} must be a bare name, to run from /usr/bin or /usr/local/bin"
                        );
                        b.file(&format!("/usr/bin/{program}"));
                    }
                    execs += 1;
                }
                "Service" | "Sockets" | "OnFailure" => {
                    b.file(&format!("/usr/lib/systemd/system/{value}"));
                }
                "Documentation" => {
                    for doc in value.split_whitespace() {
                        if let Some(path) = doc.strip_prefix("file://") {
                            b.file(path);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    assert!(execs >= 2, "expected ExecStart= in both services");
    let activation =
        std::fs::read_to_string(systemd.join("org.recoveryd.Recovery1.service")).unwrap();
    let unit = activation
        .lines()
        .find_map(|l| l.strip_prefix("SystemdService="))
        .expect("SystemdService= in the activation file");
    b.file(&format!("/usr/lib/systemd/system/{unit}"));
}

/// The preset enables exactly the units that can be enabled (those with an [Install] section):
/// without it, distributions that default to "disable *" would never resume a recovery.
#[test]
fn the_preset_enables_every_installable_unit() {
    let systemd = root().join("systemd");
    let preset = std::fs::read_to_string(systemd.join("80-recoveryd.preset")).unwrap();
    let mut enabled: Vec<&str> = preset
        .lines()
        .filter_map(|l| l.trim().strip_prefix("enable "))
        .collect();
    enabled.sort();
    let mut installable = Vec::new();
    for e in std::fs::read_dir(&systemd).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().into_owned();
        if (name.ends_with(".service") || name.ends_with(".socket"))
            && name.starts_with("recoveryd")
            && std::fs::read_to_string(systemd.join(&name))
                .unwrap()
                .contains("[Install]")
        {
            installable.push(name);
        }
    }
    installable.sort();
    assert_eq!(enabled, installable);
}

/// The scriptlets enable the three units on install, stop them on removal, and restart only
/// the daemon on upgrade.
#[test]
fn scriptlets_handle_the_units() {
    let b = built();
    let scripts_of = |rpm: &str| {
        text(
            &run_ok(
                Command::new("rpm")
                    .args(["-qp", "--scripts"])
                    .arg(b.rpm(rpm)),
            )
            .stdout,
        )
    };
    let scripts = scripts_of("recoveryd");
    // `rpm --scripts` prints "<name> scriptlet (using /bin/sh):" before each body.
    let mut sections: BTreeMap<String, String> = BTreeMap::new();
    let mut current = String::new();
    for line in scripts.lines() {
        if let Some((name, _)) = line.split_once(" scriptlet (using ") {
            current = name.to_string();
        } else {
            let body = sections.entry(current.clone()).or_default();
            body.push_str(line);
            body.push('\n');
        }
    }
    let section = |name: &str| -> String {
        sections
            .get(name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} scriptlet:\n{scripts}"))
    };
    // Scriptlets run with /bin/sh, which is dash on some systems: "cmd &> f" there runs cmd in
    // the background (the module was still loaded after `rpm -e` in the VM tier).
    let selinux_scripts = scripts_of("recoveryd-selinux");
    for (rpm, s) in [
        ("recoveryd", &scripts),
        ("recoveryd-selinux", &selinux_scripts),
    ] {
        assert!(!s.contains("&>"), "{rpm}: a bash-only redirection in:\n{s}");
    }
    let units = [
        "recoveryd.service",
        "recoveryd.socket",
        "recoveryd-resume.service",
    ];
    let post = section("postinstall");
    let preun = section("preuninstall");
    let postun = section("postuninstall");
    for u in units {
        assert!(post.contains(u), "postinstall does not name {u}:\n{post}");
        assert!(
            preun.contains(u),
            "preuninstall does not name {u}:\n{preun}"
        );
    }
    // Restart on upgrade: the daemon, never the oneshot resume unit (nor the socket).
    let restart_lines: Vec<&str> = postun
        .lines()
        .filter(|l| l.contains("restart") && !l.trim_start().starts_with('#'))
        .collect();
    assert!(
        restart_lines
            .iter()
            .any(|l| l.contains("recoveryd.service")),
        "postuninstall does not restart recoveryd.service:\n{postun}"
    );
    for l in &restart_lines {
        assert!(
            !l.contains("recoveryd-resume.service") && !l.contains("recoveryd.socket"),
            "postuninstall restarts more than the daemon: {l}"
        );
    }
    let sel = text(
        &run_ok(
            Command::new("rpm")
                .args(["-qp", "--scripts"])
                .arg(b.rpm("recoveryd-selinux")),
        )
        .stdout,
    );
    assert!(
        sel.contains("semodule") && sel.contains("recoveryd.pp.bz2"),
        "{sel}"
    );
    assert!(
        sel.contains("posttrans scriptlet") && sel.contains("restorecon"),
        "{sel}"
    );
}

#[test]
fn rpmlint_reports_no_errors() {
    let b = built();
    let out = Command::new("rpmlint")
        .arg("-r")
        .arg(root().join("rpm/recoveryd.rpmlintrc"))
        .args(&b.rpms)
        .output()
        .expect("rpmlint (Debian package rpmlint)");
    let report = text(&out.stdout) + &text(&out.stderr);
    // The warnings are part of the record: print them.
    println!("{report}");
    let errors: Vec<&str> = report.lines().filter(|l| l.contains(": E: ")).collect();
    assert!(errors.is_empty(), "rpmlint errors:\n{}", errors.join("\n"));
    assert!(
        report.contains(" 0 errors"),
        "rpmlint did not report its summary:\n{report}"
    );
    assert!(out.status.success(), "rpmlint exited with {}", out.status);
}

/// The payload, unpacked as a root file system: the units pass `systemd-analyze verify` there
/// (with the host's units for sysinit.target and the like, and the packaged binaries).
#[test]
fn payload_unpacks_and_units_verify() {
    let b = built();
    let dir = tempfile::tempdir().unwrap();
    let fsroot = dir.path();
    for rpm in &b.rpms {
        let cpio = Command::new("sh")
            .arg("-c")
            .arg("rpm2cpio \"$1\" | cpio -idm --quiet")
            .arg("sh")
            .arg(rpm)
            .current_dir(fsroot)
            .output()
            .unwrap();
        assert!(
            cpio.status.success(),
            "rpm2cpio | cpio: {}",
            text(&cpio.stderr)
        );
    }
    for p in [
        "usr/bin/recoveryd",
        "usr/bin/recoveryctl",
        "usr/lib/systemd/system/recoveryd.service",
        "usr/lib/systemd/system/recoveryd.socket",
        "usr/lib/systemd/system/recoveryd-resume.service",
        "usr/lib/systemd/system/recoveryd-resume-offline.service",
        "usr/lib/systemd/system-preset/80-recoveryd.preset",
        "usr/share/dbus-1/system.d/org.recoveryd.Recovery1.conf",
        "usr/share/dbus-1/system-services/org.recoveryd.Recovery1.service",
        "usr/lib/tmpfiles.d/recoveryd.conf",
        "etc/recoveryd/config.toml",
    ] {
        assert!(fsroot.join(p).is_file(), "{p} is not in the payload");
    }
    // The payload is the tree as it was committed.
    for (packaged, source) in [
        (
            "usr/lib/systemd/system/recoveryd.service",
            "systemd/recoveryd.service",
        ),
        (
            "usr/lib/tmpfiles.d/recoveryd.conf",
            "systemd/recoveryd.tmpfiles",
        ),
        ("etc/recoveryd/config.toml", "systemd/config.toml"),
        (
            "usr/lib/systemd/system-preset/80-recoveryd.preset",
            "systemd/80-recoveryd.preset",
        ),
        (
            "usr/share/dbus-1/system.d/org.recoveryd.Recovery1.conf",
            "systemd/org.recoveryd.Recovery1.conf",
        ),
    ] {
        assert_eq!(
            std::fs::read(fsroot.join(packaged)).unwrap(),
            std::fs::read(root().join(source)).unwrap(),
            "{packaged} differs from {source}"
        );
    }
    // The packaged binaries run.
    let version = run_ok(Command::new(fsroot.join("usr/bin/recoveryctl")).arg("--version"));
    assert!(
        text(&version.stdout).contains("recoveryctl"),
        "{}",
        text(&version.stdout)
    );

    // The host's units (sysinit.target, dbus.service, ...) beside ours, which win.
    let units = fsroot.join("usr/lib/systemd/system");
    run_ok(
        Command::new("cp")
            .args(["-an", "/lib/systemd/system/."])
            .arg(&units),
    );
    let mut cmd = Command::new("systemd-analyze");
    cmd.arg("verify")
        .arg(format!("--root={}", fsroot.display()))
        .arg("--man=no");
    for u in [
        "recoveryd.service",
        "recoveryd.socket",
        "recoveryd-resume.service",
        "recoveryd-resume-offline.service",
    ] {
        cmd.arg(units.join(u));
    }
    let out = cmd
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let report = text(&out.stdout) + &text(&out.stderr);
    let ours: Vec<&str> = report.lines().filter(|l| l.contains("recoveryd")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify ({}):\n{report}",
        out.status
    );
}

// ------------------------------------------------------------------------------------------
// The backup Job
// ------------------------------------------------------------------------------------------

/// The documents of a YAML file of the project, as JSON (PyYAML: Debian package python3-yaml).
fn yaml_docs(rel: &str) -> Vec<serde_json::Value> {
    let out = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(root().join(rel))
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{rel} does not parse (PyYAML: Debian package python3-yaml):\n{}",
        text(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn backup_job() -> serde_json::Value {
    let docs = yaml_docs("deploy/backup-job.yaml");
    assert_eq!(docs.len(), 1, "one document: the Job");
    docs.into_iter().next().unwrap()
}

/// Every value of `key` anywhere in the document.
fn find_all<'a>(v: &'a serde_json::Value, key: &str, out: &mut Vec<&'a serde_json::Value>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == key {
                    out.push(x);
                }
                find_all(x, key, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| find_all(x, key, out)),
        _ => {}
    }
}

#[test]
fn backup_job_is_unprivileged_and_reports_its_result() {
    let job = backup_job();
    assert_eq!(job["apiVersion"], "batch/v1");
    assert_eq!(job["kind"], "Job");
    let spec = &job["spec"];
    assert_eq!(spec["backoffLimit"], 0);
    assert_eq!(spec["activeDeadlineSeconds"], 600);
    let pod = &spec["template"]["spec"];
    assert_eq!(pod["restartPolicy"], "Never");
    assert!(
        pod["nodeName"].is_string() || pod["nodeSelector"].is_object(),
        "the Job must be pinned to the node"
    );
    for key in ["hostNetwork", "hostPID", "hostIPC"] {
        assert!(
            pod[key].is_null() || pod[key] == false,
            "{key} must stay off"
        );
    }

    // The only host path is /run/recoveryd, a directory, mounted where recoveryctl looks.
    let mut host_paths = Vec::new();
    find_all(&job, "hostPath", &mut host_paths);
    assert_eq!(
        host_paths.len(),
        1,
        "exactly one hostPath volume: {host_paths:?}"
    );
    assert_eq!(host_paths[0]["path"], "/run/recoveryd");
    assert_eq!(host_paths[0]["type"], "Directory");
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes.len(), 1, "no other volume: {volumes:?}");
    let volume = volumes[0]["name"].as_str().unwrap();

    let containers = pod["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    assert!(pod["initContainers"].is_null());
    let c = &containers[0];
    let mounts = c["volumeMounts"].as_array().unwrap();
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0]["name"], volume);
    assert_eq!(mounts[0]["mountPath"], "/run/recoveryd");

    let argv: Vec<&str> = c["command"]
        .as_array()
        .unwrap()
        .iter()
        .chain(c["args"].as_array().into_iter().flatten())
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(
        argv,
        [
            "/usr/bin/recoveryctl",
            "--socket",
            "/run/recoveryd/recoveryd.sock",
            "--result-file",
            "/dev/termination-log",
            "backup",
            "--wait"
        ]
    );
    assert!(
        c["image"].as_str().unwrap().contains("recoveryctl"),
        "image placeholder"
    );

    // Not privileged, no capabilities, read-only root, RuntimeDefault seccomp, uid 0.
    let mut privileged = Vec::new();
    find_all(&job, "privileged", &mut privileged);
    assert!(
        privileged.iter().all(|p| **p == false),
        "privileged: {privileged:?}"
    );
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"], false);
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert!(sc["capabilities"]["add"].is_null());
    let seccomp = if sc["seccompProfile"].is_null() {
        &pod["securityContext"]["seccompProfile"]
    } else {
        &sc["seccompProfile"]
    };
    assert_eq!(seccomp["type"], "RuntimeDefault");
    let uid = if sc["runAsUser"].is_null() {
        &pod["securityContext"]["runAsUser"]
    } else {
        &sc["runAsUser"]
    };
    assert_eq!(*uid, 0, "the socket is root-only");
    let mut se_types = Vec::new();
    find_all(&job, "seLinuxOptions", &mut se_types);
    assert!(
        se_types.iter().any(|o| o["type"] == "container_t"),
        "the SELinux type the module allows must be set: {se_types:?}"
    );

    // Every failure ends as a reason the controllers know (BackoffLimitExceeded,
    // DeadlineExceeded): no podFailurePolicy, whose reason TALM and ACM do not map. What
    // happened is the termination message recoveryctl writes.
    assert!(spec["podFailurePolicy"].is_null(), "no podFailurePolicy");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");
    assert_eq!(c["terminationMessagePolicy"], "FallbackToLogsOnError");
}

#[test]
fn the_scc_admits_the_backup_job_and_nothing_more() {
    let docs = yaml_docs("deploy/openshift/rbac.yaml");
    let kind = |k: &str| -> &serde_json::Value {
        docs.iter()
            .find(|d| d["kind"] == k)
            .unwrap_or_else(|| panic!("no {k} in deploy/openshift/rbac.yaml"))
    };
    for d in &docs {
        assert!(
            d["apiVersion"].is_string() && d["metadata"]["name"].is_string(),
            "{d}"
        );
    }
    let job = backup_job();
    let pod = &job["spec"]["template"]["spec"];
    let ns = kind("Namespace")["metadata"]["name"].clone();
    assert_eq!(job["metadata"]["namespace"], ns);
    let sa = kind("ServiceAccount");
    assert_eq!(sa["metadata"]["namespace"], ns);
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);

    // The privilege lint: nothing privileged, no host namespaces, read-only root, no
    // capability, one volume type.
    let scc = kind("SecurityContextConstraints");
    for off in [
        "allowPrivilegedContainer",
        "allowPrivilegeEscalation",
        "allowHostNetwork",
        "allowHostPID",
        "allowHostIPC",
        "allowHostPorts",
    ] {
        assert_eq!(scc[off], false, "{off}");
    }
    assert_eq!(scc["readOnlyRootFilesystem"], true);
    assert_eq!(scc["requiredDropCapabilities"], serde_json::json!(["ALL"]));
    assert_eq!(scc["allowedCapabilities"], serde_json::json!([]));
    assert_eq!(scc["volumes"], serde_json::json!(["hostPath"]));
    assert_eq!(scc["users"], serde_json::json!([]));
    assert_eq!(scc["groups"], serde_json::json!([]));
    // ... and what it requires is what the Job asks for.
    assert_eq!(scc["runAsUser"]["type"], "MustRunAs");
    assert_eq!(scc["runAsUser"]["uid"], pod["securityContext"]["runAsUser"]);
    assert_eq!(scc["seLinuxContext"]["type"], "MustRunAs");
    assert_eq!(
        scc["seLinuxContext"]["seLinuxOptions"]["type"],
        pod["securityContext"]["seLinuxOptions"]["type"]
    );
    assert_eq!(
        scc["seccompProfiles"],
        serde_json::json!(["runtime/default"])
    );
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );

    // Only that service account may use it, only that SCC, only "use".
    let role = kind("Role");
    assert_eq!(role["metadata"]["namespace"], ns);
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["verbs"], serde_json::json!(["use"]));
    assert_eq!(
        rules[0]["resourceNames"],
        serde_json::json!([scc["metadata"]["name"]])
    );
    let binding = kind("RoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(
        binding["subjects"],
        serde_json::json!([{"kind": "ServiceAccount", "name": sa["metadata"]["name"], "namespace": ns}])
    );
}

/// The ACM Policy on the hub carries exactly the objects of deploy/backup-job.yaml and
/// deploy/openshift/rbac.yaml (it is generated from them), and is Compliant only when the Job
/// has succeeded; the ClusterGroupUpgrade example lists it before the upgrade, backup: false.
#[test]
fn the_policy_is_generated_from_the_job_and_rbac_and_orders_backup_first() {
    let out = Command::new(root().join("deploy/openshift/generate-policy.py"))
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let committed = std::fs::read_to_string(root().join("deploy/openshift/policy.yaml")).unwrap();
    assert_eq!(
        text(&out.stdout),
        committed,
        "deploy/openshift/policy.yaml is stale: run deploy/openshift/generate-policy.py > deploy/openshift/policy.yaml"
    );
    let docs = yaml_docs("deploy/openshift/policy.yaml");
    let policy = docs.iter().find(|d| d["kind"] == "Policy").unwrap();
    assert_eq!(
        policy["spec"]["remediationAction"], "inform",
        "TALM requires inform"
    );
    let templates = policy["spec"]["policy-templates"].as_array().unwrap();
    let objects: Vec<&serde_json::Value> = templates
        .iter()
        .flat_map(|t| {
            t["objectDefinition"]["spec"]["object-templates"]
                .as_array()
                .unwrap()
        })
        .map(|o| {
            assert_eq!(o["complianceType"], "musthave");
            &o["objectDefinition"]
        })
        .collect();
    for rbac in yaml_docs("deploy/openshift/rbac.yaml") {
        assert!(
            objects.contains(&&rbac),
            "{} missing from the policy",
            rbac["kind"]
        );
    }
    let job = objects.iter().find(|o| o["kind"] == "Job").unwrap();
    assert_eq!(job["status"], serde_json::json!({"succeeded": 1}));
    assert_eq!(job["spec"], backup_job()["spec"]);
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "PlacementBinding")
        .unwrap();
    assert_eq!(binding["subjects"][0]["name"], policy["metadata"]["name"]);

    let cgu = yaml_docs("deploy/openshift/clustergroupupgrade-example.yaml");
    let spec = &cgu[0]["spec"];
    assert_eq!(spec["backup"], false);
    assert_eq!(spec["managedPolicies"][0], policy["metadata"]["name"]);
}

// ------------------------------------------------------------------------------------------
// File-context regexes
// ------------------------------------------------------------------------------------------

/// The subset of file-context regex syntax recoveryd.fc uses: literals, `\.`, `.`, `.*`, and
/// a trailing `(/.*)?`. Anything else fails the test, so that it is extended on purpose.
struct FcRegex(Vec<Tok>);

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Lit(char),
    Any,
    AnyStar,
    OptSubtree,
}

impl FcRegex {
    fn parse(re: &str) -> FcRegex {
        let mut toks = Vec::new();
        let mut rest = re;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix("(/.*)?") {
                assert!(r.is_empty(), "(/.*)? only at the end: {re}");
                toks.push(Tok::OptSubtree);
                rest = r;
            } else if let Some(r) = rest.strip_prefix(".*") {
                toks.push(Tok::AnyStar);
                rest = r;
            } else if let Some(r) = rest.strip_prefix('\\') {
                let c = r.chars().next().unwrap();
                toks.push(Tok::Lit(c));
                rest = &r[c.len_utf8()..];
            } else {
                let c = rest.chars().next().unwrap();
                assert!(
                    !"()[]{}?+*|^$".contains(c),
                    "regex syntax {c:?} not handled in {re}"
                );
                toks.push(if c == '.' { Tok::Any } else { Tok::Lit(c) });
                rest = &rest[c.len_utf8()..];
            }
        }
        FcRegex(toks)
    }

    fn matches(&self, s: &str) -> bool {
        fn m(t: &[Tok], s: &[char]) -> bool {
            match t.first() {
                None => s.is_empty(),
                Some(Tok::Lit(c)) => s.first() == Some(c) && m(&t[1..], &s[1..]),
                Some(Tok::Any) => !s.is_empty() && m(&t[1..], &s[1..]),
                Some(Tok::AnyStar) => (0..=s.len()).any(|i| m(&t[1..], &s[i..])),
                Some(Tok::OptSubtree) => s.is_empty() || s.first() == Some(&'/'),
            }
        }
        let chars: Vec<char> = s.chars().collect();
        m(&self.0, &chars)
    }

    fn literal_prefix(&self) -> String {
        self.0
            .iter()
            .map_while(|t| if let Tok::Lit(c) = t { Some(*c) } else { None })
            .collect()
    }

    fn ends_with_subtree(&self) -> bool {
        self.0.last() == Some(&Tok::OptSubtree)
            && self.0[..self.0.len() - 1]
                .iter()
                .all(|t| matches!(t, Tok::Lit(_)))
    }
}

#[test]
fn fc_regex_subset() {
    let r = FcRegex::parse(r"/etc/recoveryd(/.*)?");
    assert!(r.matches("/etc/recoveryd") && r.matches("/etc/recoveryd/config.toml"));
    assert!(!r.matches("/etc/recoveryd2") && !r.matches("/etc"));
    assert_eq!(r.literal_prefix(), "/etc/recoveryd");
    let r = FcRegex::parse(r"/usr/lib/recoveryd/config\.d(/.*)?");
    assert!(r.matches("/usr/lib/recoveryd/config.d") && !r.matches("/usr/lib/recoveryd/configxd"));
    let r = FcRegex::parse(r"/usr/lib/systemd/system/recoveryd.*");
    assert!(r.matches("/usr/lib/systemd/system/recoveryd-resume.service"));
    assert!(!r.ends_with_subtree());
}

// ------------------------------------------------------------------------------------------
// RHCOS
// ------------------------------------------------------------------------------------------

/// `deploy/rhcos/generate-machineconfig.py` with its arguments, as a parsed document and its text.
fn machine_config(args: &[&str]) -> (serde_json::Value, String) {
    // The SELinux module it embeds is the one rpm/build.sh compiled.
    built();
    let out = Command::new(root().join("deploy/rhcos/generate-machineconfig.py"))
        .args(args)
        .output()
        .expect("python3");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let yaml = text(&out.stdout);
    let json = Command::new("python3")
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(yaml.safe_load(sys.stdin)))",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(yaml.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(json.status.success());
    (serde_json::from_slice(&json.stdout).unwrap(), yaml)
}

fn decode_data_url(url: &str) -> Vec<u8> {
    let b64 = url
        .strip_prefix("data:;base64,")
        .unwrap_or_else(|| panic!("not a base64 data URL: {url:.40}"));
    let out = Command::new("base64")
        .arg("-d")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b64.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success(), "bad base64");
    out.stdout
}

/// Check a MachineConfig with tests/validate-ignition.py; its output on failure.
fn validate_ignition(yaml: &str) -> Result<(), String> {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("mc.yaml");
    std::fs::write(&f, yaml).unwrap();
    let out = Command::new(root().join("tests/validate-ignition.py"))
        .arg(&f)
        .output()
        .expect("python3");
    if out.status.success() {
        Ok(())
    } else {
        Err(text(&out.stdout) + &text(&out.stderr))
    }
}

/// The MachineConfig for nodes that do not layer the RPM passes the Ignition 3.2.0 check, and
/// every file and unit it writes is byte for byte the file of systemd/, selinux/ or
/// deploy/rhcos/ it comes from, at the place the RPM would put it (or its writable equivalent).
#[test]
fn the_rhcos_machine_config_installs_the_shipped_files_byte_for_byte() {
    let image = format!("quay.example/recoveryd/binaries@sha256:{}", "ab".repeat(32));
    let (mc, yaml) = machine_config(&["--role", "master", "--binaries-image", &image]);
    validate_ignition(&yaml).unwrap();
    assert_eq!(
        mc["metadata"]["labels"]["machineconfiguration.openshift.io/role"],
        "master"
    );
    let config = &mc["spec"]["config"];
    assert_eq!(config["ignition"]["version"], "3.2.0");
    let files: BTreeMap<String, (Vec<u8>, u64)> = config["storage"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["path"].as_str().unwrap().to_string(),
                (
                    decode_data_url(f["contents"]["source"].as_str().unwrap()),
                    f["mode"].as_u64().unwrap(),
                ),
            )
        })
        .collect();
    let read = |rel: &str| std::fs::read(root().join(rel)).unwrap();
    let expected: &[(&str, &str, u64)] = &[
        (
            "/etc/tmpfiles.d/recoveryd.conf",
            "systemd/recoveryd.tmpfiles",
            0o644,
        ),
        (
            "/etc/dbus-1/system.d/org.recoveryd.Recovery1.conf",
            "systemd/org.recoveryd.Recovery1.conf",
            0o644,
        ),
        (
            "/usr/local/share/dbus-1/system-services/org.recoveryd.Recovery1.service",
            "systemd/org.recoveryd.Recovery1.service",
            0o644,
        ),
        ("/etc/recoveryd/config.toml", "systemd/config.toml", 0o644),
        (
            "/etc/recoveryd/config.d/50-rhcos.toml",
            "deploy/rhcos/50-rhcos.toml",
            0o644,
        ),
        (
            "/usr/local/libexec/recoveryd-install",
            "deploy/rhcos/recoveryd-install.sh",
            0o755,
        ),
        (
            "/usr/local/libexec/recoveryd-selinux",
            "deploy/rhcos/recoveryd-selinux.sh",
            0o755,
        ),
    ];
    for (path, source, mode) in expected {
        let (content, m) = files.get(*path).unwrap_or_else(|| panic!("{path} missing"));
        assert!(*content == read(source), "{path} differs from {source}");
        assert_eq!(m, mode, "{path}");
    }
    // The SELinux module: the package's, bzip2-compressed as the package ships it.
    let (pp, _) = &files["/usr/local/share/recoveryd/recoveryd.pp.bz2"];
    let mut bunzip = Command::new("bunzip2")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        bunzip.stdin.take().unwrap().write_all(pp).unwrap();
    }
    let pp = bunzip.wait_with_output().unwrap();
    assert!(pp.status.success());
    assert!(
        pp.stdout == read("selinux/recoveryd.pp"),
        "the module differs"
    );
    assert_eq!(
        files["/etc/recoveryd/binaries-image"].0,
        format!("{image}\n").into_bytes()
    );
    assert_eq!(
        files.len(),
        expected.len() + 2,
        "unexpected files: {:?}",
        files.keys()
    );
    // The units: the RPM's four and the installer's two, enabled as the preset enables them.
    let units = config["systemd"]["units"].as_array().unwrap();
    let preset = std::fs::read_to_string(root().join("systemd/80-recoveryd.preset")).unwrap();
    for (name, source) in [
        ("recoveryd.service", "systemd/recoveryd.service"),
        ("recoveryd.socket", "systemd/recoveryd.socket"),
        (
            "recoveryd-resume.service",
            "systemd/recoveryd-resume.service",
        ),
        (
            "recoveryd-resume-offline.service",
            "systemd/recoveryd-resume-offline.service",
        ),
        (
            "recoveryd-selinux.service",
            "deploy/rhcos/recoveryd-selinux.service",
        ),
        (
            "recoveryd-install.service",
            "deploy/rhcos/recoveryd-install.service",
        ),
    ] {
        let u = units
            .iter()
            .find(|u| u["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing"));
        assert!(
            u["contents"].as_str().unwrap().as_bytes() == read(source),
            "{name} differs from {source}"
        );
        let dropins = u["dropins"].as_array().cloned().unwrap_or_default();
        if name == "recoveryd.service" {
            // The binary is in /usr/local/bin here, and the unit names /usr/bin/recoveryd.
            assert_eq!(dropins.len(), 1, "{name}: {dropins:?}");
            let c = dropins[0]["contents"].as_str().unwrap();
            assert!(
                c.contains("[Service]\nExecStart=\nExecStart=/usr/local/bin/recoveryd\n"),
                "{c}"
            );
        } else {
            assert!(dropins.is_empty(), "{name}: {dropins:?}");
        }
        let enabled = u["enabled"].as_bool().unwrap_or(false);
        let by_preset = preset.lines().any(|l| l.trim() == format!("enable {name}"));
        let installer = source.starts_with("deploy/rhcos/");
        assert_eq!(enabled, by_preset || installer, "{name} enabled: {enabled}");
    }
    assert_eq!(units.len(), 6);
    // The installer's units and scripts are well-formed.
    for script in ["recoveryd-install.sh", "recoveryd-selinux.sh"] {
        run_ok(
            Command::new("sh")
                .arg("-n")
                .arg(root().join("deploy/rhcos").join(script)),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    for name in ["recoveryd-install.service", "recoveryd-selinux.service"] {
        std::fs::copy(
            root().join("deploy/rhcos").join(name),
            dir.path().join(name),
        )
        .unwrap();
    }
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg("--man=no")
        .arg(dir.path().join("recoveryd-install.service"))
        .arg(dir.path().join("recoveryd-selinux.service"))
        .output()
        .unwrap();
    let err = text(&out.stderr);
    // The ExecStart programs are on the node, not here; anything else is a unit error.
    let real: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty())
        .filter(|l| !l.contains("Command /usr/local/libexec/recoveryd-"))
        .collect();
    assert!(real.is_empty(), "{err}");
}

/// The check of tests/validate-ignition.py fails on what Ignition or the MCO would refuse.
#[test]
fn the_ignition_check_refuses_what_ignition_refuses() {
    let (_, good) = machine_config(&[]);
    validate_ignition(&good).unwrap();
    for (what, from, to) in [
        ("unknown key", "overwrite: true", "overwrites: true"),
        (
            "relative path",
            "path: /etc/tmpfiles.d/recoveryd.conf",
            "path: etc/tmpfiles.d/recoveryd.conf",
        ),
        (
            "unclean path",
            "path: /etc/tmpfiles.d/recoveryd.conf",
            "path: /etc/tmpfiles.d/../recoveryd.conf",
        ),
        (
            "duplicate path",
            "path: /etc/recoveryd/config.toml",
            "path: /etc/tmpfiles.d/recoveryd.conf",
        ),
        (
            "remote source",
            "source: data:;base64,",
            "source: https://example.com/",
        ),
        (
            "bad base64",
            "source: data:;base64,",
            "source: data:;base64,@@@",
        ),
        ("version", "version: 3.2.0", "version: 2.2.0"),
        ("unit name", "name: recoveryd.socket", "name: recoveryd"),
        ("mode", "mode: 420", "mode: 99999"),
        (
            "no role",
            "machineconfiguration.openshift.io/role: master",
            "role: master",
        ),
    ] {
        assert!(good.contains(from), "{what}: {from}");
        let bad = good.replacen(from, to, 1);
        assert!(validate_ignition(&bad).is_err(), "{what} passed");
    }
    // The layered way: the OS image by digest.
    let layered =
        std::fs::read_to_string(root().join("deploy/rhcos/machineconfig-layered.yaml")).unwrap();
    validate_ignition(&layered).unwrap();
    let tagged = layered.replace(&format!("@sha256:{}", "0".repeat(64)), ":latest");
    assert!(validate_ignition(&tagged).is_err());
    // Its Containerfile takes the packages rpm/build.sh makes.
    let containerfile = std::fs::read_to_string(root().join("deploy/rhcos/Containerfile")).unwrap();
    let b = built();
    for (name, pattern) in [
        ("recoveryd", "x86_64/recoveryd-*.x86_64.rpm"),
        ("recoveryd-selinux", "noarch/recoveryd-selinux-*.noarch.rpm"),
    ] {
        assert!(containerfile.contains(pattern), "{pattern}");
        let rpm = b.rpm(name);
        let dir = rpm.parent().unwrap().file_name().unwrap().to_string_lossy();
        let (d, glob) = pattern.split_once('/').unwrap();
        assert_eq!(dir, d, "{}", rpm.display());
        let (pre, post) = glob.split_once('*').unwrap();
        let file = rpm.file_name().unwrap().to_string_lossy();
        assert!(
            file.starts_with(pre) && file.ends_with(post),
            "{file} vs {glob}"
        );
    }
}

/// What `systemd-analyze security` may find at most in each shipped unit (lower is safer).
const EXPOSURE_LIMITS: [(&str, f64); 3] = [
    ("recoveryd.service", 5.0),
    ("recoveryd-resume.service", 6.0),
    ("recoveryd-resume-offline.service", 6.0),
];

/// `systemd-analyze security --offline=true` of each unit stays within its limit, and every
/// exposure it still reports is named in a comment of the unit (the capabilities by the
/// comment above `CapabilityBoundingSet=`).
#[test]
fn units_are_hardened_within_their_exposure_limits() {
    for (unit, limit) in EXPOSURE_LIMITS {
        let path = root().join("systemd").join(unit);
        let out = Command::new("systemd-analyze")
            .args(["security", "--offline=true", "--no-pager"])
            .arg(&path)
            .output()
            .expect("systemd-analyze (Debian package systemd)");
        let report = text(&out.stdout) + &text(&out.stderr);
        let overall = report
            .lines()
            .find_map(|l| l.split("Overall exposure level for ").nth(1))
            .unwrap_or_else(|| panic!("no overall exposure for {unit}:\n{report}"));
        let level: f64 = overall
            .split(':')
            .nth(1)
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("cannot read {overall:?}"));
        assert!(
            level <= limit,
            "{unit}: exposure {level} above {limit}:\n{report}"
        );
        let source = std::fs::read_to_string(&path).unwrap();
        let comments: String = source
            .lines()
            .filter(|l| l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n");
        let mut unexplained = Vec::new();
        for line in report.lines().filter(|l| l.starts_with('✗')) {
            let setting = line
                .trim_start_matches('✗')
                .split_whitespace()
                .next()
                .unwrap();
            if setting.starts_with("CapabilityBoundingSet=") {
                if !source.contains("\nCapabilityBoundingSet=") {
                    unexplained.push(setting.to_string());
                }
                continue;
            }
            // `User=/DynamicUser=` -> `User=`; `SystemCallFilter=~@resources` -> `@resources`;
            // `RestrictAddressFamilies=~AF_UNIX` is explained with the families set.
            let key = match setting.split_once("=~") {
                Some((_, v)) if v.starts_with('@') => v.to_string(),
                Some((k, _)) => format!("{k}="),
                None => setting.split('/').next().unwrap().to_string(),
            };
            let key = if key.ends_with('=') { key } else { key.clone() };
            if !comments.contains(&key) && !source.contains(&format!("\n{key}")) {
                unexplained.push(format!("{setting} ({key})"));
            }
        }
        assert!(
            unexplained.is_empty(),
            "{unit}: exposures no comment of the unit explains: {unexplained:?}\n{report}"
        );
    }
}

/// `recoveryd-resume-offline.service` does the daemon's work in its own process: its sandbox is
/// the daemon's, line for line.
#[test]
fn the_offline_resume_has_the_daemons_sandbox() {
    let sandbox = |unit: &str| -> Vec<String> {
        let text = std::fs::read_to_string(root().join("systemd").join(unit)).unwrap();
        let start = text
            .find("\nProtectSystem=")
            .unwrap_or_else(|| panic!("{unit} has no ProtectSystem="));
        text[start..]
            .lines()
            .take_while(|l| !l.starts_with('['))
            .filter(|l| !l.starts_with('#') && l.contains('='))
            .map(str::to_string)
            .collect()
    };
    let daemon = sandbox("recoveryd.service");
    assert!(daemon.len() > 20, "{daemon:?}");
    assert_eq!(daemon, sandbox("recoveryd-resume-offline.service"));
}
