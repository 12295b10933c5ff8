//! The shape of every `recoveryctl --json` document, against `tests/golden/` (see
//! `common/golden.rs`). Runs as any user: a throwaway node with the host integrations off,
//! everything `--offline`.

mod common;

use std::process::Command;

use common::{Node, golden, run};

const HOST_OFF: &str =
    "[host]\nsystemd = false\nostree = false\ncluster = false\n[backup]\nspace_margin = 0\n";

fn ctl(node: &Node, args: &[&str]) -> (i32, String, String) {
    run(Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .arg("--json")
        .args(args)
        .env_remove("RECOVERYD_FAILPOINTS"))
}

fn populate(node: &Node) {
    for (path, content) in [
        ("/etc/hostname", "node1\n"),
        ("/etc/hosts", "127.0.0.1 localhost\n"),
        ("/usr/local/bin/tool", "#!/bin/sh\n"),
        (
            "/var/lib/kubelet/config.yaml",
            "kind: KubeletConfiguration\n",
        ),
    ] {
        let p = node.path(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }
}

fn generation_ids(node: &Node) -> Vec<String> {
    let (_, out, _) = ctl(node, &["generations"]);
    common::json_list(&out, "generations")
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["info"]["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn every_json_document_keeps_its_shape() {
    let node = Node::new(HOST_OFF);
    let root = node.root();
    let check = |name: &str, args: &[&str], want_code: i32| {
        let (code, out, err) = ctl(&node, args);
        assert_eq!(code, want_code, "{name}: {out}{err}");
        golden::check(name, &out, &root, &generation_ids(&node));
    };
    populate(&node);

    check("status-empty", &["--offline", "status"], 0);
    check("generations-empty", &["generations"], 0);
    check("error-no-journal", &["journal"], 1);
    check("backup", &["--offline", "backup"], 0);
    check("generations", &["generations"], 0);
    check("verify", &["verify"], 0);
    check("check", &["check"], 0);
    check(
        "generations-protect",
        &["generations", "protect", "latest"],
        0,
    );
    check(
        "generations-label",
        &["generations", "label", "latest", "before 4.16"],
        0,
    );
    check(
        "error-delete-protected",
        &["generations", "delete", "latest"],
        1,
    );
    check("gc", &["gc"], 0);
    std::fs::write(node.path("/etc/hosts"), "changed\n").unwrap();
    std::fs::write(node.path("/etc/new-file"), "new\n").unwrap();
    check("diff", &["diff"], 1);
    check("recover-dry-run", &["recover", "--dry-run"], 0);
    check(
        "restore-files-dry-run",
        &["restore-files", "--dry-run", "--path", "/etc/hosts"],
        0,
    );
    check("restore-files", &["--offline", "restore-files"], 0);
    check("status", &["--offline", "status"], 0);
    check("journal", &["journal"], 0);
    check("journal-run", &["journal", "--run", "1"], 0);
    check("resume-boot-nothing", &["--offline", "resume", "--boot"], 0);
    // Errors are documents too.
    check("error-not-found", &["verify", "no-such-generation"], 1);
    check("error-nothing-to-cancel", &["--offline", "cancel"], 1);
    check("error-resume-nothing", &["--offline", "resume"], 1);
}

fn ctl_human(node: &Node, args: &[&str]) -> (i32, String) {
    let (code, out, err) = run(Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
        .arg("--config")
        .arg(&node.config)
        .args(args)
        .env_remove("RECOVERYD_FAILPOINTS"));
    (code, format!("{out}--- stderr\n{err}"))
}

#[test]
fn what_people_read_keeps_its_words() {
    let node = Node::new(HOST_OFF);
    let root = node.root();
    let check = |name: &str, args: &[&str], want_code: i32| {
        let (code, text) = ctl_human(&node, args);
        assert_eq!(code, want_code, "{name}: {text}");
        golden::check_text(name, &text, &root, &generation_ids(&node));
    };
    populate(&node);
    check("human-generations-empty", &["generations"], 0);
    let (code, text) = ctl_human(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{text}");
    let (code, text) = ctl_human(
        &node,
        &["generations", "label", "latest", "before the upgrade"],
    );
    assert_eq!(code, 0, "{text}");
    std::fs::write(node.path("/etc/hostname"), "node1.example\n").unwrap();
    let (code, text) = ctl_human(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{text}");
    check("human-generations", &["generations"], 0);
    std::fs::write(node.path("/etc/hosts"), "changed\n").unwrap();
    std::fs::write(node.path("/etc/new-file"), "new\n").unwrap();
    std::fs::remove_file(node.path("/usr/local/bin/tool")).unwrap();
    check("human-diff", &["diff"], 1);
    let ids = generation_ids(&node);
    check("human-diff-generations", &["diff", &ids[0], &ids[1]], 1);
    check("human-recover-dry-run", &["recover", "--dry-run"], 0);
    check("human-status", &["--offline", "status"], 0);
}

/// On a terminal `restore-files` asks first; "n" changes nothing. (`script` gives the command
/// a terminal; it is in util-linux, on every Debian.)
#[test]
fn on_a_terminal_a_restore_asks_first_and_no_changes_nothing() {
    let node = Node::new(HOST_OFF);
    populate(&node);
    let (code, out, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{out}{err}");
    std::fs::write(node.path("/etc/hosts"), "changed\n").unwrap();
    let cmd = format!(
        "{} --config {} --offline restore-files",
        env!("CARGO_BIN_EXE_recoveryctl"),
        node.config.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("script (util-linux)");
    use std::io::Write;
    child.stdin.take().unwrap().write_all(b"n\n").unwrap();
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("[y/N]"), "{text}");
    assert!(text.contains("not confirmed; nothing changed"), "{text}");
    assert_eq!(o.status.code(), Some(4), "{text}");
    assert_eq!(
        std::fs::read_to_string(node.path("/etc/hosts")).unwrap(),
        "changed\n"
    );
}

/// A reader that stops early (`recoveryctl journal | head -1`) ends recoveryctl quietly and
/// successfully, whatever it was printing: no panic about a broken pipe.
#[test]
fn a_reader_that_goes_away_ends_the_output_quietly() {
    let node = Node::new(HOST_OFF);
    populate(&node);
    let (code, _, err) = ctl(&node, &["--offline", "backup"]);
    assert_eq!(code, 0, "{err}");
    for args in [
        &["--json", "--offline", "journal"][..],
        &["--offline", "journal"][..],
    ] {
        // The read end is closed before recoveryctl writes: every write is EPIPE.
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = Command::new(env!("CARGO_BIN_EXE_recoveryctl"))
            .arg("--config")
            .arg(&node.config)
            .args(args)
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}
