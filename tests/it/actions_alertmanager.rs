//! `alertmanager.silence` / `alertmanager.unsilence` against a real
//! Alertmanager.

use std::time::Duration;

use serde_json::{Value, json};

use pitcrew::action::{ActionError, DryRun};
use pitcrew::alert::Alert;

use crate::realparts::{Alertmanager, Harness, closed_port};

fn harness(am: &Alertmanager) -> Harness {
    Harness::new(&format!("alertmanager: {{url: \"{}\"}}\n", am.url()))
}

fn disk_full() -> Alert {
    Alert::firing("DiskFull")
        .label_set("instance", "db-1")
        .label_set("severity", "critical")
}

fn matchers(silence: &Value) -> Vec<Value> {
    let mut m = silence["matchers"].as_array().unwrap().clone();
    m.sort_by_key(|v| v["name"].as_str().unwrap().to_string());
    m
}

/// Alertmanager marks alerts as silenced when asked: poll until it agrees.
async fn silenced_by(am: &Alertmanager, alertname: &str) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let alerts = am.alerts().await;
        let ids: Vec<String> = alerts
            .iter()
            .filter(|a| a["labels"]["alertname"] == alertname)
            .flat_map(|a| a["status"]["silencedBy"].as_array().cloned().unwrap_or_default())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        if !ids.is_empty() || tokio::time::Instant::now() > deadline {
            return ids;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn silence_the_alert_then_expire_it() {
    let am = Alertmanager::start(Alertmanager::MINIMAL).await;
    am.post_alert(&[("alertname", "DiskFull"), ("instance", "db-1"), ("severity", "critical")])
        .await;
    let h = harness(&am).alert(disk_full());

    let out = h.run("alertmanager.silence", json!({"duration": "30m"})).await.unwrap();
    let id = out["silence_id"].as_str().unwrap().to_string();
    assert_eq!(out["reused"], false);

    let silence = am.silence(&id).await;
    assert_eq!(silence["status"]["state"], "active");
    assert_eq!(silence["createdBy"], "pitcrew");
    assert_eq!(silence["comment"], format!("pitcrew execution {}", h.execution_id));
    assert_eq!(
        matchers(&silence),
        vec![
            json!({"name": "alertname", "value": "DiskFull", "isRegex": false, "isEqual": true}),
            json!({"name": "instance", "value": "db-1", "isRegex": false, "isEqual": true}),
            json!({"name": "severity", "value": "critical", "isRegex": false, "isEqual": true}),
        ]
    );
    let ends: chrono::DateTime<chrono::Utc> = serde_json::from_value(silence["endsAt"].clone()).unwrap();
    let left = ends - chrono::Utc::now();
    assert!(
        left > chrono::Duration::minutes(29) && left <= chrono::Duration::minutes(30),
        "{left}"
    );
    assert_eq!(silenced_by(&am, "DiskFull").await, vec![id.clone()]);

    // A re-run (retry, or recovery after a crash) finds the same silence.
    let again = h.run("alertmanager.silence", json!({"duration": "30m"})).await.unwrap();
    assert_eq!(again["silence_id"], id.as_str());
    assert_eq!(again["reused"], true);
    assert_eq!(am.silences().await.len(), 1);

    let out = h.run("alertmanager.unsilence", json!({"silence_id": id})).await.unwrap();
    assert_eq!(out, json!({"silence_id": id, "expired": true, "already_expired": false}));
    assert_eq!(am.silence(&id).await["status"]["state"], "expired");

    // Expiring it again is fine: the step is idempotent.
    let out = h.run("alertmanager.unsilence", json!({"silence_id": id})).await.unwrap();
    assert_eq!(out["already_expired"], true);

    // An expired silence is not reused: a new run silences anew.
    let fresh = h.run("alertmanager.silence", json!({"duration": "30m"})).await.unwrap();
    assert_ne!(fresh["silence_id"], id.as_str());
}

#[tokio::test]
async fn given_matchers_map_to_regex_and_negation() {
    let am = Alertmanager::start(Alertmanager::MINIMAL).await;
    let h = harness(&am);
    let out = h
        .run(
            "alertmanager.silence",
            json!({
                "duration": "1h",
                "matchers": ["alertname=\"KubePodCrashLooping\"", "severity=~\"warning|critical\"", "namespace!=\"kube-system\"", "pod!~\"canary-.*\""],
                "comment": "restarting checkout",
            }),
        )
        .await
        .unwrap();
    let silence = am.silence(out["silence_id"].as_str().unwrap()).await;
    assert_eq!(silence["comment"], "restarting checkout");
    assert_eq!(
        matchers(&silence),
        vec![
            json!({"name": "alertname", "value": "KubePodCrashLooping", "isRegex": false, "isEqual": true}),
            json!({"name": "namespace", "value": "kube-system", "isRegex": false, "isEqual": false}),
            json!({"name": "pod", "value": "canary-.*", "isRegex": true, "isEqual": false}),
            json!({"name": "severity", "value": "warning|critical", "isRegex": true, "isEqual": true}),
        ]
    );
}

#[tokio::test]
async fn refusals_and_failures_are_clear() {
    let am = Alertmanager::start(Alertmanager::MINIMAL).await;
    let h = harness(&am);

    // No alert (a manual run) and no matchers: nothing to silence.
    let err = h.run("alertmanager.silence", json!({"duration": "30m"})).await.unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "matchers"), "{err:?}");
    let err = h
        .run("alertmanager.silence", json!({"duration": "30m", "matchers": ["not a matcher"]}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "matchers"), "{err:?}");
    let err = h
        .run("alertmanager.silence", json!({"duration": "0s", "matchers": ["a=\"b\""]}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "duration"), "{err:?}");
    // Alertmanager's own validation comes back as the reason.
    let err = h
        .run("alertmanager.silence", json!({"duration": "30m", "matchers": ["a=~\".*\""]}))
        .await
        .unwrap_err();
    let ActionError::Failed(msg) = &err else { panic!("{err:?}") };
    assert!(msg.starts_with("alertmanager refused the silence (400)"), "{msg}");
    assert!(am.silences().await.is_empty());

    let err = h
        .run(
            "alertmanager.unsilence",
            json!({"silence_id": "00000000-0000-0000-0000-000000000000"}),
        )
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "alertmanager has no silence 00000000-0000-0000-0000-000000000000");
    let err = h
        .run("alertmanager.unsilence", json!({"silence_id": "../../api/v2/alerts"}))
        .await
        .unwrap_err();
    assert!(matches!(&err, ActionError::Input { field, .. } if field == "silence_id"), "{err:?}");

    let unconfigured = Harness::new("").alert(disk_full());
    let err = unconfigured
        .run("alertmanager.silence", json!({"duration": "30m"}))
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "unavailable: no alertmanager.url in config");

    let down = Harness::new(&format!("alertmanager: {{url: \"http://127.0.0.1:{}\"}}\n", closed_port())).alert(disk_full());
    let err = down.run("alertmanager.silence", json!({"duration": "30m"})).await.unwrap_err();
    assert!(
        matches!(&err, ActionError::Unavailable(m) if m.contains("alertmanager is unreachable")),
        "{err:?}"
    );
}

#[tokio::test]
async fn silences_are_writes_and_skip_dry_runs() {
    let h = Harness::new("");
    for name in ["alertmanager.silence", "alertmanager.unsilence"] {
        let action = h.registry.get(name).unwrap();
        assert_eq!(action.dry_run(&json!({})), DryRun::Skip, "{name}");
    }
}
