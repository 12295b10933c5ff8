//! The image part of a containers-storage (`/var/lib/containers/storage`, CRI-O's and podman's
//! store), as files: which directories and files hold the images a node's containers use, and
//! the store's two metadata documents cut down to those images.
//!
//! Why files and not `podman save`/`skopeo copy`: containers-storage keeps layers
//! uncompressed, so an image copied out of it gets new layer blobs and therefore a new manifest
//! digest (`skopeo copy --preserve-digests` refuses, `podman save` drops digests), while the
//! pods of an OpenShift payload name their images by digest. The store's own files are the
//! image exactly as CRI-O pulled it — manifest bytes, config, layer contents, tar-split — so
//! they are backed up through the data path like any tree (deduplicated, verified, restored
//! with ownership, xattrs, whiteouts and hardlinks), and the metadata documents are rewritten
//! at restore time with the backed-up entries (`docs/architecture.md`, "Container images").
//!
//! The layout read here (containers/storage, `images.go`, `layers.go`, drivers `overlay` and
//! `vfs`): `<driver>-images/images.json` is an array of images (`id`, `names`, `digest`,
//! `digests`, `layer` = the top layer), each with a directory `<driver>-images/<id>/` of its
//! big data (manifest, config); `<driver>-layers/layers.json` is an array of layers (`id`,
//! `parent`), each with `<driver>-layers/<id>.tar-split.gz`; a layer's content is
//! `overlay/<id>/` (with `diff/`, and `link`, whose short name `overlay/l/<link>` points at
//! `diff`) or `vfs/dir/<id>/`.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The storage drivers whose layout is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Driver {
    Overlay,
    Vfs,
}

impl Driver {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Vfs => "vfs",
        }
    }

    /// `<driver>-images/images.json`, relative to the store.
    pub(crate) fn images_json(self) -> String {
        format!("{}-images/images.json", self.name())
    }

    /// `<driver>-layers/layers.json`, relative to the store.
    pub(crate) fn layers_json(self) -> String {
        format!("{}-layers/layers.json", self.name())
    }

    fn layer_dir(self, id: &str) -> String {
        match self {
            Driver::Overlay => format!("overlay/{id}"),
            Driver::Vfs => format!("vfs/dir/{id}"),
        }
    }
}

/// One image as the manifest lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImageInfo {
    pub id: String,
    #[serde(default)]
    pub names: Vec<String>,
    /// The manifest digest the image was pulled by (`sha256:…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
    /// Its layers, top first.
    pub layers: Vec<String>,
}

/// The images of a generation: where they came from, which trees and files of the manifest
/// hold them, and the store's metadata for exactly them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImagesSection {
    /// The store, as a node path (`/var/lib/containers/storage`).
    pub storage: String,
    pub driver: Driver,
    pub images: Vec<ImageInfo>,
    /// Trees of the manifest that are image directories (node paths).
    pub trees: Vec<String>,
    /// Single files of the manifest's extras that belong to the images (tar-split, links).
    pub files: Vec<String>,
    /// `images.json`'s entries for these images, as the store wrote them.
    pub images_json: Vec<Value>,
    /// `layers.json`'s entries for their layers.
    pub layers_json: Vec<Value>,
}

/// How much of a generation is images: for `generations`, `status` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ImagesSummary {
    /// `name@digest` of each image.
    pub images: Vec<String>,
    pub layers: u64,
    /// The manifest's entries and bytes that are the images'.
    pub entries: u64,
    pub bytes: u64,
}

/// What a store holds.
pub(crate) struct Store {
    /// The store as a node path.
    pub storage: PathBuf,
    pub driver: Driver,
    images: Vec<Value>,
    layers: Vec<Value>,
}

fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
}

fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// Read a metadata document: an array of objects each with a valid `id`.
fn read_doc(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let doc: Vec<Value> = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a JSON array", path.display()))?;
    check_entries(&doc).with_context(|| format!("in {}", path.display()))?;
    Ok(doc)
}

/// Every entry an object with a 64-hex `id`, no id twice, and a `parent` or `layer` (if
/// any) an id too: what the restore writes into a store is held to this.
pub(crate) fn check_entries(doc: &[Value]) -> Result<()> {
    let mut seen = BTreeSet::new();
    for v in doc {
        let Some(id) = str_field(v, "id") else {
            bail!("an entry without an id: {v}");
        };
        if !is_id(id) {
            bail!("`{id}` is not an image or layer id");
        }
        if !seen.insert(id) {
            bail!("`{id}` appears twice");
        }
        for key in ["parent", "layer"] {
            if let Some(p) = str_field(v, key)
                && !is_id(p)
            {
                bail!("{id}: {key} `{p}` is not a layer id");
            }
        }
    }
    Ok(())
}

impl Store {
    /// The store at node path `storage` beneath `root`; `None` when there is none.
    pub(crate) fn open(root: &Path, storage: &Path) -> Result<Option<Store>> {
        let dir = crate::config::under_root(root, storage);
        let driver = [Driver::Overlay, Driver::Vfs]
            .into_iter()
            .find(|d| dir.join(d.images_json()).is_file());
        let Some(driver) = driver else {
            return Ok(None);
        };
        Ok(Some(Store {
            storage: storage.to_path_buf(),
            driver,
            images: read_doc(&dir.join(driver.images_json()))?,
            layers: read_doc(&dir.join(driver.layers_json()))?,
        }))
    }

    pub(crate) fn image_count(&self) -> usize {
        self.images.len()
    }

    /// The image a CRI `imageRef` (or image name) means: its id (with or without `sha256:`),
    /// a digest reference (`name@sha256:…`), or one of its names.
    pub(crate) fn resolve(&self, reference: &str) -> Option<&str> {
        let bare = reference.strip_prefix("sha256:").unwrap_or(reference);
        let digest = reference.rsplit_once('@').map(|(_, d)| d);
        self.images
            .iter()
            .find(|i| {
                str_field(i, "id") == Some(bare)
                    || digest.is_some_and(|d| {
                        str_field(i, "digest") == Some(d)
                            || strings(i, "digests").iter().any(|x| x == d)
                    })
                    || strings(i, "names").iter().any(|n| n == reference)
            })
            .and_then(|i| str_field(i, "id"))
    }

    /// A layer and its parents, top first; an error for a chain that is broken or loops.
    fn chain(&self, by_id: &HashMap<&str, &Value>, top: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        let mut next = Some(top.to_string());
        while let Some(id) = next {
            if out.contains(&id) {
                bail!("the layers of {top} form a loop at {id}");
            }
            let Some(layer) = by_id.get(id.as_str()) else {
                bail!("layer {id} is not in {}", self.driver.layers_json());
            };
            next = str_field(layer, "parent").map(str::to_string);
            out.push(id);
        }
        Ok(out)
    }

    /// The section for the images `ids` (duplicates ignored), and the node paths of the
    /// trees and single files that hold them.
    pub(crate) fn section(&self, ids: &[String]) -> Result<ImagesSection> {
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let base = self.storage.display().to_string();
        let at = |rel: &str| format!("{}/{rel}", base.trim_end_matches('/'));
        let mut images = Vec::new();
        let mut images_json = Vec::new();
        let mut layer_ids = BTreeSet::new();
        let layers_by_id: HashMap<&str, &Value> = self
            .layers
            .iter()
            .filter_map(|l| Some((str_field(l, "id")?, l)))
            .collect();
        for v in &self.images {
            let Some(id) = str_field(v, "id") else {
                continue;
            };
            if !wanted.contains(id) {
                continue;
            }
            let layers = match str_field(v, "layer") {
                Some(top) => self
                    .chain(&layers_by_id, top)
                    .with_context(|| format!("image {id}"))?,
                None => Vec::new(),
            };
            layer_ids.extend(layers.iter().cloned());
            images.push(ImageInfo {
                id: id.to_string(),
                names: strings(v, "names"),
                digest: str_field(v, "digest").map(str::to_string),
                layers,
            });
            images_json.push(v.clone());
        }
        let mut trees = Vec::new();
        let mut files = Vec::new();
        let layers_dir = format!("{}-layers", self.driver.name());
        let images_dir = format!("{}-images", self.driver.name());
        for i in &images {
            trees.push(at(&format!("{images_dir}/{}", i.id)));
        }
        let mut layers_json = Vec::new();
        for v in &self.layers {
            let Some(id) = str_field(v, "id") else {
                continue;
            };
            if !layer_ids.contains(id) {
                continue;
            }
            layers_json.push(v.clone());
            trees.push(at(&self.driver.layer_dir(id)));
            files.push(at(&format!("{layers_dir}/{id}.tar-split.gz")));
        }
        trees.sort();
        files.sort();
        Ok(ImagesSection {
            storage: base,
            driver: self.driver,
            images,
            trees,
            files,
            images_json,
            layers_json,
        })
    }
}

/// Overlay's short links (`overlay/l/<name>` → `../<id>/diff`) of the section's layers, read
/// from each layer's `link` file beneath `root`: added to the section's files.
pub(crate) fn add_overlay_links(root: &Path, section: &mut ImagesSection) -> Result<()> {
    if section.driver != Driver::Overlay {
        return Ok(());
    }
    let base = section.storage.trim_end_matches('/').to_string();
    for l in section
        .layers_json
        .iter()
        .filter_map(|l| str_field(l, "id"))
    {
        let link_file =
            crate::config::under_root(root, Path::new(&format!("{base}/overlay/{l}/link")));
        let name = match std::fs::read_to_string(&link_file) {
            Ok(n) => n.trim().to_string(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("reading {}", link_file.display())),
        };
        if name.is_empty() || name.contains('/') || name.starts_with('.') {
            bail!("{}: `{name}` is not a link name", link_file.display());
        }
        section.files.push(format!("{base}/overlay/l/{name}"));
    }
    section.files.sort();
    section.files.dedup();
    Ok(())
}

/// Put the section's metadata into the store's documents beneath `root`: each backed-up entry
/// replaces the live one of the same id or is added; live entries of other ids stay. Written
/// atomically (a temporary file, fsync, rename). Returns how many entries were added.
pub(crate) fn merge_metadata(root: &Path, section: &ImagesSection) -> Result<(usize, usize)> {
    check_entries(&section.images_json).context("the generation's images metadata")?;
    check_entries(&section.layers_json).context("the generation's layers metadata")?;
    let storage = crate::config::under_root(root, Path::new(&section.storage));
    let mut added = (0, 0);
    for (rel, entries, count) in [
        (
            section.driver.layers_json(),
            &section.layers_json,
            &mut added.1,
        ),
        (
            section.driver.images_json(),
            &section.images_json,
            &mut added.0,
        ),
    ] {
        let path = storage.join(&rel);
        let mut live = read_doc(&path)?;
        for e in entries {
            let id = str_field(e, "id");
            match live.iter_mut().find(|l| str_field(l, "id") == id) {
                Some(l) => *l = e.clone(),
                None => {
                    live.push(e.clone());
                    *count += 1;
                }
            }
        }
        let parent = path.parent().expect("a document has a directory");
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
        let tmp = parent.join(format!(
            ".{}.recoveryd-tmp",
            rel.rsplit('/').next().unwrap_or("doc")
        ));
        let bytes = serde_json::to_vec(&live)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)
                .with_context(|| format!("writing {}", tmp.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &path).with_context(|| format!("replacing {}", path.display()))?;
        super::store::sync_dir(parent)?;
    }
    Ok(added)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    fn store(dir: &Path) -> PathBuf {
        let s = dir.join("var/lib/containers/storage");
        std::fs::create_dir_all(s.join("overlay-images")).unwrap();
        std::fs::create_dir_all(s.join("overlay-layers")).unwrap();
        let images = serde_json::json!([
            {"id": id('a'), "names": ["quay.io/app:1"], "digest": "sha256:1111", "layer": id('2'), "extra": {"kept": true}},
            {"id": id('b'), "names": ["quay.io/unused:1"], "digest": "sha256:2222", "layer": id('3')},
        ]);
        let layers = serde_json::json!([
            {"id": id('1')},
            {"id": id('2'), "parent": id('1')},
            {"id": id('3'), "parent": id('1')},
        ]);
        std::fs::write(s.join("overlay-images/images.json"), images.to_string()).unwrap();
        std::fs::write(s.join("overlay-layers/layers.json"), layers.to_string()).unwrap();
        for l in ['1', '2', '3'] {
            std::fs::create_dir_all(s.join(format!("overlay/{}", id(l)))).unwrap();
            std::fs::write(s.join(format!("overlay/{}/link", id(l))), format!("L{l}\n")).unwrap();
        }
        s
    }

    #[test]
    fn the_section_holds_the_wanted_images_their_layer_chains_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        store(dir.path());
        let s = Store::open(dir.path(), Path::new("/var/lib/containers/storage"))
            .unwrap()
            .unwrap();
        assert_eq!(s.driver, Driver::Overlay);
        assert_eq!(
            s.resolve(&format!("sha256:{}", id('a'))),
            Some(id('a').as_str())
        );
        assert_eq!(s.resolve("quay.io/app@sha256:1111"), Some(id('a').as_str()));
        assert_eq!(s.resolve("quay.io/unused:1"), Some(id('b').as_str()));
        assert_eq!(s.resolve("quay.io/other@sha256:9999"), None);
        let mut sec = s.section(&[id('a'), id('a')]).unwrap();
        add_overlay_links(dir.path(), &mut sec).unwrap();
        assert_eq!(sec.images.len(), 1);
        assert_eq!(sec.images[0].layers, [id('2'), id('1')]);
        let base = "/var/lib/containers/storage";
        assert_eq!(
            sec.trees,
            [
                format!("{base}/overlay-images/{}", id('a')),
                format!("{base}/overlay/{}", id('1')),
                format!("{base}/overlay/{}", id('2')),
            ]
        );
        assert!(sec.files.contains(&format!("{base}/overlay/l/L1")));
        assert!(
            sec.files
                .contains(&format!("{base}/overlay-layers/{}.tar-split.gz", id('2')))
        );
        assert!(!sec.files.iter().any(|f| f.contains(&id('3'))));
        assert_eq!(sec.layers_json.len(), 2);
        // Unknown fields of the store's entries are kept as they were.
        assert_eq!(sec.images_json[0]["extra"]["kept"], true);
    }

    #[test]
    fn merging_adds_and_replaces_by_id_and_keeps_other_entries() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let st = Store::open(dir.path(), Path::new("/var/lib/containers/storage"))
            .unwrap()
            .unwrap();
        let sec = st.section(&[id('a')]).unwrap();
        // A wiped store: empty documents.
        std::fs::write(s.join("overlay-images/images.json"), "[]").unwrap();
        std::fs::write(s.join("overlay-layers/layers.json"), "[]").unwrap();
        assert_eq!(merge_metadata(dir.path(), &sec).unwrap(), (1, 2));
        // Again: nothing added, nothing twice.
        assert_eq!(merge_metadata(dir.path(), &sec).unwrap(), (0, 0));
        let back = Store::open(dir.path(), Path::new("/var/lib/containers/storage"))
            .unwrap()
            .unwrap();
        assert_eq!(back.image_count(), 1);
        assert_eq!(back.resolve("quay.io/app:1"), Some(id('a').as_str()));
    }

    #[test]
    fn damaged_metadata_is_refused() {
        for doc in [
            r#"[{"names": []}]"#,
            r#"[{"id": "../../etc"}]"#,
            &format!(r#"[{{"id": "{0}"}}, {{"id": "{0}"}}]"#, id('a')),
            &format!(r#"[{{"id": "{}", "parent": "x"}}]"#, id('a')),
        ] {
            let v: Vec<Value> = serde_json::from_str(doc).unwrap();
            assert!(check_entries(&v).is_err(), "{doc}");
        }
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        std::fs::write(s.join("overlay-layers/layers.json"), "{not json").unwrap();
        assert!(Store::open(dir.path(), Path::new("/var/lib/containers/storage")).is_err());
    }
}
