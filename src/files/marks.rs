//! What an operator says about a generation: protected (retention and `delete` leave it), and
//! a label. Kept in the generation's own directory (`marks.json`), beside `generation.json`,
//! so that it travels with the generation and holds even if the journal is lost; written
//! atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! A `marks.json` that cannot be read counts as *protected*: losing a mark must never make a
//! generation removable.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub(crate) const MARKS_FILE: &str = "marks.json";
/// Where a new `marks.json` is written before it replaces the old one (a crash can leave it).
pub(crate) const MARKS_TMP: &str = ".marks.json.tmp";
/// The longest label, in characters.
pub(crate) const MAX_LABEL: usize = 200;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Marks {
    #[serde(default)]
    pub protected: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
}

impl Marks {
    /// The marks of the generation in `dir` (none: the defaults).
    pub(crate) fn read(dir: &Path) -> Marks {
        let path = dir.join(MARKS_FILE);
        let read = match std::fs::read(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Marks::default(),
            Err(e) => Err(e.to_string()),
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| e.to_string()),
        };
        let mut marks = read.unwrap_or_else(|e| {
            tracing::warn!(
                "{} is unreadable ({e}); the generation counts as protected",
                path.display()
            );
            Marks {
                protected: true,
                label: None,
            }
        });
        // A label read from disk is printed to terminals: held to the rule it was written by.
        if let Some(l) = &marks.label
            && check_label(l).ok().flatten().as_deref() != Some(l.as_str())
        {
            tracing::warn!(
                "{}: the label is not one line of printable text; ignored",
                path.display()
            );
            marks.label = None;
        }
        marks
    }

    /// Write the marks of the generation in `dir`, replacing the old ones atomically.
    pub(crate) fn write(&self, dir: &Path) -> Result<()> {
        use std::io::Write;
        let path = dir.join(MARKS_FILE);
        let tmp = dir.join(MARKS_TMP);
        let mut f =
            std::fs::File::create(&tmp).with_context(|| format!("writing {}", tmp.display()))?;
        serde_json::to_writer_pretty(&mut f, self)?;
        f.write_all(b"\n")?;
        f.sync_all()
            .with_context(|| format!("flushing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
        super::store::sync_dir(dir)
    }
}

/// A label as given by an operator: one line of printable text, at most [`MAX_LABEL`]
/// characters (empty removes the label).
pub(crate) fn check_label(text: &str) -> Result<Option<String>> {
    let t = text.trim();
    anyhow::ensure!(
        t.chars().count() <= MAX_LABEL,
        "a label has at most {MAX_LABEL} characters"
    );
    anyhow::ensure!(
        !t.chars().any(char::is_control),
        "a label is one line of printable text"
    );
    Ok((!t.is_empty()).then(|| t.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_round_trip_and_a_damaged_file_protects() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(Marks::read(d.path()), Marks::default());
        let m = Marks {
            protected: true,
            label: Some("before 4.16 upgrade".into()),
        };
        m.write(d.path()).unwrap();
        assert_eq!(Marks::read(d.path()), m);
        std::fs::write(d.path().join(MARKS_FILE), "{not json").unwrap();
        assert!(Marks::read(d.path()).protected);
        std::fs::write(d.path().join(MARKS_FILE), r#"{"protected":false,"x":1}"#).unwrap();
        assert!(
            Marks::read(d.path()).protected,
            "unknown keys are not guessed at"
        );
        std::fs::write(d.path().join(MARKS_FILE), r#"{"label":"a\u001b[2Jb"}"#).unwrap();
        assert_eq!(
            Marks::read(d.path()).label,
            None,
            "a control character from disk is not printed"
        );
    }

    #[test]
    fn labels_are_one_printable_line() {
        assert_eq!(check_label("  ok  ").unwrap().as_deref(), Some("ok"));
        assert_eq!(check_label("").unwrap(), None);
        assert!(check_label("a\nb").is_err());
        assert!(check_label(&"x".repeat(MAX_LABEL + 1)).is_err());
    }
}
