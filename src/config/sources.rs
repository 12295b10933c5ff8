//! Where configuration files are found, and how one file is read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::{ConfigError, Fragment};

/// Which files make up the configuration.
#[derive(Debug, Clone)]
pub enum ConfigSource {
    /// The standard locations beneath a prefix (`/` on a node).
    Standard { prefix: PathBuf },
    /// Exactly this file (`--config FILE`).
    File(PathBuf),
}

impl Default for ConfigSource {
    fn default() -> Self {
        ConfigSource::Standard {
            prefix: PathBuf::from("/"),
        }
    }
}

/// The files to read, in the order they apply.
pub fn config_files(source: &ConfigSource) -> Result<Vec<PathBuf>, ConfigError> {
    match source {
        // Reading it reports what is wrong (missing, a directory, no permission).
        ConfigSource::File(f) => Ok(vec![f.clone()]),
        ConfigSource::Standard { prefix } => {
            let vendor = prefix.join("usr/lib/recoveryd/config.d");
            let admin_dir = prefix.join("etc/recoveryd/config.d");
            let main = prefix.join("etc/recoveryd/config.toml");
            let admin_dropins = dropins(&admin_dir)?;
            let mut files = Vec::new();
            // Vendor drop-ins, unless an admin drop-in of the same name replaces them.
            for (name, path) in dropins(&vendor)? {
                if !admin_dropins.contains_key(&name) {
                    files.push(path);
                }
            }
            if main.is_file() {
                files.push(main);
            }
            files.extend(admin_dropins.into_values());
            Ok(files)
        }
    }
}

fn dropins(dir: &Path) -> Result<BTreeMap<String, PathBuf>, ConfigError> {
    let mut out = BTreeMap::new();
    let rd = match std::fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(error) => {
            return Err(ConfigError::Read {
                file: dir.to_path_buf(),
                error,
            });
        }
    };
    for entry in rd {
        let entry = entry.map_err(|error| ConfigError::Read {
            file: dir.to_path_buf(),
            error,
        })?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".toml") && !name.starts_with('.') {
            out.insert(name, entry.path());
        }
    }
    Ok(out)
}

pub(super) fn read_fragment(file: &Path) -> Result<Fragment, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|error| ConfigError::Read {
        file: file.to_path_buf(),
        error,
    })?;
    parse_fragment(&text, file)
}

pub(super) fn parse_fragment(text: &str, file: &Path) -> Result<Fragment, ConfigError> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Syntax {
        file: file.to_path_buf(),
        message: one_line(&e.to_string()),
    })?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let parent = e.path().to_string();
        let inner = e.into_inner();
        let message = inner.message().to_string();
        if let Some(rest) = message.strip_prefix("unknown field `") {
            // serde_path_to_error's path already ends in the unknown key.
            let field = rest.split('`').next().unwrap_or(rest);
            let key = if parent == "." || parent.is_empty() {
                field.to_string()
            } else {
                parent
            };
            ConfigError::UnknownKey {
                file: file.to_path_buf(),
                key,
            }
        } else {
            ConfigError::BadValue {
                file: file.to_path_buf(),
                key: parent,
                message: one_line(&message),
            }
        }
    })
}

fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}
