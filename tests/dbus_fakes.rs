//! Checks of the fake D-Bus services themselves (`tests/support/fake_*.rs`) on a private bus.

mod common;
use common::bus;

use std::collections::HashMap;
use std::time::Duration;

use bus::{TestBus, start_fake};
use futures_util::StreamExt;
use zbus::message::Type as MessageType;
use zbus::{Connection, MatchRule, MessageStream, OwnedObjectPath, OwnedVariant};

const SYSTEMD: &str = "org.freedesktop.systemd1";
const SYSTEMD_PATH: &str = "/org/freedesktop/systemd1";
const MANAGER: &str = "org.freedesktop.systemd1.Manager";
const RPMOSTREE: &str = "org.projectatomic.rpmostree1";
const SYSROOT_PATH: &str = "/org/projectatomic/rpmostree1/Sysroot";
const SYSROOT: &str = "org.projectatomic.rpmostree1.Sysroot";
const OS: &str = "org.projectatomic.rpmostree1.OS";
const TXN: &str = "org.projectatomic.rpmostree1.Transaction";
const CODE26: &str = "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code26";
const WAIT: Duration = Duration::from_secs(10);

type Dict = HashMap<String, OwnedVariant>;

async fn connect(bus: &TestBus) -> Connection {
    zbus::connection::Builder::address(bus.address.as_str())
        .build()
        .await
        .unwrap()
}

/// `org.freedesktop.DBus.Properties.Get`, decoded as `T`.
async fn get<T>(conn: &Connection, dest: &str, path: &str, iface: &str, prop: &str) -> T
where
    T: TryFrom<OwnedVariant>,
    T::Error: std::fmt::Debug,
{
    let reply = conn
        .call_method(
            Some(dest),
            path,
            Some("org.freedesktop.DBus.Properties"),
            "Get",
            &(iface, prop),
        )
        .await
        .unwrap();
    let v: OwnedVariant = reply.body().deserialize().unwrap();
    T::try_from(v).unwrap()
}

/// The D-Bus error name of a failed call.
fn error_name(e: &zbus::Error) -> String {
    match e {
        zbus::Error::MethodError(name, _, _) => name.to_string(),
        other => panic!("not a method error: {other:?}"),
    }
}

#[tokio::test]
async fn systemd_fake_stops_a_unit_and_emits_job_removed() {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-systemd", &[]);
    let conn = connect(&bus).await;
    conn.call_method(Some(SYSTEMD), SYSTEMD_PATH, Some(MANAGER), "Subscribe", &())
        .await
        .unwrap();
    let again = conn
        .call_method(Some(SYSTEMD), SYSTEMD_PATH, Some(MANAGER), "Subscribe", &())
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&again),
        "org.freedesktop.systemd1.AlreadySubscribed"
    );
    // The signal stream exists before the call (JobRemoved may precede the reply).
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .sender(SYSTEMD)
        .interface(MANAGER)
        .member("JobRemoved")
        .build()
        .unwrap();
    let mut removed = MessageStream::for_match_rule(rule, &conn, None)
        .await
        .unwrap();

    let reply = conn
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(MANAGER),
            "StopUnit",
            &("kubelet.service", "replace"),
        )
        .await
        .unwrap();
    let job: OwnedObjectPath = reply.body().deserialize().unwrap();
    let result = tokio::time::timeout(WAIT, async {
        while let Some(msg) = removed.next().await {
            let (_id, path, unit, result): (u32, OwnedObjectPath, String, String) =
                msg.unwrap().body().deserialize().unwrap();
            if path == job {
                assert_eq!(unit, "kubelet.service");
                return result;
            }
        }
        panic!("signal stream ended")
    })
    .await
    .expect("JobRemoved within 10 s");
    assert_eq!(result, "done");
    let unit = "/org/freedesktop/systemd1/unit/kubelet_2eservice";
    let active: String = get(
        &conn,
        SYSTEMD,
        unit,
        "org.freedesktop.systemd1.Unit",
        "ActiveState",
    )
    .await;
    assert_eq!(active, "inactive");

    let missing = conn
        .call_method(
            Some(SYSTEMD),
            SYSTEMD_PATH,
            Some(MANAGER),
            "GetUnit",
            &("nope.service"),
        )
        .await
        .unwrap_err();
    assert_eq!(error_name(&missing), "org.freedesktop.systemd1.NoSuchUnit");

    let stops = fake.calls_named("StopUnit");
    assert_eq!(stops.len(), 1);
    assert_eq!(
        stops[0]["args"],
        serde_json::json!(["kubelet.service", "replace"])
    );
    assert_eq!(stops[0]["sender_uid"], common::bus::test_uid());
    assert_eq!(
        fake.read_state()["units"]["kubelet.service"]["active"],
        "inactive"
    );
}

#[tokio::test]
async fn rpm_ostree_fake_reports_deployments() {
    let bus = TestBus::start(&[]);
    let _fake = start_fake(&bus, "fake-rpm-ostreed", &[]);
    let conn = connect(&bus).await;

    let booted: OwnedObjectPath = get(&conn, RPMOSTREE, SYSROOT_PATH, SYSROOT, "Booted").await;
    assert_eq!(booted.as_str(), "/org/projectatomic/rpmostree1/testos");
    let deployments: Vec<Dict> = get(&conn, RPMOSTREE, SYSROOT_PATH, SYSROOT, "Deployments").await;
    assert_eq!(deployments.len(), 2);
    for d in &deployments {
        let checksum = String::try_from(d["checksum"].try_clone().unwrap()).unwrap();
        let id = String::try_from(d["id"].try_clone().unwrap()).unwrap();
        assert_eq!(id, format!("testos-{checksum}.0"));
        assert_eq!(i32::try_from(d["serial"].try_clone().unwrap()).unwrap(), 0);
        u64::try_from(d["timestamp"].try_clone().unwrap()).unwrap();
        for key in ["booted", "staged", "pinned"] {
            bool::try_from(d[key].try_clone().unwrap()).unwrap();
        }
        for key in ["osname", "version", "origin", "unlocked"] {
            String::try_from(d[key].try_clone().unwrap()).unwrap();
        }
    }
    assert!(bool::try_from(deployments[0]["booted"].try_clone().unwrap()).unwrap());
    let rollback: Dict = get(&conn, RPMOSTREE, booted.as_str(), OS, "RollbackDeployment").await;
    assert_eq!(rollback["id"], deployments[1]["id"]);

    let unknown = conn
        .call_method(
            Some(RPMOSTREE),
            SYSROOT_PATH,
            Some(SYSROOT),
            "GetOS",
            &("nope"),
        )
        .await
        .unwrap_err();
    assert_eq!(
        error_name(&unknown),
        "org.gtk.GDBus.UnmappedGError.Quark._g_2dio_2derror_2dquark.Code1"
    );
}

#[tokio::test]
async fn rollback_transaction_finishes_and_reorders_deployments() {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-rpm-ostreed", &[]);
    let conn = connect(&bus).await;
    let before: Vec<Dict> = get(&conn, RPMOSTREE, SYSROOT_PATH, SYSROOT, "Deployments").await;

    let mut options: HashMap<&str, OwnedVariant> = HashMap::new();
    options.insert("id", OwnedVariant::from(zbus::Str::from("test")));
    conn.call_method(
        Some(RPMOSTREE),
        SYSROOT_PATH,
        Some(SYSROOT),
        "RegisterClient",
        &(options,),
    )
    .await
    .unwrap();
    let os = "/org/projectatomic/rpmostree1/testos";
    let mut options: HashMap<&str, OwnedVariant> = HashMap::new();
    options.insert("reboot", OwnedVariant::from(false));
    let reply = conn
        .call_method(Some(RPMOSTREE), os, Some(OS), "Rollback", &(options,))
        .await
        .unwrap();
    let address: String = reply.body().deserialize().unwrap();
    assert!(address.starts_with("unix:path="), "{address}");
    let active: (String, String, String) =
        get(&conn, RPMOSTREE, SYSROOT_PATH, SYSROOT, "ActiveTransaction").await;
    assert_eq!(active.0, "Rollback");
    assert_eq!(active.1, conn.unique_name().unwrap().as_str());

    // The transaction, on its own peer-to-peer connection; signals subscribed before Start.
    let p2p = zbus::connection::Builder::address(address.as_str())
        .p2p()
        .build()
        .await
        .unwrap();
    let rule = MatchRule::builder()
        .msg_type(MessageType::Signal)
        .interface(TXN)
        .path("/")
        .build()
        .unwrap();
    let mut signals = MessageStream::for_match_rule(rule, &p2p, None)
        .await
        .unwrap();
    let started = p2p
        .call_method(None::<&str>, "/", Some(TXN), "Start", &())
        .await
        .unwrap();
    assert!(started.body().deserialize::<bool>().unwrap());
    let (messages, finished) = tokio::time::timeout(WAIT, async {
        let mut messages = Vec::new();
        while let Some(msg) = signals.next().await {
            let msg = msg.unwrap();
            let header = msg.header();
            match header.member().unwrap().as_str() {
                "Message" => messages.push(msg.body().deserialize::<String>().unwrap()),
                "Finished" => {
                    return (
                        messages,
                        msg.body().deserialize::<(bool, String)>().unwrap(),
                    );
                }
                _ => {}
            }
        }
        panic!("signal stream ended")
    })
    .await
    .expect("Finished within 10 s");
    assert_eq!(finished, (true, String::new()));
    let moved = String::try_from(before[1]["checksum"].try_clone().unwrap()).unwrap();
    assert_eq!(
        messages,
        vec![format!("Moving '{moved}.0' to be first deployment")]
    );
    drop(signals);
    drop(p2p);

    conn.call_method(Some(RPMOSTREE), SYSROOT_PATH, Some(SYSROOT), "Reload", &())
        .await
        .unwrap();
    let after: Vec<Dict> = get(&conn, RPMOSTREE, SYSROOT_PATH, SYSROOT, "Deployments").await;
    assert_eq!(after[0]["id"], before[1]["id"]);
    assert_eq!(after[1]["id"], before[0]["id"]);
    let rollback: Dict = get(&conn, RPMOSTREE, os, OS, "RollbackDeployment").await;
    assert!(
        rollback.is_empty(),
        "the old default is now pending, not rollback"
    );
    assert_eq!(
        fake.read_state()["deployments"][0]["checksum"],
        moved.as_str()
    );

    // The transaction closes once finished and its peer has gone.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let path: String = get(
            &conn,
            RPMOSTREE,
            SYSROOT_PATH,
            SYSROOT,
            "ActiveTransactionPath",
        )
        .await;
        if path.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "txn still active");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(fake.calls_named("Start").len(), 1);
}

#[tokio::test]
async fn busy_fault_gives_the_code26_error() {
    let bus = TestBus::start(&[]);
    let fake = start_fake(&bus, "fake-rpm-ostreed", &[]);
    let mut state = fake.read_state();
    state["faults"]["busy"] = true.into();
    fake.write_state(&state);

    let conn = connect(&bus).await;
    let options: HashMap<&str, OwnedVariant> = HashMap::new();
    let err = conn
        .call_method(
            Some(RPMOSTREE),
            "/org/projectatomic/rpmostree1/testos",
            Some(OS),
            "Rollback",
            &(options,),
        )
        .await
        .unwrap_err();
    assert_eq!(error_name(&err), CODE26);
    let zbus::Error::MethodError(_, Some(text), _) = &err else {
        panic!("{err:?}")
    };
    assert!(
        text.starts_with("Transaction in progress: rollback\n"),
        "{text}"
    );
}
