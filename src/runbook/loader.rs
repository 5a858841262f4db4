//! Reading YAML files: runbooks, plugin manifests and the config. Every YAML
//! call of pitcrew lives here, so a change of YAML library stays local.
//!
//! serde_yaml_ng reports positions only for its own errors; for problems found
//! later (bad regex, unknown action) we index every node's position with a
//! second, event-level pass (yaml-rust2) and look the path up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

use crate::diag::Diagnostic;

/// Positions of the nodes of one YAML document, by path
/// (`steps[1].with.namespace`); the root is `""`.
#[derive(Debug, Default, Clone)]
pub struct Positions {
    map: HashMap<String, (usize, usize)>,
    keys: HashMap<String, (usize, usize)>,
}

impl Positions {
    /// The value's position at `path`, or the nearest enclosing node's.
    pub fn at(&self, path: &str) -> (usize, usize) {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.map.get(&p) {
                return *pos;
            }
            match p.rfind(['.', '[']) {
                Some(i) => p.truncate(i),
                None => return self.map.get("").copied().unwrap_or((1, 1)),
            }
        }
    }

    /// The position of the key naming `path` (for unknown or duplicate keys).
    pub fn key(&self, path: &str) -> (usize, usize) {
        self.keys.get(path).copied().unwrap_or_else(|| self.at(path))
    }
}

enum Frame {
    Map {
        path: String,
        next_is_key: bool,
        key: Option<String>,
        first: bool,
    },
    Seq {
        path: String,
        index: usize,
    },
}

struct Indexer<'t> {
    lines: Vec<&'t str>,
    docs: Vec<Positions>,
    stack: Vec<Frame>,
}

fn join(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

impl Indexer<'_> {
    /// yaml-rust2's marks for keys and mapping starts point at various places
    /// around the `:`; values are marked where they begin. So a key is found
    /// by looking back from its value for `key:` in the text.
    fn find_key(&self, key: &str, value: (usize, usize)) -> Option<(usize, usize)> {
        let (line, col) = value;
        for l in (line.saturating_sub(3).max(1)..=line).rev() {
            let text = self.lines.get(l - 1)?;
            let limit = if l == line {
                text.char_indices().nth(col.saturating_sub(1)).map(|(i, _)| i).unwrap_or(text.len())
            } else {
                text.len()
            };
            let hay = &text[..limit];
            for quote in ["", "\"", "'"] {
                let needle = format!("{quote}{key}{quote}:");
                if let Some(i) = hay.rfind(&needle) {
                    return Some((l, hay[..i].chars().count() + 1));
                }
            }
        }
        None
    }

    /// The path of the node that starts now; advances the parent's state.
    fn child_path(&mut self, mark: Marker, scalar: Option<&str>) -> Option<String> {
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map {
                path,
                next_is_key,
                key,
                first,
            }) => {
                let was_first = std::mem::replace(first, false);
                if *next_is_key {
                    *first = was_first;
                    *next_is_key = false;
                    *key = Some(scalar.unwrap_or("?").to_string());
                    None
                } else {
                    *next_is_key = true;
                    let k = key.clone().unwrap_or_else(|| "?".into());
                    let full = join(path, &k);
                    let parent = path.clone();
                    if let Some(key_pos) = self.find_key(&k, pos)
                        && let Some(doc) = self.docs.last_mut()
                    {
                        doc.keys.insert(full.clone(), key_pos);
                        // A mapping's own mark is unreliable; it starts at its first key.
                        if was_first {
                            doc.map.insert(parent, key_pos);
                        }
                    }
                    Some(full)
                }
            }
            Some(Frame::Seq { path, index }) => {
                let p = format!("{path}[{index}]");
                *index += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Indexer<'_> {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let pos = (mark.line(), mark.col() + 1);
        match ev {
            Event::DocumentStart => self.docs.push(Positions::default()),
            Event::Scalar(ref value, ..) => {
                if let Some(path) = self.child_path(mark, Some(value))
                    && let Some(doc) = self.docs.last_mut()
                {
                    doc.map.insert(path, pos);
                }
            }
            Event::Alias(_) => {
                if let Some(path) = self.child_path(mark, None)
                    && let Some(doc) = self.docs.last_mut()
                {
                    doc.map.insert(path, pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let is_map = matches!(ev, Event::MappingStart(..));
                let path = self.child_path(mark, None).unwrap_or_default();
                if let Some(doc) = self.docs.last_mut() {
                    doc.map.insert(path.clone(), pos);
                }
                self.stack.push(if is_map {
                    Frame::Map {
                        path,
                        next_is_key: true,
                        key: None,
                        first: true,
                    }
                } else {
                    Frame::Seq { path, index: 0 }
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

/// Positions for every document of `text` (empty on a syntax error: serde's
/// own error has the position then).
pub fn index_positions(text: &str) -> Vec<Positions> {
    let mut indexer = Indexer {
        lines: text.lines().collect(),
        docs: Vec::new(),
        stack: Vec::new(),
    };
    let mut parser = Parser::new_from_str(text);
    if parser.load(&mut indexer, true).is_err() {
        return Vec::new();
    }
    indexer.docs
}

/// One parsed document.
pub struct Doc<T> {
    pub value: T,
    pub positions: Positions,
    /// SHA-256 of the document's own text (for `config.loaded`).
    pub source: String,
}

/// Deserializes every document of a file. Serde errors become diagnostics
/// with their position; parsing goes on with the next document.
pub fn parse_docs<T: DeserializeOwned>(file: &Path, text: &str) -> Vec<Result<Doc<T>, Diagnostic>> {
    with_positions(file, text, deserialize_docs(text), index_positions(text))
}

/// [`parse_docs`] for many files, read in order: the position index of
/// every file is built on another thread while this one deserializes them
/// (the two passes are each about a third of loading runbooks).
pub fn parse_files<T: DeserializeOwned>(files: &[(PathBuf, String)]) -> Vec<Vec<Result<Doc<T>, Diagnostic>>> {
    std::thread::scope(|scope| {
        let indexing = scope.spawn(|| files.iter().map(|(_, text)| index_positions(text)).collect::<Vec<_>>());
        let values: Vec<_> = files.iter().map(|(_, text)| deserialize_docs::<T>(text)).collect();
        let positions = indexing.join().expect("indexing positions does not panic");
        files
            .iter()
            .zip(values)
            .zip(positions)
            .map(|(((file, text), values), positions)| with_positions(file, text, values, positions))
            .collect()
    })
}

/// Each document of `text`, deserialized; stops after an error without a
/// location, or when an error repeats itself (after some scanner errors the
/// document iterator yields the same error forever), and never takes more
/// documents than the text has lines (each needs at least one).
fn deserialize_docs<T: DeserializeOwned>(text: &str) -> Vec<Result<T, serde_yaml::Error>> {
    let most = text.lines().count() + 1;
    let mut out = Vec::new();
    let mut last_error_at = None;
    for document in serde_yaml::Deserializer::from_str(text).take(most) {
        let result = T::deserialize(document);
        let Err(e) = &result else {
            out.push(result);
            continue;
        };
        let at = e.location().map(|l| l.index());
        if at.is_some() && at == last_error_at {
            break;
        }
        last_error_at = at;
        out.push(result);
        if at.is_none() {
            break;
        }
    }
    out
}

/// Documents with their positions and sources; errors become diagnostics,
/// and none is taken after one without a place to go on from (no location,
/// or a text the index could not read).
fn with_positions<T>(
    file: &Path,
    text: &str,
    values: Vec<Result<T, serde_yaml::Error>>,
    positions: Vec<Positions>,
) -> Vec<Result<Doc<T>, Diagnostic>> {
    let sources = split_documents(text);
    let mut out = Vec::new();
    for (index, result) in values.into_iter().enumerate() {
        let pos = positions.get(index).cloned().unwrap_or_default();
        match result {
            Ok(value) => out.push(Ok(Doc {
                value,
                positions: pos,
                source: sources.get(index).cloned().unwrap_or_default(),
            })),
            Err(e) => {
                out.push(Err(serde_diagnostic(file, &e, &pos)));
                if e.location().is_none() || positions.is_empty() {
                    break;
                }
            }
        }
    }
    out
}

/// Parses a single-document file (config, plugin manifest).
pub fn parse_one<T: DeserializeOwned>(file: &Path, text: &str) -> Result<Doc<T>, Diagnostic> {
    match parse_docs::<T>(file, text).into_iter().next() {
        Some(doc) => doc,
        None => Err(Diagnostic::new(file, (1, 1), "file is empty")),
    }
}

/// Any YAML (or JSON) text as a JSON value, for alert files.
pub fn yaml_value(text: &str) -> Option<serde_json::Value> {
    serde_yaml::from_str(text).ok()
}

fn serde_diagnostic(file: &Path, e: &serde_yaml::Error, positions: &Positions) -> Diagnostic {
    let raw = e.to_string();
    // serde_yaml puts " at line L column C" into its messages; we print the
    // position first, once.
    let message = position_suffix().replace_all(&raw, "").into_owned();
    let (message, hint) = explain_serde(&message);
    let pos = e.location().map(|l| (l.line(), l.column())).unwrap_or_else(|| positions.at(""));
    Diagnostic::new(file, pos, message).hint(hint)
}

fn position_suffix() -> &'static regex::Regex {
    static RE: std::sync::OnceLock<regex::Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| regex::Regex::new(r"\s*at line \d+ column \d+").expect("constant regex"))
}

/// Turns serde's "unknown field `x`, expected one of `a`, `b`" into our
/// message plus a hint with the nearest valid key.
fn explain_serde(message: &str) -> (String, Option<String>) {
    let Some(rest) = message.split("unknown field `").nth(1) else {
        return (message.to_string(), None);
    };
    let field = rest.split('`').next().unwrap_or_default();
    let prefix = message.split("unknown field").next().unwrap_or_default();
    let valid: Vec<&str> = rest.split('`').skip(2).step_by(2).filter(|s| !s.is_empty()).collect();
    let nearest = valid
        .iter()
        .map(|v| (strsim::jaro_winkler(v, field), *v))
        .filter(|(s, _)| *s > 0.75)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, v)| v);
    let hint = match nearest {
        Some(n) => format!("did you mean `{n}`? valid keys: {}", valid.join(", ")),
        None => format!("valid keys: {}", valid.join(", ")),
    };
    (format!("{prefix}unknown key `{field}`"), Some(hint))
}

/// The text of each `---`-separated document, for digests.
fn split_documents(text: &str) -> Vec<String> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line.starts_with("---") && line[3..].trim().is_empty() {
            if !docs.last().is_some_and(|d| d.trim().is_empty()) {
                docs.push(String::new());
            }
            continue;
        }
        let doc = docs.last_mut().expect("never empty");
        doc.push_str(line);
        doc.push('\n');
    }
    docs.retain(|d| !d.trim().is_empty() || docs_len_one(text));
    docs
}

fn docs_len_one(text: &str) -> bool {
    !text.contains("\n---")
}

/// `*.yaml` / `*.yml` files under the given files or folders, sorted.
pub fn yaml_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut out = Vec::new();
    for path in paths {
        if path.is_dir() {
            collect(path, &mut out).map_err(|e| Diagnostic::new(path, (1, 1), format!("cannot read folder: {e}")))?;
        } else if path.exists() {
            out.push(path.clone());
        } else {
            return Err(Diagnostic::new(path, (1, 1), "no such file or folder"));
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect(&path, out)?;
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Found by the property test: an anchor, then a block scalar indicator
    /// at the end of the text, made the document iterator repeat its error
    /// forever and `validate` hang.
    #[test]
    fn a_scanner_error_ends_parsing_instead_of_repeating() {
        let docs = parse_docs::<serde_json::Value>(Path::new("rb.yaml"), "&%\u{1e936}\u{81d}=\u{d4c}\u{e82}|");
        assert_eq!(docs.len(), 1);
        assert!(docs[0].is_err());
    }

    #[test]
    fn positions_index_nested_paths() {
        let text = "name: x\nsteps:\n  - name: a\n    with:\n      ns: shop\n  - name: b\n---\nname: y\n";
        let docs = index_positions(text);
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].at("steps[0].with.ns"), (5, 11));
        assert_eq!(docs[0].at("steps[1].name"), (6, 11));
        assert_eq!(docs[0].key("steps[1].name"), (6, 5));
        assert_eq!(docs[0].at("steps[1].nope"), (6, 5));
        assert_eq!(docs[1].at("name"), (8, 7));
        assert_eq!(docs[0].key("steps[0].with.ns"), (5, 7));
    }

    #[test]
    fn unknown_keys_get_a_hint() {
        #[derive(serde::Deserialize, Debug)]
        #[serde(deny_unknown_fields)]
        #[allow(dead_code)]
        struct T {
            name: String,
            description: Option<String>,
        }
        let docs = parse_docs::<T>(Path::new("f.yaml"), "name: x\ndescriptoin: y\n");
        let err = docs.into_iter().next().unwrap().err().unwrap();
        assert_eq!((err.line, err.column), (2, 1));
        assert_eq!(err.message, "unknown key `descriptoin`");
        assert!(err.hint.unwrap().contains("did you mean `description`"));
    }
}
