//! Fixed journald `MESSAGE_ID`s, so that `journalctl MESSAGE_ID=...` finds every run start and
//! end on any node. These values are an interface: never change them.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunMessage {
    Started,
    Succeeded,
    Failed,
}

impl RunMessage {
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            RunMessage::Started => "5d56101d25df43e0b1e634fc5fac8b7d",
            RunMessage::Succeeded => "b31a37685337456eb532290d044ef3f1",
            RunMessage::Failed => "25494a06152a48ad947b2244676f98ce",
        }
    }
}
