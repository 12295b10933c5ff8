//! The configuration merge over generated files: reading fragments in order is the same as
//! reading one file in which each key has the value of the last fragment that set it; and a
//! fragment with a key nobody knows is refused, naming the key.

use std::collections::BTreeMap;
use std::path::Path;

use proptest::prelude::*;

use super::sources::parse_fragment;
use super::{Config, Fragment};

/// Keys of every section and type, with a strategy for values (as TOML).
fn setting() -> impl Strategy<Value = (&'static str, String)> {
    prop_oneof![
        (1u32..20).prop_map(|v| ("backup.keep", v.to_string())),
        any::<bool>().prop_map(|v| ("backup.images", v.to_string())),
        (1usize..16).prop_map(|v| ("backup.workers", v.to_string())),
        (0u64..1 << 40).prop_map(|v| ("backup.space_margin", v.to_string())),
        (1u64..100_000).prop_map(|v| ("backup.deadline", v.to_string())),
        prop::sample::select(vec!["\"1s\"", "\"10m\"", "\"2h\""])
            .prop_map(|v| ("engine.retry_delay", v.to_string())),
        (0u32..6).prop_map(|v| ("engine.step_retries", v.to_string())),
        any::<bool>().prop_map(|v| ("recovery.permissive", v.to_string())),
        (1u32..6).prop_map(|v| ("recovery.boot_attempts", v.to_string())),
        prop::sample::select(vec!["[]", "[\"etcd\"]", "[\"etcd\", \"kube-apiserver\"]"])
            .prop_map(|v| ("recovery.containers", v.to_string())),
        any::<bool>().prop_map(|v| ("host.systemd", v.to_string())),
        any::<bool>().prop_map(|v| ("host.cluster", v.to_string())),
        (0u32..5).prop_map(|v| ("steps.copy-files.retries", v.to_string())),
        (1u64..600).prop_map(|v| ("steps.prune.timeout", v.to_string())),
    ]
}

/// One TOML file setting `keys` (section.key = value, steps.<name>.key = value).
fn toml(keys: &BTreeMap<&'static str, String>) -> String {
    let mut sections: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in keys {
        let (section, key) = k.rsplit_once('.').expect("section.key");
        let section = match section.strip_prefix("steps.") {
            Some(step) => format!("steps.\"{step}\""),
            None => section.to_string(),
        };
        sections
            .entry(section)
            .or_default()
            .push(format!("{key} = {v}"));
    }
    sections
        .iter()
        .map(|(s, lines)| format!("[{s}]\n{}\n", lines.join("\n")))
        .collect()
}

fn config_of(fragment: Fragment) -> String {
    // Compared as the settings' debug form (the files list is left out: it names the files).
    let mut c = Config::from_fragment(fragment, vec![]).expect("valid");
    c.files.clear();
    format!("{c:?}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn later_files_win_key_by_key(files in proptest::collection::vec(
        proptest::collection::btree_map(setting().prop_map(|(k, v)| (k, v)), any::<()>(), 0..8)
            .prop_map(|m| m.into_keys().collect::<BTreeMap<_, _>>()),
        1..5,
    )) {
        let origin = Path::new("/etc/recoveryd/config.d/x.toml");
        let mut merged = Fragment::default();
        let mut last_wins: BTreeMap<&'static str, String> = BTreeMap::new();
        for f in &files {
            merged.merge(parse_fragment(&toml(f), origin).unwrap());
            last_wins.extend(f.iter().map(|(k, v)| (*k, v.clone())));
        }
        let single = parse_fragment(&toml(&last_wins), origin).unwrap();
        prop_assert_eq!(config_of(merged), config_of(single));
    }

    #[test]
    fn an_unknown_key_is_refused_by_name(key in "[a-z]{1,8}_x", section in prop::sample::select(vec!["backup", "recovery", "host", "engine"])) {
        let text = format!("[{section}]\n{key} = 1\n");
        let err = parse_fragment(&text, Path::new("f.toml")).unwrap_err().to_string();
        prop_assert!(err.contains(&key), "{}", err);
    }
}
