//! The errors the daemon answers with: one enum that is the Rust error, the D-Bus error
//! (`org.recoveryd.Recovery1.Error.<Name>`) and, serialized as `{"name", "message"}`, the
//! socket's and `--json`'s.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::engine::EngineError;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ApiError {
    /// Another run holds the lock or the daemon's slot, or a recovery is open.
    #[error("{0}")]
    Busy(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgs(String),
    /// A generation that cannot be trusted (a damaged or tampered manifest, a stored file
    /// that does not match it).
    #[error("{0}")]
    Corrupted(String),
    #[error("{0}")]
    AccessDenied(String),
    #[error("{0}")]
    Failed(String),
}

const PREFIX: &str = "org.recoveryd.Recovery1.Error.";

impl ApiError {
    /// The D-Bus error name.
    pub(crate) fn dbus_name(&self) -> String {
        self.static_name().to_string()
    }

    /// The D-Bus error name, as a static string.
    fn static_name(&self) -> &'static str {
        match self {
            ApiError::Busy(_) => "org.recoveryd.Recovery1.Error.Busy",
            ApiError::NotFound(_) => "org.recoveryd.Recovery1.Error.NotFound",
            ApiError::InvalidArgs(_) => "org.recoveryd.Recovery1.Error.InvalidArgs",
            ApiError::Corrupted(_) => "org.recoveryd.Recovery1.Error.Corrupted",
            ApiError::AccessDenied(_) => "org.recoveryd.Recovery1.Error.AccessDenied",
            ApiError::Failed(_) => "org.recoveryd.Recovery1.Error.Failed",
        }
    }

    pub(crate) fn short_name(&self) -> &'static str {
        match self {
            ApiError::Busy(_) => "Busy",
            ApiError::NotFound(_) => "NotFound",
            ApiError::InvalidArgs(_) => "InvalidArgs",
            ApiError::Corrupted(_) => "Corrupted",
            ApiError::AccessDenied(_) => "AccessDenied",
            ApiError::Failed(_) => "Failed",
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            ApiError::Busy(m)
            | ApiError::NotFound(m)
            | ApiError::InvalidArgs(m)
            | ApiError::Corrupted(m)
            | ApiError::AccessDenied(m)
            | ApiError::Failed(m) => m,
        }
    }

    /// From a D-Bus error name (full or short) and message; an unknown name is `Failed`.
    pub(crate) fn from_name(name: &str, message: String) -> ApiError {
        match name.strip_prefix(PREFIX).unwrap_or(name) {
            "Busy" => ApiError::Busy(message),
            "NotFound" => ApiError::NotFound(message),
            "InvalidArgs" => ApiError::InvalidArgs(message),
            "Corrupted" => ApiError::Corrupted(message),
            "AccessDenied" => ApiError::AccessDenied(message),
            _ => ApiError::Failed(message),
        }
    }

    /// What the daemon answers for an error of the engine or the layers below.
    pub(crate) fn from_anyhow(e: &anyhow::Error) -> ApiError {
        match e.downcast_ref::<EngineError>() {
            Some(EngineError::Busy(m)) => ApiError::Busy(m.clone()),
            Some(EngineError::RecoveryOpen { .. } | EngineError::BackupRefused { .. }) => {
                ApiError::Busy(e.to_string())
            }
            Some(EngineError::NotFound(_)) => ApiError::NotFound(e.to_string()),
            Some(EngineError::NotResumable { .. }) => ApiError::InvalidArgs(e.to_string()),
            None if crate::files::is_corruption(e) => ApiError::Corrupted(format!("{e:#}")),
            None => ApiError::Failed(format!("{e:#}")),
        }
    }
}

/// What zbus sends for an error of our interface: the name above, the message as the body.
/// (Written by hand rather than derived: the derive would also make `Display` print the name,
/// and a person reads the message.)
impl zbus::DBusError for ApiError {
    fn create_reply(&self, call: &zbus::message::Header<'_>) -> zbus::Result<zbus::Message> {
        zbus::Message::error(call, self.static_name()).build(&(self.message(),))
    }

    fn name(&self) -> zbus::names::ErrorName<'_> {
        zbus::names::ErrorName::from_static_str_unchecked(self.static_name())
    }

    fn description(&self) -> Option<&str> {
        Some(self.message())
    }
}

impl From<zbus::Error> for ApiError {
    fn from(e: zbus::Error) -> ApiError {
        ApiError::Failed(e.to_string())
    }
}

#[derive(Serialize, Deserialize)]
struct Wire {
    name: String,
    message: String,
}

impl Serialize for ApiError {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        Wire {
            name: self.dbus_name(),
            message: self.message().to_string(),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for ApiError {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ApiError, D::Error> {
        let w = Wire::deserialize(d)?;
        Ok(ApiError::from_name(&w.name, w.message))
    }
}
