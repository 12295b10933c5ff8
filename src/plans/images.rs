//! The container images in use, backed up and restored as the store's own files
//! (`files::containers` says why): `select-images` chooses them before the backup walks, so
//! that the space check and the copy see their directories like any tree;
//! `restore-image-metadata` puts the store's metadata back once the restore has put their
//! files back, with CRI-O stopped and wiped.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use async_trait::async_trait;

use super::blocking;
use super::context::PlanContext;
use super::restore::trusted_manifest;
use super::vars::IMAGES;
use crate::engine::{Integration, Json, Outcome, PreviewContext, Step, StepContext};
use crate::files::containers::{self, ImagesSection, Store};

const CLUSTER: &[Integration] = &[Integration::Cluster];

/// Choose the images that containers use (`crictl ps -a`: running or defined), from the
/// containers-storage; the pre-pulled images of an upgrade payload are not among them.
pub(crate) struct SelectImages(pub Arc<PlanContext>);

#[async_trait]
impl Step for SelectImages {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "select-images"
    }
    fn stage(&self) -> &'static str {
        "preflight"
    }
    fn describe(&self) -> String {
        format!(
            "choose the container images in use (crictl ps -a) from {}",
            self.0.config.host.container_storage.display()
        )
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        if !self.0.config.backup.images {
            return Ok(Outcome::Skipped("[backup] images = false".into()));
        }
        let storage = &self.0.config.host.container_storage;
        if let Some(t) = self
            .0
            .config
            .backup
            .paths
            .iter()
            .find(|t| storage.starts_with(t) || t.starts_with(storage))
        {
            anyhow::bail!(
                "[backup] images: the image store {} overlaps the backed-up tree {}; take \
                 {} out of [backup] paths (the images in use are backed up by themselves)",
                storage.display(),
                t.display(),
                t.display()
            );
        }
        let started = Instant::now();
        let p = self.0.clone();
        let Some(store) =
            blocking(move || Store::open(&p.config.root, &p.config.host.container_storage)).await?
        else {
            return Ok(Outcome::Skipped(format!(
                "no containers-storage at {}",
                self.0.config.host.container_storage.display()
            )));
        };
        let containers = self.0.host.cluster.all_containers().await?;
        let mut ids = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        for c in &containers {
            let named = c.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
            match [c.image_ref.as_str(), named]
                .into_iter()
                .filter(|r| !r.is_empty())
                .find_map(|r| store.resolve(r))
            {
                Some(id) => {
                    ids.insert(id.to_string());
                }
                None => {
                    unknown.insert(if c.image_ref.is_empty() {
                        named
                    } else {
                        &c.image_ref
                    });
                }
            }
        }
        if ids.is_empty() {
            return Ok(Outcome::Skipped(format!(
                "no container uses an image of the store ({} containers, {} images)",
                containers.len(),
                store.image_count()
            )));
        }
        let ids: Vec<String> = ids.into_iter().collect();
        let mut section = store.section(&ids)?;
        containers::add_overlay_links(&self.0.config.root, &mut section)?;
        cx.set(&IMAGES, &Json(section.clone()))?;
        let mut detail = format!(
            "{} of {} images in use ({} layers): {}",
            section.images.len(),
            store.image_count(),
            section.layers_json.len(),
            names(&section)
        );
        if !unknown.is_empty() {
            let list: Vec<&str> = unknown.into_iter().collect();
            detail.push_str(&format!(
                "; not in the store, so not backed up: {}",
                list.join(", ")
            ));
        }
        detail.push_str(&format!(" (in {:.1}s)", started.elapsed().as_secs_f64()));
        Ok(Outcome::Done(detail))
    }
}

/// The images as `name@digest, …`.
pub(crate) fn names(section: &ImagesSection) -> String {
    image_names(section).join(", ")
}

/// Each image as `name@digest` (its first name, else its id).
pub(crate) fn image_names(section: &ImagesSection) -> Vec<String> {
    section
        .images
        .iter()
        .map(|i| {
            let name = i
                .names
                .iter()
                .find(|n| !n.contains('@'))
                .or(i.names.first())
                .map(String::as_str)
                .unwrap_or(&i.id[..12.min(i.id.len())]);
            match &i.digest {
                Some(d) if !name.contains('@') => format!("{name}@{d}"),
                _ => name.to_string(),
            }
        })
        .collect()
}

/// Put the backed-up images back into the store's metadata documents.
pub(crate) struct RestoreImageMetadata(pub Arc<PlanContext>);

#[async_trait]
impl Step for RestoreImageMetadata {
    fn needs(&self) -> &'static [Integration] {
        CLUSTER
    }
    fn name(&self) -> &'static str {
        "restore-image-metadata"
    }
    fn stage(&self) -> &'static str {
        "restore-files"
    }
    fn describe(&self) -> String {
        "enter the backed-up container images into the store's metadata (their files are back)"
            .into()
    }
    async fn preview(&self, pc: &PreviewContext) -> Result<String> {
        let p = self.0.clone();
        let wanted = pc.options.generation.clone();
        let journal = pc.journal.clone();
        let desc = self.describe();
        blocking(move || {
            let Some(g) = p.preview_generation(wanted.as_deref())? else {
                return Ok(format!("{desc} (no generation yet)"));
            };
            let m = trusted_manifest(&g, journal.as_deref())?;
            Ok(match &m.header.images {
                None => format!("{desc}: generation {} holds no images", g.info.id),
                Some(s) => {
                    let (files, bytes) = super::backup::image_share(&m, s);
                    format!(
                        "{desc}: {} images from generation {} ({files} files, {}): {}",
                        s.images.len(),
                        g.info.id,
                        crate::text::human_bytes(bytes),
                        names(s)
                    )
                }
            })
        })
        .await
    }
    async fn run(&self, cx: &StepContext) -> Result<Outcome> {
        let g = self.0.generation_for(cx)?;
        let p = self.0.clone();
        let journal = cx.journal.clone();
        blocking(move || {
            let started = Instant::now();
            let m = trusted_manifest(&g, Some(&journal))?;
            let Some(section) = &m.header.images else {
                return Ok(Outcome::Skipped(format!(
                    "generation {} holds no images",
                    g.info.id
                )));
            };
            let (images, layers) = containers::merge_metadata(&p.config.root, section)
                .with_context(|| format!("the image store {}", section.storage))?;
            Ok(Outcome::Done(format!(
                "{} images ({images} new) and {} layers ({layers} new) entered into {}: {} (in {:.1}s)",
                section.images.len(),
                section.layers_json.len(),
                section.storage,
                names(section),
                started.elapsed().as_secs_f64()
            )))
        })
        .await
    }
}
