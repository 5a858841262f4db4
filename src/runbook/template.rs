//! Templates: Handlebars in strict mode, no HTML escaping, compiled once at
//! load time.
//!
//! A value that is exactly one expression (`"{{params.replicas}}"`) keeps the
//! type of what it names; anything else renders to a string. Rendering yields
//! JSON values one field at a time; nothing rendered is ever parsed again as
//! code or shell text.

use std::collections::{BTreeMap, HashMap};

use handlebars::template::{HelperTemplate, Parameter, Template, TemplateElement};
use handlebars::{Context, Handlebars, RenderErrorReason};
use serde_json::Value;

/// A template could not be compiled or rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// Handlebars syntax error.
    #[error("template syntax: {0}")]
    Syntax(String),
    /// A variable whose root is not part of the context here.
    #[error("unknown template variable `{var}`: available here are {allowed}")]
    UnknownRoot { var: String, allowed: String },
    /// A helper that does not exist.
    #[error("unknown template helper `{0}`")]
    UnknownHelper(String),
    /// Rendering referred to something absent from the context.
    #[error("missing template variable `{0}`")]
    Missing(String),
    /// Any other render failure.
    #[error("template render: {0}")]
    Render(String),
    /// A template in a PromQL query stands where its value could rewrite
    /// the query.
    #[error(transparent)]
    Promql(#[from] crate::promql::PromqlError),
    /// A templated URL path segment rendered to something that would change
    /// which path is called: `..` climbs, `.` and empty vanish when the URL
    /// is normalised (percent-encoded or not).
    #[error("URL path segment {index} renders to {value:?}; a templated segment must not be empty, `.` or `..`")]
    UrlSegment { index: usize, value: String },
}

impl TemplateError {
    pub fn kind(&self) -> &'static str {
        match self {
            TemplateError::Syntax(_) => "template_syntax",
            TemplateError::UnknownRoot { .. } => "template_unknown_variable",
            TemplateError::UnknownHelper(_) => "template_unknown_helper",
            TemplateError::Missing(_) => "template_missing_variable",
            TemplateError::Render(_) => "template_render",
            TemplateError::Promql(_) => "template_promql",
            TemplateError::UrlSegment { .. } => "template_url_segment",
        }
    }
}

/// A compiled value: literal, one typed path, text to render, or a structure.
#[derive(Debug, Clone)]
pub enum Tpl {
    Literal(Value),
    /// Exactly one `{{a.b.c}}`: resolves to the named value with its type.
    Path {
        segments: Vec<String>,
        source: String,
    },
    /// Mixed text and expressions: renders to a string.
    Text {
        id: String,
        source: String,
    },
    List(Vec<Tpl>),
    Map(BTreeMap<String, Tpl>),
}

impl Tpl {
    pub fn is_literal(&self) -> bool {
        match self {
            Tpl::Literal(_) => true,
            Tpl::Path { .. } | Tpl::Text { .. } => false,
            Tpl::List(items) => items.iter().all(Tpl::is_literal),
            Tpl::Map(map) => map.values().all(Tpl::is_literal),
        }
    }

    /// Whether the rendered value starts with template output rather than
    /// text the runbook wrote (`{{x}}`, `{{x}}-y`; not `--ns={{x}}`).
    pub fn starts_with_template(&self) -> bool {
        match self {
            Tpl::Path { .. } => true,
            Tpl::Text { source, .. } => source.starts_with("{{"),
            Tpl::Literal(_) | Tpl::List(_) | Tpl::Map(_) => false,
        }
    }

    /// The literal value, when the whole value has no expression in it.
    pub fn literal(&self) -> Option<Value> {
        match self {
            Tpl::Literal(v) => Some(v.clone()),
            Tpl::List(items) => items.iter().map(Tpl::literal).collect::<Option<Vec<_>>>().map(Value::Array),
            Tpl::Map(map) => map
                .iter()
                .map(|(k, v)| v.literal().map(|v| (k.clone(), v)))
                .collect::<Option<serde_json::Map<_, _>>>()
                .map(Value::Object),
            _ => None,
        }
    }
}

/// Everything but `-`, `_`, `~` and alphanumerics is encoded in a segment —
/// `.` too, so that a value of `..` cannot climb the path.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'~');

const HELPERS: &[&str] = &[
    "if", "unless", "each", "with", "lookup", "log", "eq", "ne", "gt", "gte", "lt", "lte", "and", "or", "not", "len",
];

/// All compiled templates of a runbook set, in one Handlebars registry.
pub struct Templates {
    hb: Handlebars<'static>,
    /// URL templates: every expression's output is percent-encoded as one
    /// path segment, so a label value cannot add segments or a query.
    hb_url: Handlebars<'static>,
    /// PromQL queries: every expression's output is escaped as the content
    /// of a double-quoted string (compile checks it stands in one, or is a
    /// typed number or duration, where escaping changes nothing).
    hb_promql: Handlebars<'static>,
    next_id: usize,
    /// The paths each template compiled since the last
    /// [`Templates::take_references`] refers to, by source: the loader
    /// checks them right after compiling, and parsing a template again is
    /// a large part of loading runbooks.
    referenced: HashMap<String, Vec<String>>,
}

impl std::fmt::Debug for Templates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Templates({})", self.next_id)
    }
}

impl Default for Templates {
    fn default() -> Self {
        let mut hb = Handlebars::new();
        hb.set_strict_mode(true);
        hb.register_escape_fn(handlebars::no_escape);
        let mut hb_url = Handlebars::new();
        hb_url.set_strict_mode(true);
        hb_url.register_escape_fn(|s| percent_encoding::utf8_percent_encode(s, SEGMENT).to_string());
        let mut hb_promql = Handlebars::new();
        hb_promql.set_strict_mode(true);
        hb_promql.register_escape_fn(crate::promql::escape);
        Templates {
            hb,
            hb_url,
            hb_promql,
            next_id: 0,
            referenced: HashMap::new(),
        }
    }
}

impl Templates {
    /// Compiles a YAML/JSON value; strings may hold templates.
    pub fn compile_value(&mut self, value: &Value, roots: &[&str]) -> Result<Tpl, TemplateError> {
        Ok(match value {
            Value::String(s) => self.compile_str(s, roots)?,
            Value::Array(items) => Tpl::List(items.iter().map(|v| self.compile_value(v, roots)).collect::<Result<_, _>>()?),
            Value::Object(map) => Tpl::Map(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), self.compile_value(v, roots)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
            other => Tpl::Literal(other.clone()),
        })
    }

    /// Compiles one string. `roots` are the context names it may use.
    pub fn compile_str(&mut self, source: &str, roots: &[&str]) -> Result<Tpl, TemplateError> {
        if !source.contains("{{") {
            return Ok(Tpl::Literal(Value::String(source.to_string())));
        }
        let template = Template::compile(source).map_err(|e| syntax_error(&e))?;
        self.check(source, &template, roots)?;
        if let Some(segments) = single_path(source) {
            return Ok(Tpl::Path {
                segments,
                source: source.to_string(),
            });
        }
        let id = format!("t{}", self.next_id);
        self.next_id += 1;
        self.hb.register_template(&id, template);
        Ok(Tpl::Text {
            id,
            source: source.to_string(),
        })
    }

    /// Compiles a URL: scheme and host must be literal, so a label can never
    /// choose where a request goes; templated
    /// values are percent-encoded path segments.
    pub fn compile_url(&mut self, source: &str, roots: &[&str]) -> Result<Tpl, TemplateError> {
        let Some(first) = source.find("{{") else {
            return Ok(Tpl::Literal(Value::String(source.to_string())));
        };
        let prefix = &source[..first];
        let authority_end = prefix
            .strip_prefix("https://")
            .or_else(|| prefix.strip_prefix("http://"))
            .and_then(|rest| rest.find('/'))
            .filter(|&i| i > 0);
        if authority_end.is_none() {
            return Err(TemplateError::Syntax(
                "the scheme and host of a URL must be literal; put templated values in the path, `query`, headers or body".into(),
            ));
        }
        if source.find('?').is_some_and(|q| q < source.rfind("}}").unwrap_or(0)) {
            return Err(TemplateError::Syntax(
                "templated query strings are not allowed in `url`; use `query`".into(),
            ));
        }
        let template = Template::compile(source).map_err(|e| syntax_error(&e))?;
        self.check(source, &template, roots)?;
        url_path_templated(source)?;
        if has_unescaped(&template.elements) {
            return Err(TemplateError::Syntax(
                "`{{{ }}}` in a URL would skip percent-encoding; use `{{ }}`".into(),
            ));
        }
        let id = format!("u{}", self.next_id);
        self.next_id += 1;
        self.hb_url.register_template(&id, template);
        Ok(Tpl::Text {
            id,
            source: source.to_string(),
        })
    }

    /// Compiles a PromQL query. Templates must stand inside double-quoted
    /// strings, where their values are escaped, unless `typed` names them
    /// (full paths like `params.minutes`: integer and duration params).
    pub fn compile_promql(&mut self, source: &str, roots: &[&str], typed: &[String]) -> Result<Tpl, TemplateError> {
        if !source.contains("{{") {
            return Ok(Tpl::Literal(Value::String(source.to_string())));
        }
        let template = Template::compile(source).map_err(|e| syntax_error(&e))?;
        self.check(source, &template, roots)?;
        crate::promql::check(source, |path| typed.iter().any(|t| t == path))?;
        let id = format!("p{}", self.next_id);
        self.next_id += 1;
        self.hb_promql.register_template(&id, template);
        Ok(Tpl::Text {
            id,
            source: source.to_string(),
        })
    }

    /// Checks a parsed template's paths against `roots`, keeping what it
    /// refers to for [`Templates::take_references`].
    fn check(&mut self, source: &str, template: &Template, roots: &[&str]) -> Result<(), TemplateError> {
        let mut found = Vec::new();
        check_elements(&template.elements, roots, true, &mut found)?;
        self.referenced.insert(source.to_string(), found);
        Ok(())
    }

    /// What a template compiled with `roots` refers to, as [`references`]
    /// finds it, without parsing it again when it was just compiled.
    pub fn take_references(&mut self, source: &str, roots: &[&str]) -> Vec<Vec<String>> {
        if !source.contains("{{") {
            return Vec::new();
        }
        match self.referenced.remove(source) {
            Some(found) => found.iter().map(|raw| split_path(raw)).collect(),
            None => references(source, roots),
        }
    }

    /// Forgets references nobody took (a loaded set keeps no such state).
    pub fn forget_references(&mut self) {
        self.referenced = HashMap::new();
    }

    /// Renders a compiled value against a context.
    pub fn render(&self, tpl: &Tpl, ctx: &Context) -> Result<Value, TemplateError> {
        Ok(match tpl {
            Tpl::Literal(v) => v.clone(),
            Tpl::Path { segments, source } => lookup(ctx.data(), segments)
                .cloned()
                .ok_or_else(|| TemplateError::Missing(path_name(source)))?,
            Tpl::Text { id, source } => {
                let text = self.render_text(id, ctx)?;
                if is_url(id) {
                    check_url_segments(source, &text)?;
                }
                Value::String(text)
            }
            Tpl::List(items) => Value::Array(items.iter().map(|t| self.render(t, ctx)).collect::<Result<_, _>>()?),
            Tpl::Map(map) => Value::Object(
                map.iter()
                    .map(|(k, t)| Ok((k.clone(), self.render(t, ctx)?)))
                    .collect::<Result<_, TemplateError>>()?,
            ),
        })
    }

    /// Renders to text: a typed path value is shown as JSON would show it,
    /// strings without quotes.
    pub fn render_string(&self, tpl: &Tpl, ctx: &Context) -> Result<String, TemplateError> {
        Ok(value_text(&self.render(tpl, ctx)?))
    }

    fn render_text(&self, id: &str, ctx: &Context) -> Result<String, TemplateError> {
        let hb = match id.as_bytes().first() {
            Some(b'u') => &self.hb_url,
            Some(b'p') => &self.hb_promql,
            _ => &self.hb,
        };
        hb.render_with_context(id, ctx).map_err(|e| match e.reason() {
            RenderErrorReason::MissingVariable(Some(var)) => TemplateError::Missing(var.clone()),
            other => TemplateError::Render(other.to_string()),
        })
    }
}

fn is_url(id: &str) -> bool {
    id.starts_with('u')
}

/// Where the path of `url` starts (its first `/` after `scheme://host`) and
/// ends (`?`, `#` or the end). The caller made sure scheme and host are
/// literal, so source and rendered URL agree on the start.
fn path_range(url: &str) -> std::ops::Range<usize> {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let start = url[after_scheme..].find('/').map_or(url.len(), |i| after_scheme + i);
    let end = url[start..].find(['?', '#']).map_or(url.len(), |i| start + i);
    start..end
}

/// For each path segment of a URL template, whether a template is in it.
///
/// Literal `/` inside a `{{#block}}` is refused: it would make the number of
/// segments depend on data, and the segment check after rendering relies on
/// source and result having the same segments. Expression output cannot add
/// one, since it is percent-encoded.
fn url_path_templated(source: &str) -> Result<Vec<bool>, TemplateError> {
    let after_scheme = source.find("://").map_or(0, |i| i + 3);
    let Some(start) = source[after_scheme..].find('/').map(|i| after_scheme + i) else {
        return Ok(Vec::new());
    };
    let path = &source[start + 1..];
    let mut segments = vec![false];
    let mut depth = 0usize;
    let mut rest = path;
    while let Some(c) = rest.chars().next() {
        if let Some(inner) = rest.strip_prefix("{{") {
            let close = inner.find("}}").map_or(inner.len(), |i| i + 2);
            match inner.trim_start_matches('{').trim_start().chars().next() {
                Some('#' | '^') => depth += 1,
                Some('/') => depth = depth.saturating_sub(1),
                _ => {}
            }
            *segments.last_mut().expect("starts with one") = true;
            rest = inner[close..].trim_start_matches('}');
            continue;
        }
        match c {
            '?' | '#' => break,
            '/' if depth > 0 => {
                return Err(TemplateError::Syntax(
                    "a `/` inside a `{{#…}}` block of a URL would make the path depend on data; put the block inside one segment".into(),
                ));
            }
            '/' => segments.push(false),
            _ => {}
        }
        rest = &rest[c.len_utf8()..];
    }
    Ok(segments)
}

/// Refuses a rendered URL whose templated path segments are empty, `.` or
/// `..` once percent-decoded: URL parsers resolve `%2E%2E` like `..`, so
/// encoding alone would let a label value move the request to another path.
fn check_url_segments(source: &str, rendered: &str) -> Result<(), TemplateError> {
    let templated = url_path_templated(source)?;
    let path = &rendered[path_range(rendered)];
    let segments: Vec<&str> = path.strip_prefix('/').map(|p| p.split('/').collect()).unwrap_or_default();
    if segments.len() != templated.len() {
        return Err(TemplateError::Render(format!(
            "the URL rendered to {} path segments where the runbook has {}",
            segments.len(),
            templated.len()
        )));
    }
    for (i, (segment, _)) in segments.iter().zip(&templated).enumerate().filter(|(_, (_, t))| **t) {
        let decoded = percent_encoding::percent_decode_str(segment).decode_utf8_lossy();
        if matches!(decoded.as_ref(), "" | "." | "..") {
            return Err(TemplateError::UrlSegment {
                index: i + 1,
                value: decoded.into_owned(),
            });
        }
    }
    Ok(())
}

/// The context paths a template source names from its roots, each split
/// into segments (`alert.labels.[a.b/c]` → `alert`, `labels`, `a.b/c`);
/// paths inside `each`/`with` are relative to the item and not listed.
/// Empty for a source that does not compile (its compile error says why).
pub fn references(source: &str, roots: &[&str]) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    match Template::compile(source) {
        Ok(t) if check_elements(&t.elements, roots, true, &mut found).is_ok() => found.iter().map(|raw| split_path(raw)).collect(),
        _ => Vec::new(),
    }
}

/// A Handlebars path's segments: `.` and `/` separate, `[…]` quotes.
fn split_path(raw: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        if let Some(quoted) = rest.strip_prefix('[') {
            let end = quoted.find(']').unwrap_or(quoted.len());
            out.push(quoted[..end].to_string());
            rest = quoted.get(end + 1..).unwrap_or("");
        } else {
            let end = rest.find(['.', '/', '[']).unwrap_or(rest.len());
            if end > 0 {
                out.push(rest[..end].to_string());
            }
            rest = &rest[end..];
        }
        rest = rest.strip_prefix(['.', '/']).unwrap_or(rest);
    }
    out
}

/// A value as text: strings bare, null empty, everything else as JSON.
pub fn value_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `when` is false for "", whitespace, false, 0, no, null.
pub fn truthy(rendered: &str) -> bool {
    let t = rendered.trim();
    !(t.is_empty() || ["false", "0", "no", "null"].iter().any(|f| t.eq_ignore_ascii_case(f)))
}

/// Handlebars lists every token it expected; say what to check instead.
fn syntax_error(e: &handlebars::TemplateError) -> TemplateError {
    let at = match e.pos() {
        Some((l, c)) if l > 1 => format!(" at line {l}, column {c} of the template"),
        Some((_, c)) => format!(" at column {c} of the template"),
        None => String::new(),
    };
    let reason = e.reason().to_string();
    let reason = if reason.contains("invalid handlebars syntax") {
        "invalid Handlebars syntax (every `{{` needs its `}}`, every `{{#block}}` its `{{/block}}`)".to_string()
    } else {
        reason.lines().next().unwrap_or_default().to_string()
    };
    TemplateError::Syntax(format!("{reason}{at}"))
}

fn path_name(source: &str) -> String {
    source.trim().trim_start_matches("{{").trim_end_matches("}}").trim().to_string()
}

fn lookup<'a>(mut v: &'a Value, segments: &[String]) -> Option<&'a Value> {
    for seg in segments {
        v = match v {
            Value::Object(map) => map.get(seg)?,
            Value::Array(items) => items.get(seg.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    Some(v)
}

/// `{{ a.b.[c-d] }}` and nothing else → its segments.
fn single_path(source: &str) -> Option<Vec<String>> {
    let inner = source.strip_prefix("{{")?.strip_suffix("}}")?.trim();
    if inner.contains("{{") || inner.contains("}}") || inner.is_empty() {
        return None;
    }
    let mut segments = Vec::new();
    let mut rest = inner;
    loop {
        if let Some(after) = rest.strip_prefix('[') {
            let end = after.find(']')?;
            segments.push(after[..end].to_string());
            rest = &after[end + 1..];
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let seg = &rest[..end];
            if seg.is_empty() || !seg.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return None;
            }
            segments.push(seg.to_string());
            rest = &rest[end..];
        }
        if rest.is_empty() {
            break;
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
        if rest.is_empty() {
            return None;
        }
    }
    if matches!(segments[0].as_str(), "this" | "true" | "false" | "null" | "else") {
        return None;
    }
    Some(segments)
}

fn check_elements(elements: &[TemplateElement], roots: &[&str], check_paths: bool, found: &mut Vec<String>) -> Result<(), TemplateError> {
    for element in elements {
        match element {
            TemplateElement::Expression(h) | TemplateElement::HtmlExpression(h) | TemplateElement::HelperBlock(h) => {
                check_helper(h, roots, check_paths, found)?
            }
            TemplateElement::RawString(_) | TemplateElement::Comment(_) => {}
            _ => return Err(TemplateError::Syntax("partials and decorators are not supported".into())),
        }
    }
    Ok(())
}

/// Whether any `{{{ }}}` (escaping off) appears, blocks included.
fn has_unescaped(elements: &[TemplateElement]) -> bool {
    elements.iter().any(|e| match e {
        TemplateElement::HtmlExpression(_) => true,
        TemplateElement::Expression(h) | TemplateElement::HelperBlock(h) => {
            h.template.as_ref().is_some_and(|t| has_unescaped(&t.elements))
                || h.inverse.as_ref().is_some_and(|t| has_unescaped(&t.elements))
        }
        _ => false,
    })
}

fn check_helper(h: &HelperTemplate, roots: &[&str], check_paths: bool, found: &mut Vec<String>) -> Result<(), TemplateError> {
    let is_call = h.block || !h.params.is_empty() || !h.hash.is_empty();
    if is_call {
        let name = h.name.as_name().unwrap_or_default();
        if !HELPERS.contains(&name) {
            return Err(TemplateError::UnknownHelper(name.to_string()));
        }
    } else {
        check_param(&h.name, roots, check_paths, found)?;
    }
    for p in h.params.iter().chain(h.hash.values()) {
        check_param(p, roots, check_paths, found)?;
    }
    // Inside `each`/`with` the context is the item: its paths are relative.
    let inner_checks = check_paths && !matches!(h.name.as_name(), Some("each" | "with"));
    if let Some(t) = &h.template {
        check_elements(&t.elements, roots, inner_checks, found)?;
    }
    if let Some(t) = &h.inverse {
        check_elements(&t.elements, roots, inner_checks, found)?;
    }
    Ok(())
}

fn check_param(p: &Parameter, roots: &[&str], check_paths: bool, found: &mut Vec<String>) -> Result<(), TemplateError> {
    let raw = match p {
        Parameter::Name(n) => n.as_str(),
        Parameter::Path(handlebars::Path::Relative((_, raw))) => raw.as_str(),
        Parameter::Subexpression(sub) => {
            return check_elements(std::slice::from_ref(&sub.element), roots, check_paths, found);
        }
        // Local paths (`@index`), literals and anything newer: nothing to check.
        _ => return Ok(()),
    };
    if !check_paths || raw.starts_with("this") || raw.starts_with("../") || raw.starts_with('@') {
        return Ok(());
    }
    let root = raw.split(['.', '[', '/']).next().unwrap_or(raw);
    if roots.contains(&root) {
        found.push(raw.to_string());
        Ok(())
    } else {
        Err(TemplateError::UnknownRoot {
            var: raw.to_string(),
            allowed: roots.iter().map(|r| format!("`{r}`")).collect::<Vec<_>>().join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const ROOTS: &[&str] = &["alert", "params"];

    fn render(src: &str, ctx: Value) -> Result<Value, TemplateError> {
        let mut t = Templates::default();
        let tpl = t.compile_str(src, ROOTS)?;
        t.render(&tpl, &Context::wraps(ctx).unwrap())
    }

    #[test]
    fn single_expression_keeps_its_type() {
        assert_eq!(render("{{params.replicas}}", json!({"params": {"replicas": 3}})).unwrap(), json!(3));
        assert_eq!(
            render("n={{params.replicas}}", json!({"params": {"replicas": 3}})).unwrap(),
            json!("n=3")
        );
        assert_eq!(
            render(
                "{{alert.labels.[app.kubernetes.io/name]}}",
                json!({"alert": {"labels": {"app.kubernetes.io/name": "web"}}})
            )
            .unwrap(),
            json!("web")
        );
    }

    #[test]
    fn missing_variable_is_an_error_naming_it() {
        let err = render("{{alert.labels.nope}}", json!({"alert": {"labels": {}}})).unwrap_err();
        assert_eq!(err, TemplateError::Missing("alert.labels.nope".into()));
        let err = render("x {{alert.labels.nope}}", json!({"alert": {"labels": {}}})).unwrap_err();
        assert!(matches!(err, TemplateError::Missing(ref v) if v.contains("nope")), "{err:?}");
    }

    #[test]
    fn hostile_values_stay_data() {
        let evil = "{{7*7}} $(rm -rf /); `id` <b>&amp; ../..\nnext";
        let out = render("v={{alert.labels.x}}", json!({"alert": {"labels": {"x": evil}}})).unwrap();
        assert_eq!(out, json!(format!("v={evil}")));
    }

    #[test]
    fn unknown_roots_and_helpers_are_refused_at_compile_time() {
        let mut t = Templates::default();
        assert!(matches!(
            t.compile_str("{{secrets.x}}", ROOTS),
            Err(TemplateError::UnknownRoot { .. })
        ));
        assert!(matches!(
            t.compile_str("{{shell alert.x}}", ROOTS),
            Err(TemplateError::UnknownHelper(_))
        ));
        assert!(matches!(t.compile_str("{{#if alert.x}}", ROOTS), Err(TemplateError::Syntax(_))));
        assert!(t.compile_str("{{#each alert.labels}}{{@key}}={{this}} {{/each}}", ROOTS).is_ok());
        assert!(t.compile_str("{{#if (eq alert.status \"firing\")}}y{{/if}}", ROOTS).is_ok());
    }

    #[test]
    fn url_templates_keep_host_literal_and_encode_segments() {
        let mut t = Templates::default();
        assert!(t.compile_url("https://{{alert.labels.host}}/x", ROOTS).is_err());
        assert!(t.compile_url("https://api.example{{alert.labels.x}}/", ROOTS).is_err());
        assert!(t.compile_url("https://api.example/x?q={{alert.labels.x}}", ROOTS).is_err());
        assert!(
            t.compile_url("https://api.example/pools/{{{alert.labels.pool}}}/resize", ROOTS)
                .is_err()
        );
        assert!(
            t.compile_url(
                "https://api.example/p/{{#if alert.labels.pool}}{{{alert.labels.pool}}}{{/if}}",
                ROOTS
            )
            .is_err()
        );
        let tpl = t
            .compile_url("https://api.example/pools/{{alert.labels.pool}}/resize", ROOTS)
            .unwrap();
        let ctx = Context::wraps(json!({"alert": {"labels": {"pool": "../../admin?x=1#"}}})).unwrap();
        assert_eq!(
            t.render(&tpl, &ctx).unwrap(),
            json!("https://api.example/pools/%2E%2E%2F%2E%2E%2Fadmin%3Fx%3D1%23/resize")
        );
    }

    #[test]
    fn templated_url_segments_must_not_be_dot_segments_or_empty() {
        let mut t = Templates::default();
        let tpl = t
            .compile_url("https://api.example/v1/pools/{{alert.labels.a}}{{alert.labels.b}}/resize/", ROOTS)
            .unwrap();
        let render = |a: &str, b: &str| {
            let ctx = Context::wraps(json!({"alert": {"labels": {"a": a, "b": b}}})).unwrap();
            t.render(&tpl, &ctx)
        };
        for (a, b, shown) in [("..", "", ".."), (".", "", "."), ("", "", ""), (".", ".", "..")] {
            assert_eq!(
                render(a, b).unwrap_err(),
                TemplateError::UrlSegment {
                    index: 3,
                    value: shown.into()
                },
                "{a:?} {b:?}"
            );
        }
        // Only the templated segment is judged: the literal trailing empty
        // segment stays, and values that merely contain dots pass.
        assert_eq!(render("...", "").unwrap(), json!("https://api.example/v1/pools/%2E%2E%2E/resize/"));
        assert_eq!(
            render("../x", "").unwrap(),
            json!("https://api.example/v1/pools/%2E%2E%2Fx/resize/")
        );
        assert!(matches!(
            t.compile_url("https://api.example/{{#if alert.labels.a}}a/b{{/if}}/c", ROOTS),
            Err(TemplateError::Syntax(_))
        ));
        assert!(t.compile_url("https://api.example/{{#if alert.labels.a}}a{{/if}}/c", ROOTS).is_ok());
    }

    #[test]
    fn references_list_the_absolute_paths_split_into_segments() {
        let refs = references(
            "{{#if (eq alert.status \"firing\")}}{{alert.labels.[app.kubernetes.io/name]}}{{/if}}{{#each params.list}}{{this.x}}{{/each}} {{steps.a.output.b}}",
            &["alert", "params", "steps"],
        );
        let expected: Vec<Vec<&str>> = vec![
            vec!["alert", "status"],
            vec!["alert", "labels", "app.kubernetes.io/name"],
            vec!["params", "list"],
            vec!["steps", "a", "output", "b"],
        ];
        assert_eq!(refs, expected);
        assert!(references("{{#if x}}", &["alert"]).is_empty());
    }

    #[test]
    fn truthiness_follows_the_spec() {
        for f in ["", "  ", "false", "FALSE", "0", "no", "Null"] {
            assert!(!truthy(f), "{f:?}");
        }
        for t in ["true", "1", "yes", "x"] {
            assert!(truthy(t), "{t:?}");
        }
    }
}
