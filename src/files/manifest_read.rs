//! Reading a manifest's bytes: streamed in blocks of whole lines, hashed as they are read,
//! and parsed on several threads.
//!
//! A manifest of 50k entries is 20 MB of JSON. Read whole, its bytes and what they parse to
//! were in memory at once, and one core parsed while the other waited. Here the bytes pass
//! through in blocks of about a megabyte (a few in flight), each parsed by the next free
//! thread, and the hash covers every byte read. Nothing a read returns is used before the
//! hash is checked: an error in the text is reported only once the whole file was hashed, and a
//! file whose hash is not the expected one is refused as such whatever else is wrong with it.

use super::manifest::{FORMAT, Header, ManifestError, VERSION};

/// About this many bytes a block (then up to the end of the line).
const BLOCK: usize = 1 << 20;

fn parse_error(name: &str, line: usize, message: String) -> ManifestError {
    ManifestError::Parse {
        path: name.to_string(),
        line,
        message,
    }
}

/// The lines of a block as `BufRead::lines` cuts them (a `\r` before the newline dropped), each
/// with its number; `first` is the number of the block's first line.
pub(super) fn lines(text: &str, first: usize) -> impl Iterator<Item = (usize, &str)> {
    let body = text.strip_suffix('\n').unwrap_or(text);
    body.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .enumerate()
        .map(move |(i, l)| (first + i, l))
}

/// The block's bytes as text, or the error naming the line where they stop being UTF-8.
fn text<'a>(bytes: &'a [u8], first: usize, name: &str) -> Result<&'a str, ManifestError> {
    std::str::from_utf8(bytes).map_err(|e| {
        let line = first
            + bytes[..e.valid_up_to()]
                .iter()
                .filter(|&&b| b == b'\n')
                .count();
        parse_error(name, line, "stream did not contain valid UTF-8".into())
    })
}

/// A source cut into blocks of whole lines, every byte hashed as it is read.
struct Blocks<R> {
    src: R,
    buf: Vec<u8>,
    eof: bool,
    hasher: blake3::Hasher,
}

impl<R: std::io::Read> Blocks<R> {
    /// Read up to another block's worth.
    fn more(&mut self) -> std::io::Result<()> {
        let start = self.buf.len();
        self.buf.resize(start + BLOCK, 0);
        let n = loop {
            match self.src.read(&mut self.buf[start..]) {
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        let n = n.inspect_err(|_| self.buf.truncate(start))?;
        self.buf.truncate(start + n);
        self.hasher.update(&self.buf[start..]);
        self.eof = n == 0;
        Ok(())
    }

    fn cut(&mut self, end: usize) -> Vec<u8> {
        let rest = self.buf.split_off(end);
        std::mem::replace(&mut self.buf, rest)
    }

    /// The first line, with its newline when it has one (empty: the source is empty).
    fn first_line(&mut self) -> std::io::Result<Vec<u8>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                return Ok(self.cut(i + 1));
            }
            if self.eof {
                return Ok(self.cut(self.buf.len()));
            }
            self.more()?;
        }
    }

    /// The next block: about [`BLOCK`] bytes of whole lines (at the end, what is left, with
    /// or without a last newline); `None` at the end.
    fn next_block(&mut self) -> std::io::Result<Option<Vec<u8>>> {
        loop {
            if self.eof {
                let all = self.cut(self.buf.len());
                return Ok((!all.is_empty()).then_some(all));
            }
            if self.buf.len() >= BLOCK
                && let Some(i) = self.buf.iter().rposition(|&b| b == b'\n')
            {
                return Ok(Some(self.cut(i + 1)));
            }
            self.more()?;
        }
    }
}

/// The lines a block holds (a last line without its newline counts).
fn line_count(block: &[u8]) -> usize {
    block.iter().filter(|&&b| b == b'\n').count() + usize::from(block.last() != Some(&b'\n'))
}

/// What a read found: the header, and what `handle` made of each block (in file order).
pub(super) struct Found<T> {
    pub header: Header,
    pub blocks: Vec<T>,
}

type Failure = Option<(usize, ManifestError)>;

/// Keep the error of the earliest line.
fn keep_first(slot: &mut Failure, e: ManifestError) {
    let line = match &e {
        ManifestError::Parse { line, .. } => *line,
        _ => 0,
    };
    if slot.as_ref().is_none_or(|(l, _)| line < *l) {
        *slot = Some((line, e));
    }
}

/// The header line, parsed and checked.
fn header(line: &[u8], name: &str) -> Result<Header, ManifestError> {
    if line.is_empty() {
        return Err(parse_error(name, 1, "empty manifest".into()));
    }
    let (_, l) = lines(text(line, 1, name)?, 1).next().unwrap_or((1, ""));
    let h: Header = serde_json::from_str(l).map_err(|e| parse_error(name, 1, e.to_string()))?;
    if h.format != FORMAT || h.version != VERSION {
        return Err(parse_error(
            name,
            1,
            format!("unsupported format {} version {}", h.format, h.version),
        ));
    }
    Ok(h)
}

/// Read `src` (a manifest; `name` for messages), refusing it unless its BLAKE3 hash is
/// `expected_hash` (when given). The header is parsed and checked here; every later block of
/// lines goes to `handle` (its text and the number of its first line) on `threads` threads.
pub(super) fn read<R: std::io::Read, T: Send>(
    src: R,
    name: &str,
    expected_hash: Option<&str>,
    threads: usize,
    handle: impl Fn(&str, usize) -> Result<T, ManifestError> + Sync,
) -> Result<Found<T>, ManifestError> {
    let io = |source| ManifestError::Io {
        path: name.to_string(),
        source,
    };
    let mut src = Blocks {
        src,
        buf: Vec::with_capacity(2 * BLOCK),
        eof: false,
        hasher: blake3::Hasher::new(),
    };
    let mut failure: Failure = None;
    let head = match header(&src.first_line().map_err(io)?, name) {
        Ok(h) => Some(h),
        Err(e) => {
            keep_first(&mut failure, e);
            None
        }
    };
    let results = std::sync::Mutex::new(Vec::<(usize, Result<T, ManifestError>)>::new());
    let (tx, rx) = std::sync::mpsc::sync_channel::<(usize, usize, Vec<u8>)>(threads * 2);
    let rx = std::sync::Mutex::new(rx);
    std::thread::scope(|s| -> Result<(), ManifestError> {
        let tx = tx;
        for _ in 0..threads {
            s.spawn(|| {
                super::xattr_set::while_parsing(|| {
                    loop {
                        let next = rx.lock().unwrap_or_else(|p| p.into_inner()).recv();
                        let Ok((index, first, bytes)) = next else {
                            return;
                        };
                        let r = text(&bytes, first, name).and_then(|t| handle(t, first));
                        results
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((index, r));
                    }
                })
            });
        }
        let mut line = 2;
        let mut index = 0;
        while let Some(block) = src.next_block().map_err(io)? {
            let first = line;
            line += line_count(&block);
            // After an error only the hash matters: the rest is read, not parsed.
            if failure.is_none() && tx.send((index, first, block)).is_ok() {
                index += 1;
            }
        }
        Ok(())
    })?;
    let hash = src.hasher.finalize().to_hex().to_string();
    if let Some(expected) = expected_hash
        && hash != expected
    {
        return Err(ManifestError::HashMismatch {
            path: name.to_string(),
            expected: expected.to_string(),
            found: hash,
        });
    }
    let mut results = results.into_inner().unwrap_or_else(|p| p.into_inner());
    results.sort_by_key(|(i, _)| *i);
    let mut blocks = Vec::with_capacity(results.len());
    for (_, r) in results {
        match r {
            Ok(b) => blocks.push(b),
            Err(e) => keep_first(&mut failure, e),
        }
    }
    match (failure, head) {
        (Some((_, e)), _) => Err(e),
        (None, Some(header)) => Ok(Found { header, blocks }),
        (None, None) => Err(parse_error(name, 1, "empty manifest".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header_line() -> String {
        format!(
            r#"{{"format":"{FORMAT}","version":{VERSION},"generation":"g","trees":[],"extras":[],"exclude":[],"skipped_mounts":[]}}"#
        )
    }

    /// Every line after the header, with its number, as the blocks gave them.
    fn lines_read(
        bytes: &[u8],
        expected: Option<&str>,
    ) -> Result<Vec<(usize, String)>, ManifestError> {
        let found = read(bytes, "m", expected, 3, |t, n| {
            Ok(lines(t, n)
                .map(|(n, l)| (n, l.to_string()))
                .collect::<Vec<_>>())
        })?;
        Ok(found.blocks.into_iter().flatten().collect())
    }

    /// What `BufRead::lines` makes of the same bytes, after the header.
    fn lines_expected(bytes: &[u8]) -> Vec<(usize, String)> {
        use std::io::BufRead;
        bytes
            .lines()
            .skip(1)
            .enumerate()
            .map(|(i, l)| (i + 2, l.unwrap()))
            .collect()
    }

    #[test]
    fn blocks_cut_at_line_ends_and_number_every_line() {
        // Several blocks, a line longer than a block, CRLF, no newline at the end.
        let mut text = header_line() + "\n";
        for i in 0..60_000 {
            text.push_str(&format!(
                "{{\"line\":{i},\"pad\":\"{}\"}}\n",
                "x".repeat(i % 40)
            ));
        }
        text.push_str(&format!("{{\"long\":\"{}\"}}\r\n", "y".repeat(3 * BLOCK)));
        text.push_str("{\"last\":1}");
        let bytes = text.as_bytes();
        assert!(bytes.len() > 4 * BLOCK);
        assert_eq!(lines_read(bytes, None).unwrap(), lines_expected(bytes));
        let hash = blake3::hash(bytes).to_hex().to_string();
        assert_eq!(lines_read(bytes, Some(&hash)).unwrap().len(), 60_002);

        // A damaged byte far in: refused by its hash, whatever it broke.
        let mut damaged = bytes.to_vec();
        damaged[2 * BLOCK + 10] = 0xff;
        assert!(matches!(
            lines_read(&damaged, Some(&hash)),
            Err(ManifestError::HashMismatch { .. })
        ));
        // Without a hash to check, the text error names its line.
        let line = 1 + damaged[..2 * BLOCK + 10]
            .iter()
            .filter(|&&b| b == b'\n')
            .count();
        match read(&damaged[..], "m", None, 2, |t, n| {
            for (n, l) in lines(t, n) {
                serde_json::from_str::<serde_json::Value>(l)
                    .map_err(|e| parse_error("m", n, e.to_string()))?;
            }
            Ok(())
        }) {
            Err(ManifestError::Parse {
                line: l, message, ..
            }) => {
                assert_eq!(l, line, "{message}");
                assert!(message.contains("UTF-8"), "{message}");
            }
            other => panic!("{:?}", other.map(|_| ())),
        }
    }

    #[test]
    fn a_header_alone_an_empty_file_and_an_unknown_format() {
        let h = header_line();
        assert!(lines_read(h.as_bytes(), None).unwrap().is_empty());
        assert!(
            lines_read(format!("{h}\n").as_bytes(), None)
                .unwrap()
                .is_empty()
        );
        assert_eq!(
            lines_read(format!("{h}\n\n").as_bytes(), None).unwrap(),
            vec![(2, String::new())]
        );
        for (bytes, why) in [
            (String::new(), "empty manifest"),
            (h.replace(FORMAT, "other"), "unsupported format"),
            ("{".to_string(), "EOF"),
        ] {
            match lines_read(bytes.as_bytes(), None) {
                Err(ManifestError::Parse {
                    line: 1, message, ..
                }) => {
                    assert!(message.contains(why), "{message}")
                }
                other => panic!("{bytes:?}: {other:?}"),
            }
        }
    }
}
