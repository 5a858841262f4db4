//! Property tests: arbitrary input never panics a parser, and a rendered
//! value never leaves the slot it is rendered into (argv element, URL path
//! segment, PromQL string, JSON field).

use handlebars::Context;
use proptest::prelude::*;
use serde_json::{Value, json};

use pitcrew::runbook::template::{TemplateError, Templates};

const ROOTS: &[&str] = &["alert", "params"];

fn config() -> ProptestConfig {
    ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Text a parser might meet: anything, or anything built from the
/// characters that matter to it.
fn text(specials: &'static str) -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), proptest::string::string_regex(specials).unwrap()]
}

fn ctx(x: &str) -> Context {
    Context::wraps(json!({"alert": {"labels": {"x": x}}, "params": {"n": 3}})).unwrap()
}

/// PromQL string content back to the value: the inverse of the escape.
fn promql_unescape(content: &str) -> Option<String> {
    let mut out = String::new();
    let mut chars = content.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => match chars.next()? {
                '\\' => out.push('\\'),
                '"' => out.push('"'),
                'n' => out.push('\n'),
                _ => return None,
            },
            c => out.push(c),
        }
    }
    Some(out)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn the_webhook_parser_never_panics(body in text(r#"[{}\[\]":,0-9a-zA-Z\\ .-]{0,200}"#)) {
        let now = chrono::Utc::now();
        let _ = pitcrew::alert::parse_webhook(body.as_bytes(), now);
        let _ = pitcrew::alert::parse_alert_file(&body, now);
    }

    #[test]
    fn the_webhook_parser_never_panics_on_valid_json_with_odd_values(
        status in text("[a-z]{0,10}"), name in any::<String>(), value in any::<String>(), starts in text("[0-9T:Z.+-]{0,30}"),
    ) {
        let body = json!({"version": "4", "status": status, "alerts": [{"status": status, "labels": {"alertname": name, "x": value},
            "annotations": {value.clone(): name}, "startsAt": starts, "endsAt": starts, "fingerprint": value}]});
        let _ = pitcrew::alert::parse_webhook(body.to_string().as_bytes(), chrono::Utc::now());
    }

    #[test]
    fn the_runbook_loader_never_panics(yaml in text(r#"(apiVersion: pitcrew/v1\n|name: [a-z-]{0,5}\n|steps:\n|  - |\{\{[a-z.]{0,8}\}\}|[a-z_:\[\]{}"'|>&*!%@#, -]{0,12}\n?){0,12}"#)) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rb.yaml"), &yaml).unwrap();
        let _ = pitcrew::runbook::compile::load(&pitcrew::config::Config::default(), &[dir.path().to_path_buf()]);
    }

    #[test]
    fn the_matcher_parser_never_panics(m in text(r#"[a-z_]{0,4}(=|!=|=~|!~|==|~)?"?[a-z.*\\|()\[\]"]{0,10}"?"#)) {
        if let Ok(matcher) = pitcrew::matcher::Matcher::parse(&m) {
            let _ = matcher.matches(&pitcrew::alert::Alert::firing("X").label_set("a", "b"));
        }
    }

    #[test]
    fn the_template_renderer_never_panics(src in text(r#"([a-z .]{0,4}|\{\{|\}\}|\{\{\{|#if|#each|/if|/each|else|alert\.labels\.x|params\.n|this|@key|\(|\)|"){0,10}"#), x in any::<String>()) {
        let mut t = Templates::default();
        if let Ok(tpl) = t.compile_str(&src, ROOTS) {
            let _ = t.render(&tpl, &ctx(&x));
        }
        if let Ok(tpl) = t.compile_url(&format!("https://h.example/{src}"), ROOTS) {
            let _ = t.render(&tpl, &ctx(&x));
        }
        if let Ok(tpl) = t.compile_promql(&src, ROOTS, &["params.n".to_string()]) {
            let _ = t.render(&tpl, &ctx(&x));
        }
    }

    #[test]
    fn the_duration_and_rate_parsers_never_panic(s in text("[0-9]{0,22}(ms|s|m|h|d|w|y|x)?([0-9]{0,6}(ms|s|m|h|d|w|y))?(/[0-9]{0,12}[a-z]{0,2})?")) {
        if let Ok(d) = s.parse::<pitcrew::units::Duration>() {
            prop_assert!(d <= pitcrew::units::Duration::MAX);
            let _ = chrono::DateTime::<chrono::Utc>::UNIX_EPOCH.checked_add_signed(d.chrono()).unwrap();
            prop_assert_eq!(d.to_string().parse::<pitcrew::units::Duration>().unwrap(), d);
        }
        if let Ok(r) = s.parse::<pitcrew::units::Rate>() {
            prop_assert!(r.per <= pitcrew::units::Duration::MAX);
        }
    }

    #[test]
    fn a_value_rendered_into_an_argv_element_stays_one_element(x in any::<String>()) {
        let mut t = Templates::default();
        let tpl = t.compile_value(&json!(["/bin/echo", "--", "{{alert.labels.x}}", "a{{alert.labels.x}}b"]), ROOTS).unwrap();
        let argv = t.render(&tpl, &ctx(&x)).unwrap();
        prop_assert_eq!(argv, json!(["/bin/echo", "--", x.clone(), format!("a{x}b")]));
    }

    #[test]
    fn a_value_rendered_into_a_url_segment_stays_one_segment(x in text("[./%a-z?#&=;+ -]{0,6}")) {
        let mut t = Templates::default();
        let tpl = t.compile_url("https://h.example/v1/pools/{{alert.labels.x}}/resize", ROOTS).unwrap();
        match t.render(&tpl, &ctx(&x)) {
            Err(TemplateError::UrlSegment { value, .. }) => {
                prop_assert!(matches!(x.as_str(), "" | "." | ".."), "refused {:?}", x);
                prop_assert_eq!(value, x);
            }
            Err(other) => prop_assert!(false, "unexpected error {other}"),
            Ok(rendered) => {
                prop_assert!(!matches!(x.as_str(), "" | "." | ".."), "accepted {:?}", x);
                let url = reqwest::Url::parse(rendered.as_str().unwrap()).unwrap();
                prop_assert_eq!(url.host_str(), Some("h.example"));
                prop_assert_eq!(url.query(), None);
                prop_assert_eq!(url.fragment(), None);
                let segments: Vec<&str> = url.path_segments().unwrap().collect();
                prop_assert_eq!(segments.len(), 4, "{}", url);
                prop_assert_eq!(&segments[..2], &["v1", "pools"]);
                prop_assert_eq!(segments[3], "resize");
                let decoded = percent_encoding::percent_decode_str(segments[2]).decode_utf8().unwrap();
                prop_assert_eq!(decoded.as_ref(), x.as_str());
            }
        }
    }

    #[test]
    fn a_value_rendered_into_a_promql_string_stays_string_content(x in text(r#"[a-z"\\\n{}()=~ ]{0,12}"#)) {
        let mut t = Templates::default();
        let (before, after) = (r#"sum(up{job=""#, r#"",le="0.5"}[5m]) or vector(0)"#);
        let tpl = t.compile_promql(&format!("{before}{{{{alert.labels.x}}}}{after}"), ROOTS, &[]).unwrap();
        let rendered = t.render(&tpl, &ctx(&x)).unwrap();
        let query = rendered.as_str().unwrap();
        let content = query.strip_prefix(before).and_then(|q| q.strip_suffix(after));
        prop_assert!(content.is_some(), "query around the string changed: {query}");
        prop_assert_eq!(promql_unescape(content.unwrap()), Some(x));
    }

    #[test]
    fn a_value_rendered_into_a_json_field_round_trips(x in any::<String>()) {
        let mut t = Templates::default();
        let tpl = t.compile_value(&json!({"body": {"pool": "{{alert.labels.x}}", "note": "pool {{alert.labels.x}}"}}), ROOTS).unwrap();
        let rendered = t.render(&tpl, &ctx(&x)).unwrap();
        let back: Value = serde_json::from_str(&serde_json::to_string(&rendered).unwrap()).unwrap();
        prop_assert_eq!(&back["body"]["pool"], &json!(x));
        prop_assert_eq!(&back["body"]["note"], &json!(format!("pool {x}")));
        prop_assert_eq!(back, rendered);
    }
}
