//! Conversions for `fulcrum.common.v1`: localities, resources, weight rows, diagnostics.

use fulcrum_policy::weights::{Signals, Verdict, WeightEntry, WeightRow};
use fulcrum_policy::{
    ConfigSet, Diagnostic, Duration, FieldPath, Locality, ObjectRef, Outcome, Resource, Severity,
};

use super::{WireError, each, required};
use crate::common::v1 as pb;

/// Longest locality part accepted from a peer.
const MAX_LOCALITY_PART: usize = 253;
/// Largest resource document accepted from a peer (the Kubernetes API's object limit).
pub const MAX_RESOURCE_BYTES: usize = 3 * 1024 * 1024;

impl From<&Locality> for pb::Locality {
    fn from(l: &Locality) -> Self {
        pb::Locality {
            region: l.region.clone(),
            zone: l.zone.clone(),
            subzone: l.subzone.clone(),
        }
    }
}

impl TryFrom<&pb::Locality> for Locality {
    type Error = WireError;

    fn try_from(l: &pb::Locality) -> Result<Self, WireError> {
        for (field, part) in [
            ("region", &l.region),
            ("zone", &l.zone),
            ("subzone", &l.subzone),
        ] {
            if part.len() > MAX_LOCALITY_PART {
                return Err(WireError::invalid(
                    field,
                    format!("longer than {MAX_LOCALITY_PART} characters"),
                ));
            }
            if let Some(c) = part
                .chars()
                .find(|c| matches!(c, '/' | '*') || c.is_whitespace())
            {
                return Err(WireError::invalid(
                    field,
                    format!("{part:?} contains {c:?}"),
                ));
            }
        }
        if l.region.is_empty() && !l.zone.is_empty() {
            return Err(WireError::invalid(
                "region",
                "a zone is set without a region",
            ));
        }
        if l.zone.is_empty() && !l.subzone.is_empty() {
            return Err(WireError::invalid(
                "zone",
                "a subzone is set without a zone",
            ));
        }
        Ok(Locality::new(&l.region, &l.zone, &l.subzone))
    }
}

impl From<&Resource> for pb::Resource {
    fn from(r: &Resource) -> Self {
        let object = r.object_ref();
        pb::Resource {
            kind: object.kind,
            namespace: object.namespace,
            name: object.name,
            // Serializing plain data structures to JSON cannot fail.
            json: serde_json::to_vec(r).unwrap_or_default(),
        }
    }
}

impl TryFrom<&pb::Resource> for Resource {
    type Error = WireError;

    /// Decodes and validates the document with fulcrum-policy, and checks that it is the
    /// object the envelope names.
    fn try_from(r: &pb::Resource) -> Result<Self, WireError> {
        if r.json.len() > MAX_RESOURCE_BYTES {
            return Err(WireError::invalid(
                "json",
                format!(
                    "{} bytes, more than the limit of {MAX_RESOURCE_BYTES}",
                    r.json.len()
                ),
            ));
        }
        let text = std::str::from_utf8(&r.json)
            .map_err(|_| WireError::invalid("json", "not UTF-8 text"))?;
        let source = format!("{} {}/{}", r.kind, r.namespace, r.name);
        let mut config = ConfigSet::new();
        config.add_text(&source, text);
        let [loaded] = config.objects.as_slice() else {
            return Err(WireError::invalid(
                "json",
                format!("holds {} objects, not one", config.objects.len()),
            ));
        };
        let resource = match &loaded.outcome {
            Outcome::Accepted(resource) => resource,
            Outcome::Rejected => {
                return Err(WireError::InvalidResource {
                    field: "json".to_string(),
                    diagnostics: loaded.diagnostics.clone(),
                });
            }
            Outcome::Ignored { api_version, kind } => {
                return Err(WireError::invalid(
                    "json",
                    format!("{kind} ({api_version}) is not a kind Fulcrum reads"),
                ));
            }
        };
        let found = resource.object_ref();
        let named = ObjectRef {
            kind: r.kind.clone(),
            namespace: r.namespace.clone(),
            name: r.name.clone(),
        };
        if found != named {
            return Err(WireError::invalid(
                "json",
                format!("the document is {found}, but the envelope says {named}"),
            ));
        }
        Ok(resource.clone())
    }
}

impl From<Verdict> for pb::Verdict {
    fn from(v: Verdict) -> Self {
        match v {
            Verdict::Healthy => pb::Verdict::Healthy,
            Verdict::Degraded => pb::Verdict::Degraded,
            Verdict::Failed => pb::Verdict::Failed,
            Verdict::Recovering => pb::Verdict::Recovering,
            Verdict::Unknown => pb::Verdict::Unknown,
            Verdict::Drained => pb::Verdict::Drained,
        }
    }
}

/// Reads an enum field sent as its number.
pub(crate) fn verdict(field: &str, value: i32) -> Result<Verdict, WireError> {
    match pb::Verdict::try_from(value) {
        Ok(pb::Verdict::Healthy) => Ok(Verdict::Healthy),
        Ok(pb::Verdict::Degraded) => Ok(Verdict::Degraded),
        Ok(pb::Verdict::Failed) => Ok(Verdict::Failed),
        Ok(pb::Verdict::Recovering) => Ok(Verdict::Recovering),
        Ok(pb::Verdict::Unknown) => Ok(Verdict::Unknown),
        Ok(pb::Verdict::Drained) => Ok(Verdict::Drained),
        Ok(pb::Verdict::Unspecified) => Err(WireError::missing(field)),
        Err(_) => Err(WireError::invalid(
            field,
            format!("unknown verdict {value}"),
        )),
    }
}

/// Milliseconds from the wire as a duration, refusing values a duration cannot hold.
pub(crate) fn millis(field: &str, ms: u64) -> Result<Duration, WireError> {
    i64::try_from(ms)
        .ok()
        .and_then(|ms| ms.checked_mul(1_000_000))
        .map(Duration::from_nanos)
        .ok_or_else(|| WireError::invalid(field, format!("{ms}ms is too long")))
}

/// A duration as whole milliseconds on the wire (negative durations become 0).
pub(crate) fn to_millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(0)
}

impl From<&Signals> for pb::Signals {
    fn from(s: &Signals) -> Self {
        pb::Signals {
            ready_endpoints: s.ready_endpoints,
            total_endpoints: s.total_endpoints,
            requests: s.requests,
            http_5xx: s.http_5xx,
            gateway_errors: s.gateway_errors,
            connect_failures: s.connect_failures,
            window_ms: to_millis(s.window),
        }
    }
}

impl TryFrom<&pb::Signals> for Signals {
    type Error = WireError;

    fn try_from(s: &pb::Signals) -> Result<Self, WireError> {
        if s.ready_endpoints > s.total_endpoints {
            return Err(WireError::invalid(
                "ready_endpoints",
                "more ready endpoints than endpoints",
            ));
        }
        Ok(Signals {
            ready_endpoints: s.ready_endpoints,
            total_endpoints: s.total_endpoints,
            requests: s.requests,
            http_5xx: s.http_5xx,
            gateway_errors: s.gateway_errors,
            connect_failures: s.connect_failures,
            window: millis("window_ms", s.window_ms)?,
        })
    }
}

impl From<&WeightEntry> for pb::WeightEntry {
    fn from(e: &WeightEntry) -> Self {
        pb::WeightEntry {
            destination: Some((&e.destination).into()),
            weight_bp: e.weight_bp,
            priority: e.priority,
            priority_reason: e.priority_reason.clone(),
            verdict: pb::Verdict::from(e.verdict).into(),
            verdict_since_ms: e.verdict_since_ms,
            signals: Some((&e.signals).into()),
            explanation: e.explanation.clone(),
        }
    }
}

impl TryFrom<&pb::WeightEntry> for WeightEntry {
    type Error = WireError;

    fn try_from(e: &pb::WeightEntry) -> Result<Self, WireError> {
        Ok(WeightEntry {
            destination: required("destination", e.destination.as_ref(), Locality::try_from)?,
            weight_bp: e.weight_bp,
            priority: e.priority,
            priority_reason: e.priority_reason.clone(),
            verdict: verdict("verdict", e.verdict)?,
            verdict_since_ms: e.verdict_since_ms,
            signals: match &e.signals {
                Some(s) => Signals::try_from(s).map_err(|err| err.within("signals"))?,
                None => Signals::default(),
            },
            explanation: e.explanation.clone(),
        })
    }
}

impl From<&WeightRow> for pb::WeightRow {
    fn from(r: &WeightRow) -> Self {
        pb::WeightRow {
            service: r.service.clone(),
            subset: r.subset.clone(),
            source: Some((&r.source).into()),
            entries: r.entries.iter().map(Into::into).collect(),
        }
    }
}

impl TryFrom<&pb::WeightRow> for WeightRow {
    type Error = WireError;

    /// Converts and checks the row: a proxy never routes on weights that do not add up.
    fn try_from(r: &pb::WeightRow) -> Result<Self, WireError> {
        let row = WeightRow {
            service: r.service.clone(),
            subset: r.subset.clone(),
            source: required("source", r.source.as_ref(), Locality::try_from)?,
            entries: each("entries", &r.entries, WeightEntry::try_from)?,
        };
        row.check()
            .map_err(|e| WireError::invalid("entries", e.to_string()))?;
        Ok(row)
    }
}

impl From<Severity> for pb::Severity {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Error => pb::Severity::Error,
            Severity::Warning => pb::Severity::Warning,
        }
    }
}

impl From<&Diagnostic> for pb::Diagnostic {
    fn from(d: &Diagnostic) -> Self {
        let (kind, namespace, name) = match &d.object {
            Some(o) => (o.kind.clone(), o.namespace.clone(), o.name.clone()),
            None => Default::default(),
        };
        pb::Diagnostic {
            severity: pb::Severity::from(d.severity).into(),
            source: d.source.clone(),
            document: u32::try_from(d.document).unwrap_or(u32::MAX),
            line: d.line,
            object_kind: kind,
            object_namespace: namespace,
            object_name: name,
            path: d.path.to_string(),
            message: d.message.clone(),
        }
    }
}

impl TryFrom<&pb::Diagnostic> for Diagnostic {
    type Error = WireError;

    fn try_from(d: &pb::Diagnostic) -> Result<Self, WireError> {
        let severity = match pb::Severity::try_from(d.severity) {
            Ok(pb::Severity::Error) => Severity::Error,
            Ok(pb::Severity::Warning) => Severity::Warning,
            Ok(pb::Severity::Unspecified) => return Err(WireError::missing("severity")),
            Err(_) => {
                return Err(WireError::invalid(
                    "severity",
                    format!("unknown severity {}", d.severity),
                ));
            }
        };
        let object = (!d.object_kind.is_empty()).then(|| ObjectRef {
            kind: d.object_kind.clone(),
            namespace: d.object_namespace.clone(),
            name: d.object_name.clone(),
        });
        Ok(Diagnostic {
            severity,
            source: d.source.clone(),
            document: d.document as usize,
            line: d.line,
            object,
            path: FieldPath::parse(&d.path),
            message: d.message.clone(),
        })
    }
}
