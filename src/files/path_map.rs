//! Maps keyed by node paths, as bytes: a restore looks up every entry of a tree by its path,
//! more than once, and SipHash over paths was a visible part of that. foldhash (what hashbrown
//! itself uses) is several times faster on short keys and seeded at random per process, so
//! that file names chosen to collide still cannot make a walk quadratic.

use std::collections::HashMap;

/// A map from a node path (`K`: owned or borrowed bytes) to `V`.
pub(crate) type PathMap<V, K = Vec<u8>> = HashMap<K, V, foldhash::fast::RandomState>;
