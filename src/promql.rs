//! Templates in PromQL text: where each one stands (inside a double-quoted
//! string or in the query itself) and how a value is written as string
//! content. Pure text handling; no IO, and nothing here knows the runbook.
//!
//! A rendered value must never change the query around it: inside `"…"` it
//! is escaped, and outside a string only values whose type is known (an
//! integer or duration param, the SLO `{{window}}`) may stand.

/// A template in a PromQL query stands where a value could rewrite the query.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromqlError {
    /// A template outside any string literal that is not a typed value.
    #[error(
        "`{{{{{inner}}}}}` at column {column} stands outside a double-quoted string, where a label value could rewrite the query; put it inside quotes (label=\"{{{{{inner}}}}}\") or use an integer or duration param"
    )]
    Bare { inner: String, column: usize },
    /// A template inside a single-quoted or backtick string, which pitcrew
    /// does not escape.
    #[error("`{{{{{inner}}}}}` at column {column} is inside a {quote} string; templates are escaped only inside double quotes (\"…\")")]
    WrongQuote { inner: String, column: usize, quote: &'static str },
    /// `{{{ }}}` turns escaping off; blocks make the string boundaries
    /// depend on data.
    #[error("`{{{{{inner}}}}}` at column {column}: {reason}")]
    Form {
        inner: String,
        column: usize,
        reason: &'static str,
    },
}

/// The lexical context a template stands in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The query itself (or a `#` comment, which ends at a line break a
    /// value could contain).
    Code,
    DoubleQuoted,
    SingleQuoted,
    Backtick,
}

/// One `{{…}}` in a query: its byte offset, the text between the braces
/// (a third brace of `{{{ }}}` included) and where it stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot<'a> {
    pub offset: usize,
    pub inner: &'a str,
    pub place: Place,
}

/// Every template in `query`, with where it stands. Follows PromQL's string
/// rules: `"` and `'` strings with backslash escapes, raw backtick strings,
/// `#` comments to the end of the line.
pub fn slots(query: &str) -> Vec<Slot<'_>> {
    #[derive(Clone, Copy, PartialEq)]
    enum State {
        Code,
        Comment,
        Quoted(u8),
    }
    let bytes = query.as_bytes();
    let mut out = Vec::new();
    let mut state = State::Code;
    let mut i = 0;
    while i < bytes.len() {
        // Bytes, not `query[i..]`: `i` walks bytes and may stand inside a
        // multi-byte character (a `{` never does, so the slices below are safe).
        if bytes[i..].starts_with(b"{{") {
            let Some(len) = query[i + 2..].find("}}") else { break };
            let mut end = i + 2 + len;
            // `{{{x}}}`: the inner text keeps its opening brace; skip the
            // closing one so it is not read as query text.
            if query[i + 2..].starts_with('{') && query[end + 2..].starts_with('}') {
                end += 1;
            }
            let place = match state {
                State::Code | State::Comment => Place::Code,
                State::Quoted(b'"') => Place::DoubleQuoted,
                State::Quoted(b'\'') => Place::SingleQuoted,
                State::Quoted(_) => Place::Backtick,
            };
            out.push(Slot {
                offset: i,
                inner: &query[i + 2..i + 2 + len],
                place,
            });
            i = end + 2;
            continue;
        }
        let b = bytes[i];
        state = match (state, b) {
            (State::Code, b'"' | b'\'' | b'`') => State::Quoted(b),
            (State::Code, b'#') => State::Comment,
            (State::Comment, b'\n') => State::Code,
            (State::Quoted(q), b'\\') if q != b'`' => {
                i += 1;
                state
            }
            (State::Quoted(q), b) if b == q => State::Code,
            (s, _) => s,
        };
        i += 1;
    }
    out
}

/// Checks that every template in `query` stands where its value cannot
/// change the query: inside a double-quoted string, or outside strings when
/// `typed(path)` says the path names a number or duration.
pub fn check(query: &str, typed: impl Fn(&str) -> bool) -> Result<(), PromqlError> {
    for slot in slots(query) {
        let inner = slot.inner.trim();
        let column = query[..slot.offset].chars().count() + 1;
        let form = |reason| PromqlError::Form {
            inner: slot.inner.to_string(),
            column,
            reason,
        };
        if inner.starts_with('!') {
            continue;
        }
        if inner.starts_with('{') {
            return Err(form("`{{{ }}}` would skip PromQL escaping; use `{{ }}`"));
        }
        if inner.starts_with(['#', '/', '^', '>', '~']) || inner == "else" {
            return Err(form(
                "blocks and partials are not supported in queries; use one `{{path}}` inside a double-quoted string",
            ));
        }
        match slot.place {
            Place::DoubleQuoted => {}
            Place::Code if typed(inner) => {}
            Place::Code => {
                return Err(PromqlError::Bare {
                    inner: slot.inner.to_string(),
                    column,
                });
            }
            Place::SingleQuoted | Place::Backtick => {
                return Err(PromqlError::WrongQuote {
                    inner: slot.inner.to_string(),
                    column,
                    quote: if slot.place == Place::Backtick {
                        "backtick"
                    } else {
                        "single-quoted"
                    },
                });
            }
        }
    }
    Ok(())
}

/// `query` with every template replaced by `value(path)`, given the path
/// trimmed (`{{ window }}` → `window`). The caller has checked the query.
pub fn substitute(query: &str, value: impl Fn(&str) -> String) -> String {
    let mut out = String::with_capacity(query.len());
    let mut at = 0;
    for slot in slots(query) {
        out.push_str(&query[at..slot.offset]);
        out.push_str(&value(slot.inner.trim()));
        at = slot.offset + 2 + slot.inner.len() + 2;
    }
    out.push_str(&query[at..]);
    out
}

/// A value as the content of a double-quoted PromQL string.
pub fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn typed(path: &str) -> bool {
        path == "params.minutes"
    }

    #[test]
    fn templates_inside_double_quotes_or_typed_pass() {
        for q in [
            r#"sum(up{job="{{alert.labels.job}}"})"#,
            r#"up{job=~"{{params.host}}.*", x="a\"{{alert.labels.x}}"}"#,
            r#"rate(x[{{params.minutes}}m])"#,
            r#"up{a="'"} + on() x{b="{{alert.labels.b}}"}"#,
            "up # comment with \"quote\n+ x{a=\"{{alert.labels.a}}\"}",
            "up{a=\"{{! a comment }}\"}",
        ] {
            assert_eq!(check(q, typed), Ok(()), "{q}");
        }
    }

    #[test]
    fn templates_where_a_value_could_rewrite_the_query_are_refused() {
        let bare = check("sum(up{job={{alert.labels.job}}})", typed).unwrap_err();
        assert_eq!(
            bare,
            PromqlError::Bare {
                inner: "alert.labels.job".into(),
                column: 12
            }
        );
        assert!(
            bare.to_string().starts_with("`{{alert.labels.job}}` at column 12 stands outside"),
            "{bare}"
        );
        // A string that closed before the template leaves it in the query.
        assert!(matches!(
            check(r#"up{a="x\\"}{{alert.labels.a}}"#, typed),
            Err(PromqlError::Bare { .. })
        ));
        assert!(matches!(
            check("up{a='{{alert.labels.a}}'}", typed),
            Err(PromqlError::WrongQuote {
                quote: "single-quoted",
                ..
            })
        ));
        assert!(matches!(
            check("up{a=`{{alert.labels.a}}`}", typed),
            Err(PromqlError::WrongQuote { quote: "backtick", .. })
        ));
        assert!(matches!(
            check("up{a=\"{{{alert.labels.a}}}\"}", typed),
            Err(PromqlError::Form { .. })
        ));
        assert!(matches!(
            check("up{a=\"{{#if alert.labels.a}}x{{/if}}\"}", typed),
            Err(PromqlError::Form { .. })
        ));
        // A comment ends at a line break, which a value could hold.
        assert!(matches!(check("up # {{alert.labels.a}}", typed), Err(PromqlError::Bare { .. })));
    }

    /// Found by the template property test: an escape before a multi-byte
    /// character left the scan inside it.
    #[test]
    fn multi_byte_text_never_stops_the_scan() {
        assert_eq!(slots("🌀\\{{"), []);
        assert!(matches!(check("\"é\\🌀\"{{alert.labels.a}}", typed), Err(PromqlError::Bare { .. })));
        assert_eq!(check("up{a=\"🌀\\é{{alert.labels.a}}\"}", typed), Ok(()));
    }

    #[test]
    fn substitute_fills_every_template() {
        assert_eq!(
            substitute("rate(x{a=\"1\"}[{{window}}]) / rate(x[{{ window }}])", |p| format!("<{p}>")),
            "rate(x{a=\"1\"}[<window>]) / rate(x[<window>])"
        );
    }

    #[test]
    fn escaping_keeps_a_value_inside_its_string() {
        assert_eq!(escape("x\"} or vector(1) or up{job=\"y"), r#"x\"} or vector(1) or up{job=\"y"#);
        assert_eq!(escape("a\\b\nc"), r"a\\b\nc");
    }
}
