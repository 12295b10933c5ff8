//! Run variables, typed: values steps pass on to later steps of the same run (kept in the
//! journal's `run_vars`, so they survive crashes and reboots). A [`Var`] names a key and the
//! type stored under it; the plans declare theirs in one place (`plans::vars`).

use std::marker::PhantomData;

use anyhow::{Context, Result};

/// How a value is kept as text in the journal.
pub trait VarValue: Sized {
    fn encode(&self) -> String;
    fn decode(s: &str) -> Result<Self>;
}

impl VarValue for String {
    fn encode(&self) -> String {
        self.clone()
    }
    fn decode(s: &str) -> Result<String> {
        Ok(s.to_string())
    }
}

impl VarValue for i64 {
    fn encode(&self) -> String {
        self.to_string()
    }
    fn decode(s: &str) -> Result<i64> {
        s.parse().with_context(|| format!("`{s}` is not a number"))
    }
}

/// A flag: set is `1`; cleared is the empty string (read as absent).
impl VarValue for bool {
    fn encode(&self) -> String {
        if *self { "1".into() } else { String::new() }
    }
    fn decode(s: &str) -> Result<bool> {
        Ok(s == "1")
    }
}

/// Any serde type, as JSON.
pub struct Json<T>(pub T);

impl<T: serde::Serialize + serde::de::DeserializeOwned> VarValue for Json<T> {
    fn encode(&self) -> String {
        serde_json::to_string(&self.0).expect("run variables serialize")
    }
    fn decode(s: &str) -> Result<Json<T>> {
        Ok(Json(
            serde_json::from_str(s).context("reading a run variable")?,
        ))
    }
}

/// A run variable's key and type.
pub struct Var<T> {
    key: std::borrow::Cow<'static, str>,
    _t: PhantomData<fn() -> T>,
}

impl<T> Var<T> {
    pub const fn new(key: &'static str) -> Var<T> {
        Var {
            key: std::borrow::Cow::Borrowed(key),
            _t: PhantomData,
        }
    }

    /// One of a family of variables (`container-ready-etcd`).
    pub(crate) fn keyed(prefix: &str, name: &str) -> Var<T> {
        Var {
            key: std::borrow::Cow::Owned(format!("{prefix}{name}")),
            _t: PhantomData,
        }
    }

    pub(crate) fn key(&self) -> &str {
        &self.key
    }
}
