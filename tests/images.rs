//! Container images through backup and recovery, with real podman on a real containers-storage
//! under the test node: only the images containers use are kept, by their digests, deduplicated
//! across generations and verified; after a wipe they come back with no registry.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::podman::Podman;
use common::world::World;

/// A node whose containers-storage holds three images: `app` and `sidecar` (built on `app`,
/// so they share its layer) used by containers, and `unused`, pulled but used by none.
struct Images {
    w: World,
    podman: Podman,
    /// (name, digest, id) of app, sidecar, unused.
    built: Vec<(String, String, String)>,
}

fn storage(w: &World) -> PathBuf {
    w.root().join("var/lib/containers/storage")
}

/// An image of one layer from a tarball: busybox (static, from the machine: the image has a
/// shell, so that a derived image can RUN), `hello.txt` and `gone.txt`.
fn import(podman: &Podman, dir: &Path, name: &str, content: &str) {
    let src = dir.join(format!("src-{}", name.replace(['/', ':'], "-")));
    std::fs::create_dir_all(src.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", src.join("bin/busybox")).unwrap();
    let _ = std::os::unix::fs::symlink("busybox", src.join("bin/sh"));
    std::fs::write(src.join("hello.txt"), content).unwrap();
    std::fs::write(src.join("gone.txt"), "removed by a later layer\n").unwrap();
    let tar = src.with_extension("tar");
    common::sh(&format!("tar -C {} -cf {} .", src.display(), tar.display()));
    podman.ok(&["import", "--quiet", tar.to_str().unwrap(), name]);
}

fn inspect(podman: &Podman, name: &str) -> (String, String, String) {
    let out = podman.ok(&["image", "inspect", "--format", "{{.Digest}} {{.Id}}", name]);
    let (digest, id) = out.split_once(' ').unwrap();
    (name.to_string(), digest.to_string(), id.to_string())
}

impl Images {
    fn new(driver: &str) -> Images {
        let w = World::new("[backup]\nimages = true\n");
        let podman = Podman::with_store(w.node.dir.path(), &storage(&w), driver);
        let dir = w.node.dir.path().to_path_buf();
        import(&podman, &dir, "localhost/app:1", "app 1\n");
        let ctx = dir.join("sidecar");
        std::fs::create_dir_all(&ctx).unwrap();
        std::fs::write(ctx.join("side.txt"), "side 1\n").unwrap();
        // A layer that adds a file and removes one (a whiteout: a character device 0/0).
        std::fs::write(
            ctx.join("Containerfile"),
            "FROM localhost/app:1\nCOPY side.txt /side.txt\nRUN rm /gone.txt\n",
        )
        .unwrap();
        podman.ok(&[
            "build",
            "--quiet",
            "--pull=never",
            "--network=none",
            // One layer for the whole build, and no intermediate image left behind.
            "--layers=false",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            "-t",
            "localhost/sidecar:1",
            ctx.to_str().unwrap(),
        ]);
        import(&podman, &dir, "localhost/unused:1", "unused\n");
        let built: Vec<_> = [
            "localhost/app:1",
            "localhost/sidecar:1",
            "localhost/unused:1",
        ]
        .iter()
        .map(|n| inspect(&podman, n))
        .collect();
        // Two containers in the store, their images named by digest, and what CRI-O lists of
        // them.
        let containers: Vec<serde_json::Value> = built[..2]
            .iter()
            .enumerate()
            .map(|(i, (name, digest, _))| {
                let repo = name.rsplit_once(':').unwrap().0;
                let id = podman.ok(&[
                    "create",
                    "--quiet",
                    "--name",
                    &format!("c{i}"),
                    &format!("{repo}@{digest}"),
                    "/bin/sh",
                ]);
                serde_json::json!({
                    "id": id, "podSandboxId": format!("p{i}"),
                    "metadata": {"name": format!("c{i}"), "attempt": 0},
                    "image": {"image": format!("{repo}@{digest}")},
                    "imageRef": format!("{repo}@{digest}"),
                    "state": if i == 0 { "CONTAINER_RUNNING" } else { "CONTAINER_EXITED" },
                    "createdAt": "1", "labels": {}
                })
            })
            .collect();
        let fake = w.root().join("opt/fake-cluster");
        std::fs::write(
            fake.join("state/containers.json"),
            serde_json::json!({ "containers": containers }).to_string(),
        )
        .unwrap();
        // The fake `crio wipe -f` wipes this store (with podman) as the real one does: the
        // containers, and the images they used.
        std::fs::copy(&podman.conf, fake.join("storage.conf")).unwrap();
        Images { w, podman, built }
    }

    /// (name, digest) of every image in the store, as podman lists them.
    fn listed(&self) -> BTreeSet<(String, String)> {
        let out = self.podman.ok(&[
            "images",
            "--digests",
            "--format",
            "{{.Repository}}:{{.Tag}} {{.Digest}}",
        ]);
        out.lines()
            .map(|l| {
                let (n, d) = l.split_once(' ').unwrap();
                (n.to_string(), d.to_string())
            })
            .collect()
    }

    fn objects(&self) -> usize {
        walk_count(&self.w.root().join("var/recovery/objects"))
    }

    fn latest_manifest_header(&self) -> serde_json::Value {
        let gens = self.w.root().join("var/recovery/generations");
        let mut ids: Vec<_> = std::fs::read_dir(&gens)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.join("manifest").exists())
            .collect();
        ids.sort();
        let text = std::fs::read_to_string(ids.last().unwrap().join("manifest")).unwrap();
        serde_json::from_str(text.lines().next().unwrap()).unwrap()
    }
}

fn walk_count(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            if e.file_name() != "tmp" {
                n += walk_count(&e.path());
            }
        } else {
            n += 1;
        }
    }
    n
}

fn step_detail(w: &World, run: u32, step: &str) -> String {
    let (_, out, _) = w.ctl(&["journal", "--run", &run.to_string(), "--json"]);
    let j: serde_json::Value = serde_json::from_str(&out).unwrap();
    j["steps"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|s| s["name"] == step)
        .map(|s| s["detail"].as_str().unwrap_or("").to_string())
        .unwrap_or_else(|| panic!("no step {step} in run {run}: {j}"))
}

#[test]
#[ignore = "needs root: rootful podman on the node's containers-storage (tests/run.sh runs it)"]
fn images_in_use_come_back_with_their_digests_after_a_wipe_overlay() {
    images_in_use_come_back_with_their_digests_after_a_wipe_and_nothing_else_is_kept("overlay");
}

#[test]
#[ignore = "needs root: rootful podman on the node's containers-storage (tests/run.sh runs it)"]
fn images_in_use_come_back_with_their_digests_after_a_wipe_vfs() {
    images_in_use_come_back_with_their_digests_after_a_wipe_and_nothing_else_is_kept("vfs");
}

fn images_in_use_come_back_with_their_digests_after_a_wipe_and_nothing_else_is_kept(driver: &str) {
    let mut t = Images::new(driver);
    let at_backup = t.listed();
    assert_eq!(at_backup.len(), 3, "{at_backup:?}");

    // First backup: the two images in use, not the third.
    let (code, out, err) = t.w.ctl(&["backup"]);
    assert_eq!(code, 0, "{out}{err}");
    let selected = step_detail(&t.w, 1, "select-images");
    assert!(
        selected.starts_with("2 of 3 images in use (2 layers)"),
        "{selected}"
    );
    let header = t.latest_manifest_header();
    let images = &header["images"]["images"];
    let listed: BTreeSet<(String, String)> = images
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            (
                i["names"][0].as_str().unwrap().to_string(),
                i["digest"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let in_use: BTreeSet<(String, String)> = t.built[..2]
        .iter()
        .map(|(n, d, _)| (n.clone(), d.clone()))
        .collect();
    assert_eq!(
        listed, in_use,
        "the manifest lists the images in use with their digests"
    );
    let unused_id = &t.built[2].2;
    assert!(
        !header.to_string().contains(unused_id.as_str()),
        "the unused image is not in the backup"
    );
    let copied = step_detail(&t.w, 1, "copy-files");
    assert!(copied.contains("of which 2 images:"), "{copied}");
    eprintln!("select-images: {selected}\ncopy-files: {copied}");
    // generations (and status, which lists them) say how much of the backup is images.
    let (_, out, _) = t.w.ctl(&["generations", "--json"]);
    let summary = &common::json_list(&out, "generations")[0]["info"]["images"];
    assert_eq!(summary["images"].as_array().unwrap().len(), 2, "{summary}");
    assert!(summary["bytes"].as_u64().unwrap() > 0, "{summary}");
    assert_eq!(summary["layers"], 2);
    let (_, human, _) = t.w.ctl(&["generations"]);
    assert!(human.contains("2 images ("), "{human}");

    // A second backup of the same images writes no object at all.
    let objects = t.objects();
    let reference = t.w.backup_then_break();
    assert_eq!(t.objects(), objects, "the second backup stored new objects");
    let copied = step_detail(&t.w, 2, "copy-files");
    assert!(copied.contains("0 files stored"), "{copied}");
    // The upgrade pulled an image of its own.
    import(
        &t.podman,
        t.w.node.dir.path(),
        "localhost/payload:2",
        "payload 2\n",
    );

    // The dry run names the images it will restore.
    let (code, out, err) = t.w.ctl(&["recover", "--dry-run"]);
    assert_eq!(code, 0, "{out}{err}");
    for (name, digest, _) in &t.built[..2] {
        assert!(out.contains(&format!("{name}@{digest}")), "{name}: {out}");
    }

    // The recovery, reboots included; the fake `crio wipe -f` removes the containers and the
    // two images they used (restore-image-metadata finds them "new" below).
    let (code, out, err) = t.w.ctl(&["recover"]);
    assert_eq!(code, 0, "{out}{err}");
    t.w.reboot("boot-2");
    let (code, out, err) = t.w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    t.w.reboot("boot-3");
    let (code, out, err) = t.w.ctl(&["resume", "--boot"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("recovery run 3 succeeded"), "{err}");
    assert_eq!(
        t.w.differences(&reference),
        "",
        "the trees equal the backup"
    );
    let restored = step_detail(&t.w, 3, "restore-image-metadata");
    assert!(
        restored.starts_with("2 images (2 new) and 2 layers (2 new)"),
        "{restored}"
    );
    eprintln!(
        "restore-other-trees: {}\nrestore-image-metadata: {restored}",
        step_detail(&t.w, 3, "restore-other-trees")
    );

    // The images in use are back with the same names and digests, beside the ones the wipe
    // left (no container used them: the unused one and the upgrade's payload).
    let (payload, payload_digest, _) = inspect(&t.podman, "localhost/payload:2");
    let mut expected = at_backup.clone();
    expected.insert((payload, payload_digest));
    assert_eq!(t.listed(), expected, "after the recovery");
    for (name, digest, _) in &t.built[..2] {
        let repo = name.rsplit_once(':').unwrap().0;
        let by_digest = format!("{repo}@{digest}");
        let c = t.podman.ok(&["create", "--quiet", &by_digest, "/x"]);
        let out = t.w.node.dir.path().join("hello.txt");
        t.podman
            .ok(&["cp", &format!("{c}:/hello.txt"), out.to_str().unwrap()]);
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "app 1\n", "{name}");
        // The sidecar's layer removed gone.txt: its whiteout came back too.
        let gone = t.w.node.dir.path().join("gone.txt");
        let _ = std::fs::remove_file(&gone);
        let (code, _, _) = common::run(t.podman.cmd().args([
            "cp",
            &format!("{c}:/gone.txt"),
            gone.to_str().unwrap(),
        ]));
        assert_eq!(code == 0, name.contains("app"), "{name}: /gone.txt");
        t.podman.ok(&["rm", &c]);
    }
    if driver == "overlay" {
        let whiteouts = common::sh_out(&format!(
            "find {}/overlay -path '*/diff/gone.txt' -type c | wc -l",
            storage(&t.w).display()
        ));
        assert_eq!(
            whiteouts.trim(),
            "1",
            "the whiteout is a character device again"
        );
    }
}

#[test]
#[ignore = "needs root: rootful podman on the node's containers-storage (tests/run.sh runs it)"]
fn a_damaged_image_layer_is_caught_by_verify_and_the_recovery_refuses_naming_it() {
    let t = Images::new("vfs");
    let (code, out, err) = t.w.ctl(&["backup"]);
    assert_eq!(code, 0, "{out}{err}");
    // The object of the app layer's file.
    let app_layer = t.latest_manifest_header()["images"]["images"][0]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .to_string();
    let gens = t.w.root().join("var/recovery/generations");
    let g = std::fs::read_dir(&gens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.join("manifest").exists())
        .unwrap();
    let manifest = std::fs::read_to_string(g.join("manifest")).unwrap();
    let suffix = format!("vfs/dir/{app_layer}/hello.txt");
    let entry: serde_json::Value = manifest
        .lines()
        .skip(1)
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|e| e["path"].as_str().is_some_and(|p| p.ends_with(&suffix)))
        .unwrap_or_else(|| panic!("no entry for {suffix}"));
    let hash = entry["hash"].as_str().unwrap();
    let object =
        t.w.root()
            .join("var/recovery/objects")
            .join(&hash[..2])
            .join(hash);
    let mut bytes = std::fs::read(&object).unwrap();
    bytes[0] ^= 0xff;
    let mut perm = std::fs::metadata(&object).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o600);
    std::fs::set_permissions(&object, perm).unwrap();
    std::fs::write(&object, &bytes).unwrap();

    let (code, out, err) = t.w.ctl(&["verify"]);
    assert_eq!(code, 6, "{out}{err}");
    assert!(format!("{out}{err}").contains(&suffix), "{out}{err}");
    // The recovery's first step verifies every byte: the run fails there, nothing changed.
    let (code, out, err) = t.w.ctl(&["recover"]);
    assert_eq!(code, 4, "{out}{err}");
    assert!(
        err.contains("cannot be trusted") && err.contains(&suffix),
        "{out}{err}"
    );
    assert!(t.w.rpm().calls_named("Rollback").is_empty());
    // Nothing changed: the images are still there.
    assert_eq!(t.listed().len(), 3);
}
