//! Semantic validation: the rules a schema cannot express, mirroring Istio's own
//! (`pkg/config/validation/validation.go`, `agent/validation.go` and the CEL rules of the
//! CRDs), plus Fulcrum's rules for its own kinds.
//!
//! Validation runs on decoded models and reports every problem with its field path; the
//! loader then finds the line for each path. It never looks at anything but its input.

mod destination_rule;
mod fulcrum;
pub mod names;
mod service_entry;
mod virtual_service;

use std::collections::BTreeMap;

use crate::diag::Finding;
use crate::duration::Duration;
use crate::path::FieldPath;
use crate::resource::Resource;

/// Validates one resource; every finding's path starts at the document root (`spec...`).
pub fn validate_resource(resource: &Resource) -> Vec<Finding> {
    let mut c = Checker::default();
    let namespace = resource.meta().namespace.as_str();
    c.at("spec", |c| match resource {
        Resource::DestinationRule(o) => destination_rule::check(c, &o.spec, namespace),
        Resource::VirtualService(o) => virtual_service::check(c, &o.spec, namespace),
        Resource::ServiceEntry(o) => service_entry::check_service_entry(c, &o.spec, namespace),
        Resource::WorkloadEntry(o) => service_entry::check_workload_entry(c, &o.spec),
        Resource::FailoverPolicy(o) => fulcrum::check_failover_policy(c, &o.spec),
        Resource::MeshCluster(o) => fulcrum::check_mesh_cluster(c, &o.spec, &o.metadata.name),
    });
    c.findings
}

/// Walks a model, tracking the field path, and collects findings.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    path: FieldPath,
    findings: Vec<Finding>,
}

impl Checker {
    /// Runs `f` one field deeper.
    pub fn at<R>(&mut self, field: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push_field(field);
        let out = f(self);
        self.path.pop();
        out
    }

    /// Runs `f` at one element of a list.
    pub fn at_index<R>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push_index(index);
        let out = f(self);
        self.path.pop();
        out
    }

    /// Runs `f` at one entry of a map.
    pub fn at_key<R>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> R) -> R {
        self.path.push_key(key);
        let out = f(self);
        self.path.pop();
        out
    }

    /// Runs `f` for each element of the list `field`.
    pub fn each<T>(&mut self, field: &str, items: &[T], mut f: impl FnMut(&mut Self, &T)) {
        self.at(field, |c| {
            for (i, item) in items.iter().enumerate() {
                c.at_index(i, |c| f(c, item));
            }
        });
    }

    /// Runs `f` inside the optional field `field` when it is set.
    pub fn some<T>(&mut self, field: &str, value: &Option<T>, f: impl FnOnce(&mut Self, &T)) {
        if let Some(v) = value {
            self.at(field, |c| f(c, v));
        }
    }

    /// An error at the current path.
    pub fn error(&mut self, message: impl Into<String>) {
        self.findings
            .push(Finding::error(self.path.clone(), message));
    }

    /// A warning at the current path.
    pub fn warn(&mut self, message: impl Into<String>) {
        self.findings
            .push(Finding::warning(self.path.clone(), message));
    }

    /// An error at `field` under the current path.
    pub fn error_in(&mut self, field: &str, message: impl Into<String>) {
        self.at(field, |c| c.error(message));
    }

    /// A warning at `field` under the current path.
    pub fn warn_in(&mut self, field: &str, message: impl Into<String>) {
        self.at(field, |c| c.warn(message));
    }

    /// An error at the current path when `result` is one.
    pub fn check(&mut self, result: Result<(), String>) {
        if let Err(message) = result {
            self.error(message);
        }
    }

    /// An error at `field` when `result` is one.
    pub fn check_in(&mut self, field: &str, result: Result<(), String>) {
        if let Err(message) = result {
            self.error_in(field, message);
        }
    }

    /// Istio's `ValidateDuration` for an optional duration field: at least 1ms, with
    /// millisecond precision.
    pub fn duration(&mut self, field: &str, value: &Option<Duration>) {
        if let Some(d) = value {
            self.check_in(field, istio_duration(*d));
        }
    }

    /// Istio's label checks, one error per bad key or value, at `field[key]`.
    pub fn labels(&mut self, field: &str, labels: &BTreeMap<String, String>) {
        let problems = names::label_problems(labels);
        if problems.is_empty() {
            return;
        }
        self.at(field, |c| {
            for (key, message) in problems {
                c.at_key(&key, |c| c.error(message));
            }
        });
    }

    /// A `0..=100` percentage held in a plain integer.
    pub fn percent_range(&mut self, field: &str, value: i64) {
        if !(0..=100).contains(&value) {
            self.error_in(
                field,
                format!("{value} is not a percentage: must be 0 to 100"),
            );
        }
    }

    /// A port number.
    pub fn port(&mut self, field: &str, port: u32) {
        self.check_in(field, names::check_port(port));
    }
}

/// Istio's `ValidateDuration`.
pub(crate) fn istio_duration(d: Duration) -> Result<(), String> {
    if d < Duration::from_millis(1) {
        return Err(format!("duration {d} is too short: must be at least 1ms"));
    }
    if !d.is_whole_millis() {
        return Err(format!(
            "duration {d} is too precise: only milliseconds are supported"
        ));
    }
    Ok(())
}

/// Istio's `validateExportTo`.
pub(crate) fn export_to(
    c: &mut Checker,
    namespace: &str,
    export_to: &[String],
    is_service_entry: bool,
    dr_with_selector: bool,
) {
    if export_to.is_empty() {
        return;
    }
    c.at("exportTo", |c| {
        let mut seen: Vec<String> = Vec::new();
        for (i, entry) in export_to.iter().enumerate() {
            let key = if entry == "." {
                namespace.to_string()
            } else {
                entry.clone()
            };
            c.at_index(i, |c| {
                if seen.contains(&key) {
                    if &key != entry {
                        c.error(format!(
                            "duplicate entries in exportTo: \".\" and the current namespace \
                             {namespace:?}"
                        ));
                    } else {
                        c.error(format!("duplicate entry {entry:?} in exportTo"));
                    }
                    return;
                }
                let valid = match key.as_str() {
                    "*" | "." => true,
                    "~" => is_service_entry,
                    other => names::is_dns1123_label(other),
                };
                if valid {
                    seen.push(key);
                } else if key == "~" {
                    c.error("exportTo ~ (no one) is only allowed on ServiceEntry");
                } else {
                    c.error(format!(
                        "{entry:?} is not a valid exportTo entry: use \".\", \"*\" or a \
                         namespace name"
                    ));
                }
            });
        }
        if dr_with_selector && !seen.is_empty() {
            if !seen.iter().any(|s| s == namespace) {
                c.error(
                    "a DestinationRule with a workload selector cannot be exported beyond \
                     its own namespace",
                );
            } else if seen.len() > 1 {
                c.error(
                    "a DestinationRule with a workload selector cannot have several exportTo \
                     entries",
                );
            }
        }
        if seen.iter().any(|s| s == "*") && export_to.len() > 1 {
            c.error("cannot export to everyone (*) and to named namespaces at the same time");
        }
        if seen.iter().any(|s| s == "~") && export_to.len() > 1 {
            c.error("cannot export to no one (~) and to someone at the same time");
        }
    });
}

/// `validateWorkloadSelector` / `ValidateAlphaWorkloadSelector`: no empty keys, no
/// wildcards; an empty selector is a warning.
pub(crate) fn workload_selector(c: &mut Checker, field: &str, labels: &BTreeMap<String, String>) {
    c.at(field, |c| {
        for (key, value) in labels {
            c.at_key(key, |c| {
                if key.is_empty() {
                    c.error("empty key is not supported in selector");
                }
                if key.contains('*') || value.contains('*') {
                    c.error(format!(
                        "wildcard is not supported in selector: \"{key}={value}\""
                    ));
                }
            });
        }
        if labels.is_empty() {
            c.warn(
                "workload selector has no labels, so it selects every workload in the namespace",
            );
        }
    });
}
