//! Every protocol message survives its own serialization: what one side writes, the other
//! reads back as the same value (one example of each variant, the optional fields both set
//! and absent). The shapes themselves are pinned by the golden files (`tests/golden.rs`).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::inspect::{Diff, DryRun, DryRunStep, GenerationEntry, Generations, RunDetail, Runs};
use super::*;
use crate::files::identity::{ClusterIdentity, DeploymentIdentity, Identity, RecoverydIdentity};
use crate::files::manifest::TreeInfo;
use crate::files::marks::Marks;
use crate::files::restore::{Change, ChangeKind};
use crate::files::store::{GenerationInfo, StoreStats};
use crate::files::verify::{Problem, ProblemKind, VerifyReport};
use crate::journal::{RunKind, RunRecord, RunState, StepRecord, StepState};

/// `value` written as a document and read back is `value`; returns the JSON for more checks.
fn round_trip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(
    value: &T,
) -> serde_json::Value {
    let line = to_line(value);
    assert!(!line.contains('\n'), "one line: {line}");
    let doc: Doc<T> = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(doc.schema, SCHEMA);
    assert_eq!(&doc.body, value, "{line}");
    let pretty: Doc<T> = serde_json::from_str(&to_pretty(value)).unwrap();
    assert_eq!(&pretty.body, value);
    serde_json::from_str(&line).unwrap()
}

fn run_record(state: RunState, finished: bool) -> RunRecord {
    RunRecord {
        id: 7,
        kind: RunKind::Recovery,
        state,
        stage: finished.then(|| "restore".into()),
        options: serde_json::json!({"plan": "recover", "force": false}),
        plan: vec![("check".into(), "check-identity".into())],
        started: "2026-12-01T10:00:00Z".into(),
        finished: finished.then(|| "2026-12-01T10:05:00Z".into()),
        error: finished.then(|| "it broke".into()),
        boot_id: "b1".into(),
        no_progress_boots: 1,
    }
}

fn summary(with_optional: bool) -> RunSummary {
    RunSummary {
        id: 3,
        kind: RunKind::Backup,
        state: RunState::Running,
        phase: "Active".into(),
        stage: with_optional.then(|| "copy".into()),
        started: "2026-12-01T10:00:00Z".into(),
        finished: with_optional.then(|| "2026-12-01T10:01:00Z".into()),
        error: with_optional.then(|| "no space".into()),
        steps_done: 2,
        steps_total: 8,
        progress: 25,
    }
}

fn generation_entry(full: bool) -> GenerationEntry {
    GenerationEntry {
        short_id: "cdcdcdcd".into(),
        info: GenerationInfo {
            format: 1,
            id: "g1".into(),
            created: "2026-12-01T10:00:00Z".into(),
            manifest_hash: "cd".repeat(32),
            entries: 3,
            bytes: 10,
            trees: vec![TreeInfo {
                path: "/usr/local".into(),
                present: true,
                resolved: full.then(|| "/var/usrlocal".into()),
            }],
            identity: identity(full),
            images: None,
        },
        dir: "/var/recovery/generations/g1".into(),
        in_journal: full,
        marks: Marks {
            protected: full,
            label: full.then(|| "before 4.16".into()),
        },
        latest: full,
    }
}

fn identity(full: bool) -> Identity {
    if !full {
        return Identity::default();
    }
    let mut other = serde_json::Map::new();
    other.insert("added_later".into(), serde_json::json!({"x": [1, 2]}));
    Identity {
        hostname: Some("node1".into()),
        machine_id: Some("0123".into()),
        recoveryd: Some(RecoverydIdentity {
            version: "0.1.0".into(),
            journal_format: 2,
        }),
        deployment: Some(DeploymentIdentity {
            id: "rhcos-abc.0".into(),
            osname: "rhcos".into(),
            checksum: "abc".into(),
            serial: 0,
            version: Some("416.94".into()),
        }),
        cluster: Some(ClusterIdentity {
            id: "c1".into(),
            version: None,
        }),
        other,
    }
}

#[test]
fn requests() {
    let all = [
        Request::Status {},
        Request::Backup { wait: true },
        Request::recover(RecoverRequest::default(), false),
        Request::recover(
            RecoverRequest {
                force: true,
                allow_foreign: true,
                step: true,
                generation: Some("g1".into()),
            },
            true,
        ),
        Request::Resume {
            boot: true,
            step: false,
            wait: true,
        },
        Request::Restart {
            step: true,
            wait: false,
        },
        Request::Cancel {},
    ];
    for r in &all {
        // Requests are read without the document wrapper too (the socket's clients write
        // them bare).
        let bare: Request = serde_json::from_str(&serde_json::to_string(r).unwrap()).unwrap();
        assert_eq!(&bare, r);
    }
    let v: Vec<Request> = serde_json::from_value(serde_json::to_value(&all).unwrap()).unwrap();
    assert_eq!(v, all);
    let req = RecoverRequest {
        generation: Some("g".into()),
        ..Default::default()
    };
    assert_eq!(
        Request::recover(req.clone(), true).recover_options(),
        Some(req)
    );
}

#[test]
fn replies_and_errors() {
    let errors = [
        ApiError::Busy("backup run 1 is in progress".into()),
        ApiError::NotFound("no generation g".into()),
        ApiError::InvalidArgs("unknown field `x`".into()),
        ApiError::Corrupted("manifest hash differs".into()),
        ApiError::AccessDenied("uid 65534".into()),
        ApiError::Failed("it broke".into()),
    ];
    for e in &errors {
        let v = round_trip(&Reply::Error(e.clone()));
        assert_eq!(v["reply"], "error");
        assert_eq!(v["name"], e.dbus_name());
        assert_eq!(ApiError::from_name(e.short_name(), e.message().into()), *e);
    }
    for state in [
        RunState::Succeeded,
        RunState::AwaitingReboot,
        RunState::Failed,
    ] {
        round_trip(&Reply::Finished(RunOutcome {
            run: 2,
            kind: RunKind::Backup,
            state,
            phase: status::phase(RunKind::Backup, state),
            message: "done".into(),
        }));
    }
    round_trip(&Reply::Started {
        run: 4,
        kind: RunKind::Recovery,
    });
    round_trip(&Reply::NothingToResume {
        message: "no open recovery".into(),
    });
    round_trip(&Reply::Cancel {
        run: 4,
        kind: RunKind::Recovery,
        message: "recovery run 4 cancelled".into(),
    });
    for full in [false, true] {
        let v = round_trip(&Reply::Status(Box::new(status(full))));
        assert_eq!(v["reply"], "status");
    }
}

fn status(full: bool) -> Status {
    Status {
        state: if full { "Active".into() } else { "idle".into() },
        current_run: full.then(|| summary(true)),
        live: full.then(|| Live {
            run: Some(3),
            kind: Some(RunKind::Backup),
            stage: Some("copy".into()),
            step: Some("copy-files".into()),
            steps_done: 3,
            steps_total: 8,
            done: 10,
            total: 20,
            bytes_done: 1 << 20,
            bytes_total: 2 << 20,
        }),
        last_backup: Some(summary(full)),
        last_recovery: None,
        generations: if full {
            vec![generation_entry(true)]
        } else {
            vec![]
        },
        warnings: if full {
            vec!["/var/recovery also holds TALM's backup".into()]
        } else {
            Vec::new()
        },
        store: full.then(|| StoreStats {
            generations: 1,
            objects: 10,
            bytes: 4096,
            referenced_objects: 10,
            referenced_bytes: 4096,
            ..Default::default()
        }),
    }
}

#[test]
fn events_and_lines() {
    let events = [
        Event::RunStarted {
            run: 1,
            kind: RunKind::Backup,
            resumed: false,
        },
        Event::StageStarted {
            run: 1,
            stage: "copy".into(),
        },
        Event::StepStarted {
            run: 1,
            stage: "copy".into(),
            step: "copy-files".into(),
            attempt: 2,
            index: 3,
            total: 8,
        },
        Event::StepProgress {
            run: 1,
            step: "copy-files".into(),
            done: 5,
            total: 9,
            bytes_done: 100,
            bytes_total: 900,
            message: "etc/hosts".into(),
        },
        Event::StepFinished {
            run: 1,
            stage: "copy".into(),
            step: "copy-files".into(),
            state: StepState::Done,
            detail: "12 files".into(),
            index: 3,
            total: 8,
        },
        Event::RunFinished {
            run: 1,
            kind: RunKind::Backup,
            state: RunState::Succeeded,
            phase: "Succeeded".into(),
            message: "generation g1".into(),
        },
        Event::Idle,
    ];
    for e in &events {
        round_trip(e);
        // As a line of the socket stream, an event reads back as an event ...
        assert_eq!(read_line(&to_line(e)).unwrap(), Line::Event(e.clone()));
        // ... and its borrowed form, the engine's, converts back to it.
        if let Some(b) = e.as_engine() {
            assert_eq!(&Event::from(&b), e);
        }
    }
    // ... and a reply as a reply.
    let r = Reply::Started {
        run: 1,
        kind: RunKind::Backup,
    };
    assert_eq!(read_line(&to_line(&r)).unwrap(), Line::Reply(r));
    assert!(read_line("{\"schema\":1,\"event\":\"exploded\"}").is_err());
    assert!(read_line("{\"event\":\"idle\"}").is_err(), "no schema");
}

#[test]
fn documents_of_the_read_only_commands() {
    for full in [false, true] {
        round_trip(&Runs {
            runs: vec![run_record(RunState::Running, full)],
        });
        round_trip(&RunDetail {
            run: run_record(RunState::Failed, full),
            steps: vec![StepRecord {
                id: 1,
                run: 7,
                seq: 0,
                name: "check-identity".into(),
                stage: "check".into(),
                state: StepState::Failed,
                attempt: 1,
                started: "2026-12-01T10:00:00Z".into(),
                finished: full.then(|| "2026-12-01T10:00:01Z".into()),
                boot_id: "b1".into(),
                detail: full.then(|| "taken elsewhere".into()),
            }],
            vars: vec![("identity".into(), "{}".into())],
        });
        let v = round_trip(&Generations {
            generations: vec![generation_entry(full)],
        });
        if full {
            // Keys a newer recoveryd recorded are kept.
            assert_eq!(
                v["generations"][0]["info"]["identity"]["added_later"]["x"][1],
                2
            );
        }
        round_trip(&VerifyReport {
            generation: "g1".into(),
            ok: !full,
            files_checked: 3,
            bytes_checked: 10,
            shared_unchanged: 1,
            problems: if full {
                vec![Problem {
                    path: "etc/hosts".into(),
                    problem: ProblemKind::Changed,
                    detail: "content differs from the manifest".into(),
                }]
            } else {
                vec![]
            },
        });
        round_trip(&Diff {
            from: full.then(|| "g0".into()),
            generation: "g1".into(),
            changes: vec![Change {
                path: "etc/hosts".into(),
                change: ChangeKind::Content,
                detail: if full {
                    "12 bytes".into()
                } else {
                    String::new()
                },
            }],
            mounts_left: vec!["/var/lib/kubelet/pods/p/volumes/v".into()],
            notes: vec![],
        });
        round_trip(&DryRun {
            generation: "g1".into(),
            steps: vec![DryRunStep {
                index: 0,
                stage: "check".into(),
                step: "check-identity".into(),
                text: "check that ...".into(),
            }],
        });
    }
}

#[test]
fn a_document_of_a_newer_schema_with_more_fields_still_reads() {
    // Fields added later are ignored by readers of this schema.
    let line = "{\"schema\":1,\"reply\":\"started\",\"run\":3,\"kind\":\"backup\",\"later\":true}";
    assert_eq!(
        read_line(line).unwrap(),
        Line::Reply(Reply::Started {
            run: 3,
            kind: RunKind::Backup
        })
    );
}
