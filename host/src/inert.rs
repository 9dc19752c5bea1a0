//! Connector-supplied text made inert (invariant 12): whatever a connector
//! says — a log line, an error's detail, a question for the owner, its
//! account's name — reaches the host log, a terminal, a page or an API
//! response only through [`text`], with its control characters escaped, so
//! a newline cannot forge a host log line and an escape sequence cannot
//! rewrite what a terminal shows.

use std::borrow::Cow;
use std::fmt::{self, Write};

/// Whether `c` must not reach a reader as itself: C0 and C1 controls and
/// DEL (newlines and terminal escapes among them), and the Unicode
/// formatting characters that reorder or hide the text around them.
fn dangerous(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200b}'..='\u{200f}' // zero-width characters and direction marks
            | '\u{2028}' | '\u{2029}' // line and paragraph separators
            | '\u{202a}'..='\u{202e}' // embeddings and overrides
            | '\u{2060}'..='\u{2064}' // invisible operators
            | '\u{2066}'..='\u{2069}' // isolates
            | '\u{feff}' // byte-order mark
        )
}

/// `s`, its dangerous characters escaped (`\n`, `\t`, `\r`, or `\u{..}`).
/// Displays without allocating.
#[derive(Debug, Clone, Copy)]
pub struct Inert<'a>(pub &'a str);

impl fmt::Display for Inert<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.chars() {
            match c {
                '\n' => f.write_str("\\n")?,
                '\r' => f.write_str("\\r")?,
                '\t' => f.write_str("\\t")?,
                c if dangerous(c) => write!(f, "\\u{{{:x}}}", c as u32)?,
                c => f.write_char(c)?,
            }
        }
        Ok(())
    }
}

/// `s` escaped as [`Inert`] shows it, borrowed when nothing needed it.
pub fn escape(s: &str) -> Cow<'_, str> {
    if s.chars().any(dangerous) {
        Cow::Owned(Inert(s).to_string())
    } else {
        Cow::Borrowed(s)
    }
}

/// `s` escaped, then cut to at most `max` characters, marked where it was
/// cut. Anything secret must be redacted from `s` before: cutting first
/// could leave a secret's head that redaction no longer recognizes.
pub fn text(s: &str, max: usize) -> String {
    let escaped = escape(s);
    match escaped.char_indices().nth(max) {
        None => escaped.into_owned(),
        Some((at, _)) => format!("{}…", &escaped[..at]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_and_reordering_characters_are_escaped() {
        let table: &[(&str, &str)] = &[
            ("plain text, ünïcode", "plain text, ünïcode"),
            (
                "ok\n2026-12-07T00:00:00Z  INFO collected 10 records",
                "ok\\n2026-12-07T00:00:00Z  INFO collected 10 records",
            ),
            ("a\r\tb", "a\\r\\tb"),
            ("\u{1b}[2Khidden", "\\u{1b}[2Khidden"),
            (
                "\u{1b}]8;;http://evil/\u{7}x",
                "\\u{1b}]8;;http://evil/\\u{7}x",
            ),
            ("del\u{7f} c1\u{9b}", "del\\u{7f} c1\\u{9b}"),
            ("api.\u{202e}moc.live", "api.\\u{202e}moc.live"),
            ("zero\u{200b}width", "zero\\u{200b}width"),
            ("a\u{2028}b", "a\\u{2028}b"),
            // Already escaped text stays as it is: escaping is idempotent.
            ("\\n \\u{1b}", "\\n \\u{1b}"),
        ];
        for (input, expected) in table {
            assert_eq!(escape(input), *expected, "{input:?}");
            assert_eq!(escape(&escape(input)), *expected, "twice: {input:?}");
        }
    }

    #[test]
    fn text_is_cut_after_escaping() {
        assert_eq!(text("abcdef", 10), "abcdef");
        assert_eq!(text("abcdef", 3), "abc…");
        // The escape counts toward the length: no raw control character
        // survives a cut through it.
        assert_eq!(text("ab\ncd", 3), "ab\\…");
        assert!(matches!(escape("clean"), Cow::Borrowed(_)));
    }
}
