//! An entry's extended attributes, kept once per distinct set.
//!
//! Every entry of a node has xattrs (its SELinux label at least), and few distinct sets exist:
//! the files of one directory mostly share one label. A manifest of 50k entries held 50k copies
//! of the same few names and values, three allocations each. A set is shared (`Arc`), and a
//! manifest read or a walk interns what it makes, so that equal sets are one allocation.

use std::cell::RefCell;
use std::collections::HashSet;
use std::fmt;
use std::ops::Deref;
use std::sync::{Arc, Mutex};

use super::fsx::Xattrs;

/// Extended attributes (name, value), sorted by name; empty without an allocation.
#[derive(Clone, Default)]
pub(crate) struct XattrSet(Option<Arc<Xattrs>>);

impl XattrSet {
    fn of(v: Xattrs) -> XattrSet {
        if v.is_empty() {
            XattrSet(None)
        } else {
            XattrSet(Some(Arc::new(v)))
        }
    }
}

impl Deref for XattrSet {
    type Target = [(Vec<u8>, Vec<u8>)];
    fn deref(&self) -> &Self::Target {
        self.0.as_deref().map(Vec::as_slice).unwrap_or(&[])
    }
}

impl PartialEq for XattrSet {
    fn eq(&self, other: &XattrSet) -> bool {
        match (&self.0, &other.0) {
            (Some(a), Some(b)) if Arc::ptr_eq(a, b) => true,
            _ => **self == **other,
        }
    }
}

impl Eq for XattrSet {}

impl fmt::Debug for XattrSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// A set not shared with any other (tests, and entries too few to matter).
impl From<Xattrs> for XattrSet {
    fn from(v: Xattrs) -> XattrSet {
        XattrSet::of(v)
    }
}

/// The sets made so far, to hand out the same one for equal contents.
#[derive(Default)]
pub(crate) struct Interner(Mutex<Known>);

/// The sets made so far (foldhash: a set is hashed once per entry read).
type Known = HashSet<Arc<Xattrs>, foldhash::fast::RandomState>;

impl Interner {
    pub(crate) fn intern(&self, v: Xattrs) -> XattrSet {
        if v.is_empty() {
            return XattrSet(None);
        }
        let mut known = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(same) = known.get(&v) {
            return XattrSet(Some(same.clone()));
        }
        let set = Arc::new(v);
        known.insert(set.clone());
        XattrSet(Some(set))
    }
}

thread_local! {
    /// The interner of the manifest being parsed on this thread, if any ([`while_parsing`]).
    static PARSING: RefCell<Option<Known>> = const { RefCell::new(None) };
}

/// Run `f` (the parse of a manifest) with the sets it reads interned, on this thread.
pub(crate) fn while_parsing<T>(f: impl FnOnce() -> T) -> T {
    let outer = PARSING.with(|p| p.borrow_mut().replace(Known::default()));
    let r = f();
    PARSING.with(|p| *p.borrow_mut() = outer);
    r
}

/// A set read from a manifest: interned when a parse is under way on this thread.
pub(crate) fn parsed(v: Xattrs) -> XattrSet {
    if v.is_empty() {
        return XattrSet(None);
    }
    PARSING.with(|p| match p.borrow_mut().as_mut() {
        Some(known) => {
            if let Some(same) = known.get(&v) {
                return XattrSet(Some(same.clone()));
            }
            let set = Arc::new(v);
            known.insert(set.clone());
            XattrSet(Some(set))
        }
        None => XattrSet::of(v),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn label(l: &str) -> Xattrs {
        vec![(b"security.selinux".to_vec(), l.as_bytes().to_vec())]
    }

    #[test]
    fn equal_sets_are_one_allocation_and_compare_by_content() {
        let i = Interner::default();
        let a = i.intern(label("etc_t"));
        let b = i.intern(label("etc_t"));
        let c = i.intern(label("bin_t"));
        assert!(Arc::ptr_eq(a.0.as_ref().unwrap(), b.0.as_ref().unwrap()));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            a,
            XattrSet::from(label("etc_t")),
            "shared or not, by content"
        );
        assert!(i.intern(Vec::new()).0.is_none());
        assert_eq!(&*XattrSet::default(), &[] as &[(Vec<u8>, Vec<u8>)]);

        let (x, y) = while_parsing(|| (parsed(label("etc_t")), parsed(label("etc_t"))));
        assert!(Arc::ptr_eq(x.0.as_ref().unwrap(), y.0.as_ref().unwrap()));
        let (x, y) = (parsed(label("etc_t")), parsed(label("etc_t")));
        assert!(!Arc::ptr_eq(x.0.as_ref().unwrap(), y.0.as_ref().unwrap()));
        assert_eq!(x, y);
    }
}
