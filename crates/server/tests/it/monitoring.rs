//! The shipped monitoring (deploy/monitoring, deploy/kubernetes) against the
//! server as it is: every metric the alert rules and the dashboard use
//! exists in the exposition, the Prometheus Operator's rules are the same as
//! the plain rules file, and the dashboard has what Grafana needs to import
//! it. (`promtool check rules` and `promtool test rules` run in
//! scripts/check-monitoring.sh.)

use std::collections::BTreeSet;
use std::path::PathBuf;

use fleet_health_server::metrics::{FleetGauges, Metrics};

fn deploy(path: &str) -> String {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../deploy")
        .join(path);
    std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The metric names the server exposes (as in `# TYPE` lines).
fn exposed() -> BTreeSet<String> {
    let m = Metrics::default();
    m.set_cert_not_after(i64::MAX);
    m.render(&FleetGauges::default())
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The metric names in a text of PromQL expressions.
fn used(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for prefix in ["fleet_health_", "process_"] {
        let mut rest = text;
        while let Some(i) = rest.find(prefix) {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            let name = &tail[..end];
            // A histogram's series are its name with a suffix.
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_owned());
            rest = &tail[end..];
        }
    }
    out
}

#[test]
fn every_metric_the_alerts_and_the_dashboard_use_exists() {
    let exposed = exposed();
    for file in [
        "monitoring/alerts.yml",
        "monitoring/grafana/fleet-health.json",
    ] {
        let names = used(&deploy(file));
        assert!(!names.is_empty(), "{file} uses no metric?");
        let missing: Vec<_> = names.difference(&exposed).collect();
        assert!(
            missing.is_empty(),
            "{file} uses {missing:?}, which the server does not expose"
        );
    }
}

#[test]
fn the_operators_rules_are_the_plain_rules() {
    let plain: serde_json::Value =
        yaml_serde::from_str(&deploy("monitoring/alerts.yml")).expect("alerts.yml is YAML");
    let operator: serde_json::Value = yaml_serde::from_str(&deploy(
        "kubernetes/overlays/monitoring/prometheus-rule.yaml",
    ))
    .expect("prometheus-rule.yaml is YAML");
    assert_eq!(operator["kind"], "PrometheusRule");
    assert_eq!(
        operator["spec"]["groups"], plain["groups"],
        "copy the groups of deploy/monitoring/alerts.yml into deploy/kubernetes/overlays/monitoring/prometheus-rule.yaml"
    );
    let monitor: serde_json::Value = yaml_serde::from_str(&deploy(
        "kubernetes/overlays/monitoring/service-monitor.yaml",
    ))
    .expect("service-monitor.yaml is YAML");
    assert_eq!(monitor["kind"], "ServiceMonitor");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
}

#[test]
fn the_dashboard_has_what_grafana_needs() {
    let d: serde_json::Value =
        serde_json::from_str(&deploy("monitoring/grafana/fleet-health.json")).expect("JSON");
    assert_eq!(d["uid"], "fleet-health");
    assert!(d["title"].is_string());
    assert!(d["schemaVersion"].as_u64().is_some_and(|v| v >= 36));
    assert_eq!(d["__inputs"][0]["pluginId"], "prometheus");
    let panels = d["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    let mut ids = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("a panel id")),
            "ids are unique"
        );
        assert!(p["title"].is_string() && p["type"].is_string());
        for key in ["x", "y", "w", "h"] {
            assert!(p["gridPos"][key].is_u64(), "{}: gridPos.{key}", p["title"]);
        }
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty());
        for t in targets {
            assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
        }
    }
}
