//! Matching alerts to runbook triggers: Alertmanager matcher syntax and an
//! index by alertname so that matching does not scan every runbook.
//!
//! Pure: no IO, no clock.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock};

use regex::Regex;

use crate::alert::{Alert, AlertStatus};

/// A matcher string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MatcherError {
    /// Not `name OP value`.
    #[error("invalid matcher {0:?}: expected name=\"value\" with one of =, !=, =~, !~")]
    Syntax(String),
    /// The label name is not a valid Prometheus label name.
    #[error("invalid label name {0:?} in matcher")]
    LabelName(String),
    /// The regular expression does not compile.
    #[error("invalid regex in matcher {matcher:?}: {reason}")]
    Regex { matcher: String, reason: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchOp {
    Equal,
    NotEqual,
    Regex,
    NotRegex,
}

impl MatchOp {
    pub fn as_str(self) -> &'static str {
        match self {
            MatchOp::Equal => "=",
            MatchOp::NotEqual => "!=",
            MatchOp::Regex => "=~",
            MatchOp::NotRegex => "!~",
        }
    }
}

/// One label matcher, with its regex compiled and anchored as Alertmanager
/// anchors it (`^(?:re)$`).
#[derive(Debug, Clone)]
pub struct Matcher {
    pub name: String,
    pub op: MatchOp,
    pub value: String,
    regex: Option<Pattern>,
}

impl Matcher {
    /// Parses `name="value"`, `name=~"re"`, `name!=value` and so on.
    pub fn parse(text: &str) -> Result<Matcher, MatcherError> {
        let (name, op, value) = Matcher::split(text)?;
        Matcher::new(text, name, op, value)
    }

    /// The parts of a matcher, its value unquoted and not yet compiled: a
    /// value may still be a template to render (`inhibit_while_firing`).
    pub fn split(text: &str) -> Result<(String, MatchOp, String), MatcherError> {
        let syntax = || MatcherError::Syntax(text.to_string());
        let t = text.trim();
        let name_len = t.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).ok_or_else(syntax)?;
        let name = &t[..name_len];
        if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
            return Err(MatcherError::LabelName(name.to_string()));
        }
        let rest = t[name_len..].trim_start();
        let (op, rest) = [
            ("=~", MatchOp::Regex),
            ("!~", MatchOp::NotRegex),
            ("!=", MatchOp::NotEqual),
            ("=", MatchOp::Equal),
        ]
        .iter()
        .find_map(|(s, op)| rest.strip_prefix(s).map(|r| (*op, r.trim())))
        .ok_or_else(syntax)?;
        let value = unquote(rest).ok_or_else(syntax)?;
        Ok((name.to_string(), op, value))
    }

    /// A matcher from its parts (`text` names it in errors).
    pub fn new(text: &str, name: String, op: MatchOp, value: String) -> Result<Matcher, MatcherError> {
        let regex = match op {
            MatchOp::Regex | MatchOp::NotRegex => Some(anchored(&value).map_err(|e| MatcherError::Regex {
                matcher: text.to_string(),
                reason: e.to_string().lines().last().unwrap_or_default().trim().to_string(),
            })?),
            _ => None,
        };
        Ok(Matcher { name, op, value, regex })
    }

    /// [`Matcher::matches`] over a label set (a stored alert's).
    pub fn matches_labels(&self, labels: &std::collections::BTreeMap<String, String>) -> bool {
        let v = labels.get(&self.name).map(String::as_str).unwrap_or("");
        self.matches_value(v)
    }

    /// Alertmanager semantics: an absent label is the empty string.
    pub fn matches(&self, alert: &Alert) -> bool {
        self.matches_value(alert.label(&self.name))
    }

    fn matches_value(&self, v: &str) -> bool {
        match (self.op, &self.regex) {
            (MatchOp::Equal, _) => v == self.value,
            (MatchOp::NotEqual, _) => v != self.value,
            // A pattern that cannot be built matches nothing either way:
            // `!~` must not start to match every alert.
            (MatchOp::Regex, Some(re)) => re.regex().is_some_and(|re| re.is_match(v)),
            (MatchOp::NotRegex, Some(re)) => re.regex().is_some_and(|re| !re.is_match(v)),
            (_, None) => false,
        }
    }
}

impl PartialEq for Matcher {
    fn eq(&self, other: &Matcher) -> bool {
        // The regex is made from the value.
        self.name == other.name && self.op == other.op && self.value == other.value
    }
}

impl fmt::Display for Matcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{:?}", self.name, self.op.as_str(), self.value)
    }
}

/// Checks `^(?:re)$`, sharing one [`Pattern`] per pattern. Runbooks
/// repeat the same few patterns (`severity=~"warning|critical"`) thousands of
/// times; a `Regex` is large and warms its own caches, so sharing keeps
/// 10,000 runbooks small and their matching fast.
fn anchored(pattern: &str) -> Result<Pattern, PatternError> {
    shared_regex(&format!("^(?:{pattern})$"))
}

/// One [`Pattern`] per distinct pattern, for the whole process, up to
/// [`REGEX_CACHE_MAX`] patterns: past that the cache starts over, so runbook
/// sets loaded one after another cannot grow it forever (patterns already
/// handed out live on with the runbooks that hold them).
pub fn shared_regex(pattern: &str) -> Result<Pattern, PatternError> {
    let cache = regex_cache();
    if let Some(re) = cache.lock().expect("regex cache lock").get(pattern) {
        return Ok(re.clone());
    }
    let re = Pattern::new(pattern)?;
    let mut cache = cache.lock().expect("regex cache lock");
    if cache.len() >= REGEX_CACHE_MAX {
        cache.clear();
    }
    cache.insert(pattern.to_string(), re.clone());
    Ok(re)
}

/// A regular expression whose syntax is checked when it is read and which
/// is compiled when first used. Compiling is most of the cost of loading
/// runbooks (each `Regex` builds forward and reverse automata, ~0.1 ms even
/// for `.+`), and most patterns of a large set never meet an alert that
/// gets that far.
///
/// Parsing finds every syntax error `Regex::new` would. The one error left
/// to compiling is a program over the size limit, which only counted
/// repetition (`\w{500}`) or a very long pattern can reach: those are
/// compiled at once, so that error too is the loader's, never a first
/// match's.
#[derive(Clone)]
pub struct Pattern(Arc<LazyRegex>);

struct LazyRegex {
    source: String,
    compiled: OnceLock<Option<Regex>>,
}

/// A pattern that is not a valid regular expression.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PatternError(String);

/// Longer patterns are compiled when read (see [`Pattern`]).
const LAZY_MAX_LEN: usize = 1024;

impl Pattern {
    pub fn new(source: &str) -> Result<Pattern, PatternError> {
        // The regex crate's defaults (Unicode, UTF-8 only, nesting limit), so
        // what parses here is what `Regex::new` accepts.
        let hir = regex_syntax::Parser::new().parse(source).map_err(|e| PatternError(e.to_string()))?;
        let pattern = Pattern(Arc::new(LazyRegex {
            source: source.to_string(),
            compiled: OnceLock::new(),
        }));
        if source.len() > LAZY_MAX_LEN || has_counted_repetition(&hir) {
            let re = Regex::new(source).map_err(|e| PatternError(e.to_string()))?;
            let _ = pattern.0.compiled.set(Some(re));
        }
        Ok(pattern)
    }

    /// The compiled regex; `None` only if it cannot be built, which
    /// [`Pattern::new`] has ruled out (logged if it happens anyway).
    pub fn regex(&self) -> Option<&Regex> {
        self.0
            .compiled
            .get_or_init(|| {
                Regex::new(&self.0.source)
                    .map_err(
                        |e| tracing::error!(pattern = %self.0.source, error = %e, "a checked pattern does not compile; it matches nothing"),
                    )
                    .ok()
            })
            .as_ref()
    }

    /// Whether `haystack` matches (never, if the pattern cannot be built).
    pub fn is_match(&self, haystack: &str) -> bool {
        self.regex().is_some_and(|re| re.is_match(haystack))
    }

    pub fn as_str(&self) -> &str {
        &self.0.source
    }
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pattern").field(&self.0.source).finish()
    }
}

/// `x{n}`, `x{n,m}`, `x{n,}` with a count above one: the repetitions that
/// copy their sub-program, so the only way to a program over the size limit.
fn has_counted_repetition(hir: &regex_syntax::hir::Hir) -> bool {
    use regex_syntax::hir::HirKind;
    match hir.kind() {
        HirKind::Repetition(r) => r.min > 1 || r.max.is_some_and(|m| m > 1) || has_counted_repetition(&r.sub),
        HirKind::Capture(c) => has_counted_repetition(&c.sub),
        HirKind::Concat(subs) | HirKind::Alternation(subs) => subs.iter().any(has_counted_repetition),
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) | HirKind::Look(_) => false,
    }
}

fn regex_cache() -> &'static Mutex<HashMap<String, Pattern>> {
    static CACHE: OnceLock<Mutex<HashMap<String, Pattern>>> = OnceLock::new();
    CACHE.get_or_init(Default::default)
}

/// Distinct patterns shared at most (runbooks repeat a few; 10,000 runbooks
/// of the benchmark use far fewer).
pub const REGEX_CACHE_MAX: usize = 4096;

fn unquote(s: &str) -> Option<String> {
    let Some(inner) = s.strip_prefix('"') else {
        // Unquoted values run to the end; a stray quote means a typo.
        return (!s.contains('"')).then(|| s.to_string());
    };
    let inner = inner.strip_suffix('"')?;
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next()? {
                'n' => out.push('\n'),
                't' => out.push('\t'),
                other => out.push(other),
            },
            '"' => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

/// Which alert status a trigger reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFilter {
    Firing,
    Resolved,
    Any,
}

impl StatusFilter {
    pub fn accepts(self, status: AlertStatus) -> bool {
        match self {
            StatusFilter::Any => true,
            StatusFilter::Firing => status == AlertStatus::Firing,
            StatusFilter::Resolved => status == AlertStatus::Resolved,
        }
    }
}

/// A runbook's trigger.
#[derive(Debug, Clone)]
pub struct Trigger {
    /// Exact alert names; empty = any name (the matchers decide).
    pub alertnames: Vec<String>,
    pub matchers: Vec<Matcher>,
    pub status: StatusFilter,
}

impl Trigger {
    pub fn matches(&self, alert: &Alert) -> bool {
        self.status.accepts(alert.status)
            && (self.alertnames.is_empty() || self.alertnames.iter().any(|n| n == alert.name()))
            && self.matchers.iter().all(|m| m.matches(alert))
    }
}

/// Triggers indexed by alertname. Values are caller-chosen ids (runbook
/// positions), returned in ascending order.
#[derive(Debug, Default)]
pub struct MatchIndex {
    by_name: HashMap<String, Vec<usize>>,
    any_name: Vec<usize>,
}

impl MatchIndex {
    pub fn new<'a>(triggers: impl IntoIterator<Item = (usize, &'a Trigger)>) -> MatchIndex {
        let mut index = MatchIndex::default();
        for (id, trigger) in triggers {
            if trigger.alertnames.is_empty() {
                index.any_name.push(id);
            }
            for name in &trigger.alertnames {
                index.by_name.entry(name.clone()).or_default().push(id);
            }
        }
        index
    }

    /// Ids whose trigger might match an alert of this name (still to be
    /// checked with `Trigger::matches`).
    pub fn candidates(&self, alertname: &str) -> impl Iterator<Item = usize> + '_ {
        let named = self.by_name.get(alertname).map(Vec::as_slice).unwrap_or(&[]);
        named.iter().chain(self.any_name.iter()).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(matcher: &str, value: Option<&str>, expected: bool) {
        let m = Matcher::parse(matcher).unwrap();
        let mut a = Alert::firing("X");
        if let Some(v) = value {
            a = a.label_set("l", v);
        }
        assert_eq!(m.matches(&a), expected, "{matcher} against {value:?}");
    }

    #[test]
    fn operators_follow_alertmanager() {
        check("l=\"a\"", Some("a"), true);
        check("l=a", Some("a"), true);
        check("l=\"a\"", Some("ab"), false);
        check("l!=\"a\"", Some("b"), true);
        check("l!=\"a\"", None, true);
        check("l=\"\"", None, true);
        check("l=~\"warn|crit\"", Some("crit"), true);
        // Anchored: a partial match does not count.
        check("l=~\"warn\"", Some("warning"), false);
        check("l=~\"a|b\"", Some("ab"), false);
        check("l!~\"kube-.*\"", Some("kube-system"), false);
        check("l!~\"kube-.*\"", Some("shop"), true);
        check("l=\"with \\\"quote\\\"\"", Some("with \"quote\""), true);
    }

    #[test]
    fn bad_matchers_say_why() {
        assert!(matches!(Matcher::parse("l=~\"(\""), Err(MatcherError::Regex { .. })));
        // The shared cache stays bounded however many patterns pass through.
        for i in 0..REGEX_CACHE_MAX + 10 {
            shared_regex(&format!("p{i}")).unwrap();
        }
        assert!(shared_regex("p0").unwrap().is_match("p0"));
        assert!(regex_cache().lock().unwrap().len() <= REGEX_CACHE_MAX);
        assert!(matches!(Matcher::parse("l~\"a\""), Err(MatcherError::Syntax(_))));
        assert!(matches!(Matcher::parse("=a"), Err(MatcherError::LabelName(_))));
        assert!(matches!(Matcher::parse("l=\"a"), Err(MatcherError::Syntax(_))));
    }

    #[test]
    fn patterns_are_checked_when_read_and_compiled_when_first_used() {
        // Every error `Regex::new` gives comes from `Pattern::new`, in its words.
        for bad in ["(", "a{2,1}", r"\p{NoSuchClass}", r"\w{100}{100}{100}", "[z-a]"] {
            let ours = Pattern::new(bad).map(|_| ()).expect_err(bad).to_string();
            let theirs = Regex::new(bad).map(|_| ()).expect_err(bad).to_string();
            assert_eq!(ours, theirs, "{bad}");
        }
        let lazy = Pattern::new(".+").unwrap();
        assert!(lazy.0.compiled.get().is_none(), "compiled before any use");
        assert!(lazy.is_match("x") && !lazy.is_match(""));
        assert!(lazy.0.compiled.get().is_some());
        // Counted repetition can exceed the size limit: compiled at once.
        assert!(Pattern::new("[a-z]{2,8}").unwrap().0.compiled.get().is_some());
        // Clones share one compiled regex.
        let shared = shared_regex("^(?:shared|once)$").unwrap();
        assert!(shared_regex("^(?:shared|once)$").unwrap().is_match("once"));
        assert!(shared.0.compiled.get().is_some());
    }

    #[test]
    fn a_pattern_that_cannot_be_built_matches_nothing_either_way() {
        let broken = Pattern(Arc::new(LazyRegex {
            source: "(".into(),
            compiled: OnceLock::new(),
        }));
        for op in [MatchOp::Regex, MatchOp::NotRegex] {
            let m = Matcher {
                name: "l".into(),
                op,
                value: "(".into(),
                regex: Some(broken.clone()),
            };
            assert!(!m.matches(&Alert::firing("X").label_set("l", "shop")), "{op:?}");
        }
        assert!(!broken.is_match("("));
    }

    #[test]
    fn index_returns_named_and_wildcard_candidates() {
        let t1 = Trigger {
            alertnames: vec!["A".into()],
            matchers: vec![],
            status: StatusFilter::Firing,
        };
        let t2 = Trigger {
            alertnames: vec![],
            matchers: vec![Matcher::parse("team=x").unwrap()],
            status: StatusFilter::Any,
        };
        let index = MatchIndex::new([(0, &t1), (1, &t2)]);
        assert_eq!(index.candidates("A").collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(index.candidates("B").collect::<Vec<_>>(), vec![1]);
    }
}
