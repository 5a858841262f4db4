//! Output formats for listings: aligned tables for people, JSON for scripts.
//! Text meant for a terminal, a CSV file or Markdown goes through [`visible`];
//! JSON needs nothing, its encoding escapes control characters already.

use std::borrow::Cow;

use clap::ValueEnum;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum Output {
    #[default]
    Table,
    Json,
}

/// Alert data as text a person reads: control characters (C0, DEL, C1 —
/// an ANSI escape could recolour or rewrite the terminal, a line break fake a
/// row) and bidirectional overrides (which reorder what is shown) are written
/// as visible escapes (`\x1b`, `\u{9b}`, `\u{202e}`); `\` becomes `\\` so
/// that an escape shown is never text that merely looks like one.
pub fn visible(s: &str) -> Cow<'_, str> {
    let hidden = |c: char| c.is_control() || c == '\\' || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(hidden) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x80 && hidden(c) => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if hidden(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// JSON text as a person reads it: JSON escapes C0 controls itself, but
/// not DEL, C1 or bidirectional overrides; those are written as `\uXXXX`,
/// which keeps the text valid JSON that decodes to the same value.
pub fn visible_json(json: &str) -> Cow<'_, str> {
    let hidden = |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !json.chars().any(hidden) {
        return Cow::Borrowed(json);
    }
    Cow::Owned(
        json.chars()
            .map(|c| if hidden(c) { format!("\\u{:04x}", c as u32) } else { c.to_string() })
            .collect(),
    )
}

/// One CSV cell: visible, quoted when needed, and a cell a spreadsheet
/// would run as a formula (`=`, `+`, `-`, `@`) starts with `'` instead.
pub fn csv_cell(s: &str) -> String {
    csv_quote(visible(s))
}

/// A CSV cell holding JSON: [`visible_json`], so that it still parses.
pub fn csv_json_cell(json: &str) -> String {
    csv_quote(visible_json(json))
}

fn csv_quote(s: Cow<'_, str>) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        Cow::Owned(format!("'{s}"))
    } else {
        s
    };
    if s.contains([',', '"']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.into_owned()
    }
}

/// Prints rows as columns separated by two spaces; the last column is not
/// padded. Cells are shown [`visible`].
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<Cow<'_, str>>> = rows.iter().map(|r| r.iter().map(|c| visible(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let last = cells.len().saturating_sub(1);
        for (i, cell) in cells.iter().enumerate() {
            out.push_str(cell);
            if i < last {
                out.push_str(&" ".repeat(widths[i] - cell.chars().count() + 2));
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(|c| c.as_ref()).collect(), &mut out);
    }
    out
}

/// At most `max` characters of `s`; a cut one ends with `…` (counted), so
/// that a shortened cell never reads as the whole value.
pub fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        return s.to_string();
    }
    let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
    out.push('…');
    out
}

/// Floats as people read them: at most 4 decimals, so that `30d × 0.1%`
/// shows as `43.2`, not `43.20000000000004`. Integers are left alone.
pub fn round_floats(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Number(n) if !n.is_i64() && !n.is_u64() => {
            if let Some(rounded) = n.as_f64().map(|f| (f * 1e4).round() / 1e4).and_then(serde_json::Number::from_f64) {
                *n = rounded;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(round_floats),
        Value::Object(map) => map.values_mut().for_each(round_floats),
        _ => {}
    }
}

pub fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).expect("serialisable values serialise") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_escaped() {
        assert_eq!(visible("web-1"), "web-1");
        assert_eq!(
            visible("\x1b[31mred\x1b[0m \u{9b}2J a\nb\tc\r \u{7f} \u{202e}evil \\x1b"),
            "\\x1b[31mred\\x1b[0m \\u{9b}2J a\\nb\\tc\\r \\x7f \\u{202e}evil \\\\x1b"
        );
        assert_eq!(visible("é ü 日本"), "é ü 日本");
    }

    #[test]
    fn csv_cells_cannot_be_formulas_or_split_rows() {
        assert_eq!(csv_cell("=HYPERLINK(\"x\")"), "\"'=HYPERLINK(\"\"x\"\")\"");
        for f in ["+1", "-1", "@SUM(A1)"] {
            assert_eq!(csv_cell(f), format!("'{f}"));
        }
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("a\nb"), "a\\nb");
        assert_eq!(csv_cell("plain"), "plain");
    }

    #[test]
    fn json_stays_json_when_shown() {
        let v = serde_json::json!({"t": "a\u{9b}b\x1b\u{202e}"});
        let shown = visible_json(&v.to_string()).into_owned();
        assert_eq!(shown, r#"{"t":"a\u009bb\u001b\u202e"}"#);
        assert_eq!(serde_json::from_str::<serde_json::Value>(&shown).unwrap(), v);
    }

    #[test]
    fn cut_cells_say_so() {
        assert_eq!(cut("abcdef", 6), "abcdef");
        assert_eq!(cut("abcdefg", 6), "abcde…");
        assert_eq!(cut("日本語の文字", 3), "日本…");
    }

    #[test]
    fn floats_are_rounded_for_display_and_integers_kept() {
        let mut v = serde_json::json!({"a": 43.20000000000004, "b": [0.123456789, 7], "c": u64::MAX, "d": 1e-9});
        round_floats(&mut v);
        assert_eq!(v, serde_json::json!({"a": 43.2, "b": [0.1235, 7], "c": u64::MAX, "d": 0.0}));
    }

    #[test]
    fn tables_align_on_what_is_shown() {
        let out = table(&["A", "B"], &[vec!["\x1b".into(), "x".into()], vec!["ab".into(), "y".into()]]);
        assert_eq!(out, "A     B\n\\x1b  x\nab    y\n");
    }
}
