//! The one escaping layer: every string that did not come from xtask's own source (names,
//! reasons, guest and server output, anything read from a summary.json another job wrote)
//! passes through here on its way to a terminal, a CI log or a Markdown report.
//!
//! - `term`: one line for a terminal or a GitHub Actions log. Control characters (newlines
//!   above all), ANSI escapes and bidirectional overrides become visible `\n`, `\x1b`,
//!   `\u{202e}`; a leading `::` (a workflow command) is broken. A string never starts or ends
//!   a line it was not given.
//! - `md_code`: an inline code span, inert in CommonMark/GFM (no HTML, links, emphasis or
//!   entities inside code) and safe in a table cell (`|` escaped, no newline).
//! - `md_block`: a fenced code block whose fence is longer than any backtick run inside.
//! - `bound`: a string cut to a byte budget, keeping its head and its tail (where the cause
//!   of a failure usually is), on character boundaries.

use std::borrow::Cow;
use std::fmt::Write as _;

/// `s` as one inert line for a terminal or CI log.
pub fn term(s: &str) -> Cow<'_, str> {
    let lead = s.len() - s.trim_start().len();
    let command = s[lead..].starts_with("::");
    if !command && !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for (i, c) in s.char_indices() {
        if command && i == lead {
            out.push('\\');
        }
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

/// Several lines (e.g. reproduce lines), each escaped by `term`, joined by newlines.
pub fn term_lines(s: &str) -> String {
    s.lines().map(term).collect::<Vec<_>>().join("\n")
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_bidi(c)
}

/// Unicode bidirectional controls: they reorder what a reader sees ("trojan source").
fn is_bidi(c: char) -> bool {
    matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn push_escaped(out: &mut String, c: char) {
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if (c as u32) < 0x100 && needs_escape(c) => {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
        c if needs_escape(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// `s` as an inline code span: inert Markdown, safe inside a table cell.
pub fn md_code(s: &str) -> String {
    let body: String = term(s).replace('|', "\\|");
    if body.is_empty() {
        return "` `".into();
    }
    let run = longest_backtick_run(&body);
    let fence = "`".repeat(run + 1);
    // A space on each side when the body touches a backtick (CommonMark strips one each).
    let pad = if body.starts_with('`') || body.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{body}{pad}{fence}")
}

/// `s` as a fenced code block (its lines escaped by `term`), ending with a newline.
pub fn md_block(s: &str) -> String {
    let body = term_lines(s);
    let fence = "`".repeat(longest_backtick_run(&body).max(2) + 1);
    format!("{fence}text\n{body}\n{fence}\n")
}

fn longest_backtick_run(s: &str) -> usize {
    let (mut best, mut run) = (0, 0);
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        best = best.max(run);
    }
    best
}

/// `s` within `max_bytes`: its head, a marker naming what was cut, and its tail.
/// Inert XML text or attribute value (SVG, JUnit): markup characters escaped, control
/// characters but newline and tab blanked (XML 1.0 cannot carry them).
pub fn xml(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '&' => "&amp;".into(),
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '"' => "&quot;".into(),
            '\'' => "&apos;".into(),
            c if (c as u32) < 0x20 && c != '\n' && c != '\t' => " ".into(),
            c => c.to_string(),
        })
        .collect()
}

pub fn bound(s: &str, max_bytes: usize) -> Cow<'_, str> {
    if s.len() <= max_bytes {
        return Cow::Borrowed(s);
    }
    let keep = max_bytes.saturating_sub(48) / 2;
    let head_end = floor_boundary(s, keep);
    let tail_start = ceil_boundary(s, s.len() - keep);
    let cut = tail_start - head_end;
    Cow::Owned(format!(
        "{} [... {cut} bytes cut ...] {}",
        &s[..head_end],
        &s[tail_start..]
    ))
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_boundary(s: &str, mut i: usize) -> usize {
    while !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_lines_cannot_be_injected() {
        assert_eq!(term("plain words: ok"), "plain words: ok");
        assert_eq!(
            term("x\n::error::owned\r\x1b[2J"),
            "x\\n::error::owned\\r\\x1b[2J"
        );
        assert_eq!(term("::warning::x"), "\\::warning::x");
        assert_eq!(term("  ::warning::x"), "  \\::warning::x");
        assert_eq!(term("\t::x"), "\\t\\::x");
        assert_eq!(term("abc\u{202e}def"), "abc\\u{202e}def");
        assert!(!term("a\u{85}b").contains('\u{85}'));
        assert_eq!(term_lines("one\n::error::two"), "one\n\\::error::two");
    }

    #[test]
    fn code_spans_are_inert_in_a_table() {
        assert_eq!(md_code("a|b"), "`a\\|b`");
        assert_eq!(md_code("a`b"), "``a`b``");
        assert_eq!(md_code("`x`"), "`` `x` ``");
        assert_eq!(md_code(""), "` `");
        let hostile = "PASS\n\n<!-- [x](https://evil) **b** | c";
        let code = md_code(hostile);
        assert!(!code.contains('\n'), "{code}");
        assert!(code.starts_with('`') && code.ends_with('`'));
        assert!(code.contains("\\|"), "{code}");
    }

    #[test]
    fn blocks_cannot_be_closed_from_inside() {
        let b = md_block("a\n```\n<script>");
        assert!(
            b.starts_with("````text\n") && b.ends_with("\n````\n"),
            "{b}"
        );
        assert_eq!(md_block("x"), "```text\nx\n```\n");
    }

    #[test]
    fn bounds_are_in_bytes_and_keep_both_ends() {
        let s = format!("HEAD{}TAIL", "é".repeat(10_000));
        let b = bound(&s, 1000);
        assert!(b.len() <= 1000, "{}", b.len());
        assert!(b.starts_with("HEAD") && b.ends_with("TAIL"), "{b}");
        assert!(b.contains("bytes cut"));
        assert_eq!(bound("short", 1000), "short");
        assert!(bound(&"x".repeat(100), 10).len() < 100);
    }
}
