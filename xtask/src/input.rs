//! The one way xtask reads a YAML file a user hands it (scenarios, the image recipe, kernel
//! locks): bounded before it is parsed, and every error names `file:line:column`.
//!
//! Bounds come first because the YAML parser is not linear in every input (a 200 KB file of
//! nested `[` took 27 s to reject): a file is at most `MAX_FILE_BYTES`, one document, valid
//! UTF-8, and nested at most `MAX_DEPTH` deep (block indentation levels plus flow brackets),
//! all checked by a linear pre-scan that points at the offending character.

use std::io::Read;
use std::path::Path;

use serde::de::DeserializeOwned;

use crate::util::Result;

/// Largest input file read (scenarios are a few KB).
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Deepest nesting accepted (the deepest real file nests 5).
pub const MAX_DEPTH: usize = 32;

/// `file:line:column: message` (1-based): an error in a file the user gave, so bad input.
pub fn located(path: &Path, (line, col): (usize, usize), msg: &str) -> String {
    crate::util::bad_input(format!("{}:{line}:{col}: {msg}", path.display()))
}

/// Reads `path` as bounded UTF-8 text.
pub fn read(path: &Path) -> Result<String> {
    read_limited(path, MAX_FILE_BYTES)
}

/// Reads `path` as UTF-8 text of at most `max_bytes` (e.g. a summary.json, larger than YAML).
/// Every error is bad input (exit 2).
pub fn read_limited(path: &Path, max_bytes: u64) -> Result<String> {
    read_bounded(path, max_bytes).map_err(crate::util::bad_input)
}

/// The bytes of a file the user named (a server binary, a script), at most `max_bytes`,
/// refused unless regular (never blocking on a FIFO). Errors are bad input.
pub fn read_bytes(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    read_raw(path, max_bytes).map_err(crate::util::bad_input)
}

/// `read_limited` for xtask's own state (a cache record that may be missing): its errors are
/// not the user's.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<String> {
    text_of(read_raw(path, max_bytes)?, path)
}

/// At most `max_bytes` of a regular file (refused unless regular, never blocking).
fn read_raw(path: &Path, max_bytes: u64) -> Result<Vec<u8>> {
    let (f, len) = open_regular(path)?;
    if len > max_bytes {
        return Err(too_large(path, max_bytes));
    }
    let mut bytes = Vec::new();
    f.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_large(path, max_bytes));
    }
    Ok(bytes)
}

fn too_large(path: &Path, max_bytes: u64) -> String {
    format!(
        "{}: larger than {} KiB; this is not a file xtask should read",
        path.display(),
        max_bytes >> 10
    )
}

/// Opens `path` for reading without blocking (a FIFO would wait for a writer forever) and
/// refuses anything but a regular file (a FIFO, a device such as /dev/zero, a directory)
/// with one line. Returns the file and its size.
pub fn open_regular(path: &Path) -> Result<(std::fs::File, u64)> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let meta = f
        .metadata()
        .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let t = meta.file_type();
    let what = if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO (named pipe)")
    } else if t.is_char_device() || t.is_block_device() {
        Some("a device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a regular file")
    };
    if let Some(what) = what {
        return Err(format!(
            "{}: is {what}, not a regular file; give the path of a file",
            path.display()
        ));
    }
    // Reads of a regular file never block; clear O_NONBLOCK for the code that follows.
    // SAFETY: fcntl on a descriptor we own, with flags read from it.
    unsafe {
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_NONBLOCK);
        }
    }
    Ok((f, meta.len()))
}

/// The bytes as text, or an error at the first byte that is not UTF-8.
pub fn text_of(bytes: Vec<u8>, path: &Path) -> Result<String> {
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let pos = position(&String::from_utf8_lossy(&e.as_bytes()[..at]), at);
        located(path, pos, "not valid UTF-8 text (save the file as UTF-8)")
    })
}

/// Checks the bounds, then deserializes one document strictly. Errors are bad input.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T> {
    check_shape(text).map_err(|(pos, msg)| crate::util::bad_input(located(path, pos, &msg)))?;
    serde_yaml::from_str(text).map_err(|e| crate::util::bad_input(yaml_error(path, text, &e)))
}

/// Formats a serde_yaml error as `file:line:column: message`.
pub fn yaml_error(path: &Path, text: &str, e: &serde_yaml::Error) -> String {
    let msg = e.to_string();
    // serde_yaml appends " at line L column C"; we lead with the location instead.
    let msg = match msg.find(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg,
    };
    let pos = match e.location() {
        Some(l) => (l.line(), l.column()),
        // Whole-document errors (e.g. an empty file): the first content line.
        None => first_content(text),
    };
    located(path, pos, &msg)
}

/// (line, column) of byte `offset` in `text`, 1-based.
pub fn position(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn first_content(text: &str) -> (usize, usize) {
    text.lines()
        .enumerate()
        .find(|(_, l)| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .map_or((1, 1), |(i, l)| (i + 1, l.len() - l.trim_start().len() + 1))
}

/// Where `keys` (a path of mapping keys, e.g. ["vm", "memory"]) is written, in block or flow
/// style: the deepest key found, else the first content line. A best-effort locator for
/// errors found after parsing; it never fails.
pub fn key_position(text: &str, keys: &[&str]) -> (usize, usize) {
    let lines: Vec<&str> = text.lines().collect();
    let mut found = first_content(text);
    // (line index, column offset) after the parent key, and the parent's indentation.
    let mut from = (0usize, 0usize);
    let mut parent_indent: Option<usize> = None;
    for key in keys {
        let mut hit = None;
        for (ln, line) in lines.iter().enumerate().skip(from.0) {
            let indent = line.len() - line.trim_start().len();
            let blank = line.trim().is_empty() || line.trim_start().starts_with('#');
            if ln > from.0 && !blank && parent_indent.is_some_and(|p| indent <= p) {
                break; // left the parent's block
            }
            let skip = if ln == from.0 { from.1 } else { 0 };
            if let Some(i) = find_key(&line[skip..], key) {
                hit = Some((ln, skip + i, indent));
                break;
            }
        }
        let Some((ln, col, indent)) = hit else { break };
        found = (ln + 1, line_col(lines[ln], col));
        from = (ln, col + key.len() + 1);
        parent_indent = Some(indent);
    }
    found
}

/// 1-based column of byte `offset` in `line`, counted in characters.
fn line_col(line: &str, offset: usize) -> usize {
    line[..offset].chars().count() + 1
}

/// Offset of `key:` in a line, as a whole word (block `key:` or flow `{key: ...}`).
fn find_key(line: &str, key: &str) -> Option<usize> {
    let pat = format!("{key}:");
    let mut search = 0;
    while let Some(i) = line[search..].find(&pat) {
        let at = search + i;
        let before = line[..at].chars().next_back();
        if before.is_none_or(|c| c == ' ' || c == '{' || c == ',' || c == '-') {
            return Some(at);
        }
        search = at + pat.len();
    }
    None
}

type ShapeError = ((usize, usize), String);

/// The linear pre-scan: one document, nesting at most MAX_DEPTH.
fn check_shape(text: &str) -> std::result::Result<(), ShapeError> {
    let mut scan = Scan::default();
    for (i, line) in text.split('\n').enumerate() {
        scan.line(i + 1, line)?;
    }
    Ok(())
}

#[derive(Default)]
struct Scan {
    /// Indentation of the open block collections.
    indents: Vec<usize>,
    /// Open flow collections (`[`, `{`), across lines.
    flow: usize,
    /// Inside a block scalar (`|`, `>`) whose key sits at this indentation.
    block_scalar: Option<usize>,
    seen_content: bool,
}

impl Scan {
    fn line(&mut self, ln: usize, line: &str) -> std::result::Result<(), ShapeError> {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(key_indent) = self.block_scalar {
            if trimmed.is_empty() || indent > key_indent {
                return Ok(());
            }
            self.block_scalar = None;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') {
            return Ok(());
        }
        if line.starts_with("---") || line.starts_with("...") {
            let rest = &line[3..];
            if rest.is_empty() || rest.starts_with([' ', '\t']) {
                if self.seen_content || line.starts_with("...") {
                    return Err((
                        (ln, 1),
                        "only one YAML document per file (remove this `---`/`...` line and what follows, or split the file)".into(),
                    ));
                }
                return Ok(());
            }
        }
        self.seen_content = true;
        if self.flow == 0 {
            while self.indents.last().is_some_and(|&i| i >= indent) {
                self.indents.pop();
            }
            self.indents.push(indent);
        }
        let mut depth_here = 0;
        let mut rest = trimmed;
        while let Some(r) = rest.strip_prefix("- ") {
            depth_here += 1;
            rest = r.trim_start();
        }
        self.check_depth(ln, indent + 1, depth_here)?;
        self.scan_chars(ln, line, indent)
    }

    fn check_depth(
        &self,
        ln: usize,
        col: usize,
        extra: usize,
    ) -> std::result::Result<(), ShapeError> {
        let depth = self.indents.len() + self.flow + extra;
        if depth > MAX_DEPTH {
            return Err((
                (ln, col),
                format!("nested {depth} levels deep; the limit is {MAX_DEPTH}"),
            ));
        }
        Ok(())
    }

    /// Flow brackets outside quotes and comments; notes a block scalar header.
    fn scan_chars(
        &mut self,
        ln: usize,
        line: &str,
        indent: usize,
    ) -> std::result::Result<(), ShapeError> {
        let mut quote: Option<char> = None;
        let mut prev = ' ';
        let mut chars = line.char_indices().peekable();
        while let Some((i, c)) = chars.next() {
            if let Some(q) = quote {
                if q == '"' && c == '\\' {
                    chars.next();
                } else if c == q {
                    quote = None;
                }
                prev = c;
                continue;
            }
            let value_start = prev.is_whitespace() || "[{,:-".contains(prev) || i == indent;
            match c {
                '#' if prev.is_whitespace() || i == 0 => break,
                '\'' | '"' if value_start => quote = Some(c),
                '[' | '{' if self.flow > 0 || value_start => {
                    self.flow += 1;
                    self.check_depth(ln, line[..i].chars().count() + 1, 0)?;
                }
                ']' | '}' if self.flow > 0 => self.flow -= 1,
                '|' | '>' if self.flow == 0 && (prev == ' ' || i == indent) => {
                    let after = line[i + 1..]
                        .trim_start_matches(|c: char| c == '-' || c == '+' || c.is_ascii_digit());
                    let after = after.trim();
                    if after.is_empty() || after.starts_with('#') {
                        self.block_scalar = Some(indent);
                        return Ok(());
                    }
                }
                _ => {}
            }
            prev = c;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn shape(text: &str) -> std::result::Result<(), ShapeError> {
        check_shape(text)
    }

    #[test]
    fn deep_flow_nesting_is_rejected_fast_with_a_location() {
        let text = format!("steps: {}", "[".repeat(100_000));
        let t = Instant::now();
        let e = parse::<serde_yaml::Value>(&text, Path::new("s.yaml")).unwrap_err();
        assert!(t.elapsed().as_millis() < 200, "took {:?}", t.elapsed());
        assert!(e.starts_with("s.yaml:1:"), "{e}");
        assert!(e.contains("the limit is 32"), "{e}");
    }

    #[test]
    fn deep_block_nesting_is_rejected() {
        let mut text = String::new();
        for i in 0..40 {
            text += &format!("{}k{i}:\n", " ".repeat(i));
        }
        let ((line, _), msg) = shape(&text).unwrap_err();
        assert_eq!(line, 33, "{msg}");
        assert!(shape(&format!("{}x", "- ".repeat(40))).is_err());
    }

    #[test]
    fn ordinary_yaml_passes_the_pre_scan() {
        let text = "name: x # a [ comment\ndescription: don't [ panic {\nsteps:\n  - shell:\n      run: |\n        if [ -e /x ]; then echo {; fi\n        ]]]]\n    timeout: 5\n  - io: {device: d0, bytes: \"[\"}\n";
        shape(text).unwrap();
        for f in std::fs::read_dir(crate::util::root().join("scenarios")).unwrap() {
            let p = f.unwrap().path();
            if p.extension().is_some_and(|x| x == "yaml") {
                shape(&std::fs::read_to_string(&p).unwrap()).unwrap();
            }
        }
    }

    #[test]
    fn second_document_is_located() {
        let e = parse::<serde_yaml::Value>("---\na: 1\n---\nb: 2\n", Path::new("f")).unwrap_err();
        assert!(e.starts_with("f:3:1: only one YAML document"), "{e}");
    }

    #[test]
    fn invalid_utf8_is_located() {
        let e = text_of(b"a: 1\nb: \xff\n".to_vec(), Path::new("f")).unwrap_err();
        assert!(e.starts_with("f:2:4: not valid UTF-8"), "{e}");
    }

    #[test]
    fn oversized_files_are_refused_before_reading_them_whole() {
        let p = std::env::temp_dir().join(format!("xtask-big-{}.yaml", std::process::id()));
        std::fs::write(&p, vec![b'#'; MAX_FILE_BYTES as usize + 10]).unwrap();
        let e = read(&p).unwrap_err();
        std::fs::remove_file(&p).unwrap();
        assert!(e.contains("larger than 1024 KiB"), "{e}");
    }

    /// A FIFO would block the open (and a read) forever; /dev/zero would be read until
    /// memory runs out; a directory is no file either. Each is one line, at once.
    #[test]
    fn special_files_are_refused_without_blocking() {
        let dir = std::env::temp_dir().join(format!("xtask-fifo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("s.yaml");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let t = Instant::now();
        let e = read(&fifo).unwrap_err();
        assert!(
            e.contains("is a FIFO (named pipe), not a regular file"),
            "{e}"
        );
        let e = read(Path::new("/dev/zero")).unwrap_err();
        assert!(e.contains("/dev/zero: is a device"), "{e}");
        let e = read(&dir).unwrap_err();
        assert!(e.contains("is a directory"), "{e}");
        assert!(t.elapsed().as_secs() < 2, "{:?}", t.elapsed());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn keys_are_found_where_written() {
        let text = "name: a\nvm:\n  cpus: 0\n  memory: 10Q\ndevice: {size: 1, queues: 0}\n";
        assert_eq!(key_position(text, &["vm", "memory"]), (4, 3));
        assert_eq!(key_position(text, &["device", "queues"]), (5, 19));
        assert_eq!(key_position(text, &["vm", "kernel"]), (2, 1));
        assert_eq!(key_position(text, &["nothing"]), (1, 1));
    }
}
