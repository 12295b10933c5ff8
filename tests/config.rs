//! Configuration: drop-in order, and errors that name the file and the key.

use std::fs;
use std::path::Path;

use recoveryd::config::{Config, ConfigError, ConfigSource};

fn write(p: &Path, s: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

#[test]
fn defaults_without_any_file() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config::load(&ConfigSource::Standard {
        prefix: dir.path().into(),
    })
    .unwrap();
    assert_eq!(cfg.root, Path::new("/"));
    assert_eq!(cfg.state_dir, Path::new("/var/recovery"));
    assert_eq!(cfg.backup.keep, 2);
    assert_eq!(cfg.backup.space_margin, 10 << 30);
    assert_eq!(cfg.backup.deadline.as_secs(), 480);
    assert_eq!(cfg.recovery.boot_attempts, 3);
    assert_eq!(cfg.backup.paths.len(), 3);
    assert!(cfg.files.is_empty());
}

#[test]
fn later_files_override_earlier_keys() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write(
        &p.join("usr/lib/recoveryd/config.d/10-vendor.toml"),
        "[backup]\nkeep = 5\nimages = true\n",
    );
    write(
        &p.join("usr/lib/recoveryd/config.d/20-masked.toml"),
        "[backup]\nkeep = 9\n",
    );
    write(
        &p.join("etc/recoveryd/config.d/20-masked.toml"),
        "[recovery]\nboot_attempts = 4\n",
    );
    write(
        &p.join("etc/recoveryd/config.toml"),
        "root = \"/srv/node\"\n[backup]\nkeep = 3\n",
    );
    write(
        &p.join("etc/recoveryd/config.d/50-admin.toml"),
        "[backup]\nspace_margin = \"1GiB\"\n[steps.restore-etc]\ntimeout = \"20m\"\n",
    );
    let cfg = Config::load(&ConfigSource::Standard { prefix: p.into() }).unwrap();
    assert_eq!(cfg.root, Path::new("/srv/node"));
    assert_eq!(cfg.backup.keep, 3, "config.toml overrides vendor drop-ins");
    assert!(cfg.backup.images, "keys not overridden survive");
    assert_eq!(
        cfg.recovery.boot_attempts, 4,
        "admin drop-in replaces vendor one of the same name"
    );
    assert_eq!(cfg.backup.space_margin, 1 << 30);
    assert_eq!(cfg.step_limits("restore-etc").timeout.as_secs(), 1200);
    assert_eq!(cfg.files.len(), 4);
    assert_eq!(cfg.host_path("/etc"), Path::new("/srv/node/etc"));
}

#[test]
fn every_section_survives_a_merge() {
    // One key of each section set only in a drop-in: each must reach the merged settings.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    write(&p.join("etc/recoveryd/config.toml"), "[backup]\nkeep = 3\n");
    write(
        &p.join("etc/recoveryd/config.d/50-admin.toml"),
        "[backup]\nworkers = 2\n[recovery]\npermissive = true\n\
         [host]\njob_timeout = \"2m\"\ntransaction_timeout = \"7m\"\n\
         [engine]\nretry_delay = \"3s\"\n[steps.restore-etc]\nretries = 4\n",
    );
    let cfg = Config::load(&ConfigSource::Standard { prefix: p.into() }).unwrap();
    assert_eq!(cfg.backup.keep, 3);
    assert_eq!(cfg.backup.workers, 2);
    assert!(cfg.recovery.permissive);
    assert_eq!(cfg.host.job_timeout.as_secs(), 120);
    assert_eq!(cfg.host.transaction_timeout.as_secs(), 420);
    assert_eq!(cfg.engine.retry_delay.as_secs(), 3);
    assert_eq!(cfg.step_limits("restore-etc").retries, 4);
}

#[test]
fn unknown_key_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    write(&f, "[backup]\nkeep = 2\nkeeep = 3\n");
    let err = Config::load(&ConfigSource::File(f.clone())).unwrap_err();
    assert!(
        matches!(&err, ConfigError::UnknownKey { key, .. } if key == "backup.keeep"),
        "{err}"
    );
    let msg = err.to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains("backup.keeep"),
        "{msg}"
    );

    write(&f, "colour = \"blue\"\n");
    let msg = Config::load(&ConfigSource::File(f.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("bad.toml") && msg.contains("`colour`"),
        "{msg}"
    );
}

#[test]
fn wrong_type_names_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("types.toml");
    write(&f, "[backup]\nkeep = \"two\"\n");
    let msg = Config::load(&ConfigSource::File(f.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("types.toml") && msg.contains("backup.keep"),
        "{msg}"
    );

    write(&f, "[recovery]\ncontainer_timeout = \"soon\"\n");
    let msg = Config::load(&ConfigSource::File(f.clone()))
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("recovery.container_timeout") && msg.contains("soon"),
        "{msg}"
    );
}

#[test]
fn bad_toml_names_file() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("syntax.toml");
    write(&f, "[backup\nkeep = 2\n");
    let err = Config::load(&ConfigSource::File(f.clone())).unwrap_err();
    assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    assert!(err.to_string().contains("syntax.toml"));
}

#[test]
fn invalid_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.toml");
    for (text, key) in [
        ("[backup]\nkeep = 0\n", "backup.keep"),
        ("state_dir = \"var/recovery\"\n", "state_dir"),
        (
            "[backup]\npaths = [\"/etc\", \"/etc/kubernetes\"]\n",
            "backup.paths",
        ),
        ("[backup]\nexclude = [\"relative\"]\n", "backup.exclude"),
        ("state_dir = \"/etc/recovery\"\n", "state_dir"),
    ] {
        write(&f, text);
        let msg = Config::load(&ConfigSource::File(f.clone()))
            .unwrap_err()
            .to_string();
        assert!(msg.contains(key) && msg.contains("c.toml"), "{text}: {msg}");
    }
}

#[test]
fn unknown_step_override_is_an_error() {
    let cfg =
        Config::from_toml("[steps.no-such-step]\nretries = 2\n", Path::new("x.toml")).unwrap();
    let msg = cfg
        .check_step_names(&["restore-etc"])
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("steps.no-such-step") && msg.contains("x.toml"),
        "{msg}"
    );
}

#[test]
fn the_shipped_sample_config_is_valid() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/config.toml");
    let cfg = Config::load(&ConfigSource::File(sample)).unwrap();
    assert_eq!(cfg.state_dir, Path::new("/var/recovery"));
}

#[test]
fn the_sample_config_documents_the_defaults() {
    // Uncommenting every `#key = value` line of the sample must give exactly the defaults.
    let sample =
        fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd/config.toml"))
            .unwrap();
    let mut text = String::new();
    let mut keys = 0;
    for line in sample.lines() {
        let uncommented = line.strip_prefix('#').filter(|l| {
            l.split_once(" = ")
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        });
        match uncommented {
            Some(l) if !text.contains("[steps") => {
                keys += 1;
                text.push_str(l);
            }
            _ => text.push_str(line),
        }
        text.push('\n');
    }
    let cfg = Config::from_toml(&text, Path::new("sample")).unwrap();
    let defaults = Config {
        files: cfg.files.clone(),
        ..Default::default()
    };
    assert_eq!(format!("{cfg:?}"), format!("{defaults:?}"));
    assert!(keys > 35, "only {keys} keys documented");
}

/// The drop-in the RHCOS MachineConfig installs beside the shipped config.toml loads, and keeps
/// recoveryd's own files in /usr/local out of backups and restores.
#[test]
fn the_rhcos_drop_in_is_valid_and_excludes_recoveryds_own_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let project = Path::new(env!("CARGO_MANIFEST_DIR"));
    write(
        &p.join("etc/recoveryd/config.toml"),
        &fs::read_to_string(project.join("systemd/config.toml")).unwrap(),
    );
    write(
        &p.join("etc/recoveryd/config.d/50-rhcos.toml"),
        &fs::read_to_string(project.join("deploy/rhcos/50-rhcos.toml")).unwrap(),
    );
    let cfg = Config::load(&ConfigSource::Standard { prefix: p.into() }).unwrap();
    for path in [
        "/usr/local/bin/recoveryd",
        "/usr/local/bin/recoveryctl",
        "/usr/local/lib/recoveryd",
    ] {
        assert!(
            cfg.backup.exclude.iter().any(|e| e == path),
            "{path} not excluded: {:?}",
            cfg.backup.exclude
        );
    }
    assert!(
        cfg.backup
            .paths
            .iter()
            .any(|t| t == Path::new("/usr/local"))
    );
}
