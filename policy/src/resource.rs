//! Kubernetes-style objects: `apiVersion`, `kind`, `metadata`, `spec`.
//!
//! [`decode_object`] turns one YAML node into a [`Resource`] (or says why not, or that the
//! kind is not Fulcrum's business), with every finding placed on a line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::decode::{Decode, Decoder, Fields, is_default};
use crate::diag::{Finding, ObjectRef, Severity};
use crate::fulcrum::{self, FailoverPolicySpec, MeshClusterSpec};
use crate::istio::{
    self, DestinationRuleSpec, ServiceEntrySpec, VirtualServiceSpec, WorkloadEntrySpec,
};
use crate::path::{FieldPath, Segment};
use crate::validate::{self, names};
use crate::yaml::{Mark, Node, Resolved, Value};

/// The namespace of an object that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Longest object name (a DNS-1123 subdomain).
const MAX_NAME: usize = 253;

/// Object metadata, as Kubernetes writes it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The object's name.
    pub name: String,
    /// The namespace; [`DEFAULT_NAMESPACE`] when the document gives none.
    pub namespace: String,
    /// Labels.
    #[serde(skip_serializing_if = "is_default")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(skip_serializing_if = "is_default")]
    pub annotations: BTreeMap<String, String>,
    /// The store's version of the object, when read from Kubernetes.
    #[serde(skip_serializing_if = "is_default")]
    pub resource_version: String,
    /// The spec's generation, when read from Kubernetes.
    #[serde(skip_serializing_if = "is_default")]
    pub generation: i64,
    /// The object's UID, when read from Kubernetes.
    #[serde(skip_serializing_if = "is_default")]
    pub uid: String,
    /// When the object was created, when read from Kubernetes.
    #[serde(skip_serializing_if = "is_default")]
    pub creation_timestamp: String,
}

/// Metadata fields Kubernetes writes that Fulcrum does not use; accepted silently so that
/// `kubectl get -o yaml` output loads without noise.
const IGNORED_META_FIELDS: &[&str] = &[
    "managedFields",
    "ownerReferences",
    "finalizers",
    "generateName",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "selfLink",
];

const META_FIELDS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
];

impl Decode for ObjectMeta {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        let Some(mut f) = Fields::open(node, d) else {
            return ObjectMeta::default();
        };
        let mut meta = ObjectMeta {
            name: f.optional(d, "name"),
            namespace: f.optional(d, "namespace"),
            labels: f.optional(d, "labels"),
            annotations: f.optional(d, "annotations"),
            resource_version: f.optional(d, "resourceVersion"),
            generation: f.optional(d, "generation"),
            uid: f.optional(d, "uid"),
            creation_timestamp: f.optional(d, "creationTimestamp"),
        };
        for field in IGNORED_META_FIELDS {
            f.skip(field);
        }
        f.finish(d, META_FIELDS);
        if meta.namespace.is_empty() {
            meta.namespace = DEFAULT_NAMESPACE.to_string();
        }
        meta
    }
}

/// The kinds Fulcrum reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// `networking.istio.io` VirtualService.
    VirtualService,
    /// `networking.istio.io` DestinationRule.
    DestinationRule,
    /// `networking.istio.io` ServiceEntry.
    ServiceEntry,
    /// `networking.istio.io` WorkloadEntry.
    WorkloadEntry,
    /// `fulcrum.dev` FailoverPolicy.
    FailoverPolicy,
    /// `fulcrum.dev` MeshCluster.
    MeshCluster,
}

impl Kind {
    /// Every kind.
    pub const ALL: &'static [Kind] = &[
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WorkloadEntry,
        Kind::FailoverPolicy,
        Kind::MeshCluster,
    ];

    /// The kind as written in YAML.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WorkloadEntry => "WorkloadEntry",
            Kind::FailoverPolicy => "FailoverPolicy",
            Kind::MeshCluster => "MeshCluster",
        }
    }

    /// The API group.
    pub fn group(self) -> &'static str {
        match self {
            Kind::FailoverPolicy | Kind::MeshCluster => fulcrum::GROUP,
            _ => istio::GROUP,
        }
    }

    /// The versions the group serves this kind at.
    pub fn versions(self) -> &'static [&'static str] {
        match self.group() {
            fulcrum::GROUP => &[fulcrum::VERSION],
            _ => istio::VERSIONS,
        }
    }

    /// The kind named `name` in `group`, if Fulcrum reads it.
    pub fn find(group: &str, name: &str) -> Option<Kind> {
        Kind::ALL
            .iter()
            .copied()
            .find(|k| k.group() == group && k.as_str() == name)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An object of one kind.
#[derive(Debug, Clone, PartialEq)]
pub struct Object<S> {
    /// `group/version` as written.
    pub api_version: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The kind-specific spec.
    pub spec: S,
}

/// A validated resource of one of the kinds Fulcrum reads. Objects are boxed: specs differ
/// a lot in size and a config set holds many of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Resource {
    /// See [`VirtualServiceSpec`].
    VirtualService(Box<Object<VirtualServiceSpec>>),
    /// See [`DestinationRuleSpec`].
    DestinationRule(Box<Object<DestinationRuleSpec>>),
    /// See [`ServiceEntrySpec`].
    ServiceEntry(Box<Object<ServiceEntrySpec>>),
    /// See [`WorkloadEntrySpec`].
    WorkloadEntry(Box<Object<WorkloadEntrySpec>>),
    /// See [`FailoverPolicySpec`].
    FailoverPolicy(Box<Object<FailoverPolicySpec>>),
    /// See [`MeshClusterSpec`].
    MeshCluster(Box<Object<MeshClusterSpec>>),
}

/// Runs `$body` with `$o` bound to the object, whatever its kind.
macro_rules! with_object {
    ($resource:expr, $o:ident => $body:expr) => {
        match $resource {
            Resource::VirtualService($o) => $body,
            Resource::DestinationRule($o) => $body,
            Resource::ServiceEntry($o) => $body,
            Resource::WorkloadEntry($o) => $body,
            Resource::FailoverPolicy($o) => $body,
            Resource::MeshCluster($o) => $body,
        }
    };
}

impl Resource {
    /// The kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::VirtualService(_) => Kind::VirtualService,
            Resource::DestinationRule(_) => Kind::DestinationRule,
            Resource::ServiceEntry(_) => Kind::ServiceEntry,
            Resource::WorkloadEntry(_) => Kind::WorkloadEntry,
            Resource::FailoverPolicy(_) => Kind::FailoverPolicy,
            Resource::MeshCluster(_) => Kind::MeshCluster,
        }
    }

    /// The metadata.
    pub fn meta(&self) -> &ObjectMeta {
        with_object!(self, o => &o.metadata)
    }

    /// `group/version` as written.
    pub fn api_version(&self) -> &str {
        with_object!(self, o => &o.api_version)
    }

    /// `Kind namespace/name`.
    pub fn object_ref(&self) -> ObjectRef {
        ObjectRef {
            kind: self.kind().as_str().to_string(),
            namespace: self.meta().namespace.clone(),
            name: self.meta().name.clone(),
        }
    }
}

impl Serialize for Resource {
    /// Writes the object as Kubernetes does: `apiVersion`, `kind`, `metadata`, `spec`.
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Wire<'a, T> {
            #[serde(rename = "apiVersion")]
            api_version: &'a str,
            kind: &'a str,
            metadata: &'a ObjectMeta,
            spec: &'a T,
        }
        fn wire<T: Serialize, S: serde::Serializer>(
            kind: Kind,
            o: &Object<T>,
            serializer: S,
        ) -> Result<S::Ok, S::Error> {
            Wire {
                api_version: &o.api_version,
                kind: kind.as_str(),
                metadata: &o.metadata,
                spec: &o.spec,
            }
            .serialize(serializer)
        }
        let kind = self.kind();
        with_object!(self, o => wire(kind, o, serializer))
    }
}

/// What became of one object.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Valid; warnings may remain.
    Accepted(Resource),
    /// At least one error.
    Rejected,
    /// A kind Fulcrum does not handle (Gateway, Sidecar, ConfigMap, ...).
    Ignored {
        /// `group/version` as written.
        api_version: String,
        /// The kind as written.
        kind: String,
    },
}

/// One object decoded from a node: what it is, and every finding with its mark.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedObject {
    /// `Kind namespace/name`, when the document got far enough to name it.
    pub object: Option<ObjectRef>,
    /// Accepted, rejected or ignored.
    pub outcome: Outcome,
    /// Findings, each with the mark of its field (or the nearest enclosing one).
    pub findings: Vec<Finding>,
}

fn scalar_text(node: &Node) -> Option<&str> {
    match &node.value {
        Value::Scalar(s) => match s.resolve() {
            Resolved::Str(text) => Some(text),
            _ => None,
        },
        _ => None,
    }
}

/// The name and namespace of any object, read without complaint.
fn peek_ref(root: &Node, kind: &str) -> Option<ObjectRef> {
    let meta = &root.get("metadata")?.value;
    let name = scalar_text(&meta.get("name")?.value)?;
    let namespace = meta
        .get("namespace")
        .and_then(|e| scalar_text(&e.value))
        .unwrap_or(DEFAULT_NAMESPACE);
    Some(ObjectRef {
        kind: kind.to_string(),
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

/// Decodes and validates one object.
pub fn decode_object(root: &Node) -> DecodedObject {
    let mut d = Decoder::new();
    if root.as_mapping().is_none() {
        return rejected(root, None, Vec::new());
    }
    let Some(mut fields) = Fields::open(root, &mut d) else {
        return rejected(root, None, d.into_findings());
    };
    let api_version: String = fields.required(&mut d, "apiVersion");
    let kind_name: String = fields.required(&mut d, "kind");
    if api_version.is_empty() || kind_name.is_empty() {
        return rejected(root, None, d.into_findings());
    }
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", &api_version));
    let Some(kind) = Kind::find(group, &kind_name) else {
        return unhandled(root, &api_version, group, &kind_name, d);
    };
    let object = peek_ref(root, kind.as_str());
    if !kind.versions().contains(&version) {
        d.in_field("apiVersion", |d| {
            d.error(
                fields
                    .take("apiVersion")
                    .map(|e| e.key_mark)
                    .unwrap_or(root.mark),
                format!(
                    "{api_version} is not served; {kind} is read at {}",
                    kind.versions()
                        .iter()
                        .map(|v| format!("{group}/{v}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        });
        return rejected(root, object, d.into_findings());
    }

    let metadata: ObjectMeta = fields.required(&mut d, "metadata");
    let mut read = Spec {
        api_version: &api_version,
        metadata,
        fields: &mut fields,
        d: &mut d,
    };
    let resource = match kind {
        Kind::VirtualService => Resource::VirtualService(read.object()),
        Kind::DestinationRule => Resource::DestinationRule(read.object()),
        Kind::ServiceEntry => Resource::ServiceEntry(read.object()),
        Kind::WorkloadEntry => Resource::WorkloadEntry(read.object()),
        Kind::FailoverPolicy => Resource::FailoverPolicy(read.object()),
        Kind::MeshCluster => Resource::MeshCluster(read.object()),
    };
    // Kubernetes keeps status on Istio objects; it says nothing about intent.
    fields.skip("status");
    fields.finish(
        &mut d,
        &["apiVersion", "kind", "metadata", "spec", "status"],
    );

    let mut findings = d.into_findings();
    let mut semantic = metadata_findings(resource.meta());
    semantic.extend(validate::validate_resource(&resource));
    findings.extend(without_shadowed(&findings, semantic));
    place(root, &mut findings);
    let object = Some(ObjectRef {
        kind: kind.as_str().to_string(),
        namespace: resource.meta().namespace.clone(),
        name: if resource.meta().name.is_empty() {
            "<unnamed>".to_string()
        } else {
            resource.meta().name.clone()
        },
    });
    let outcome = if findings.iter().any(|f| f.severity == Severity::Error) {
        Outcome::Rejected
    } else {
        Outcome::Accepted(resource)
    };
    DecodedObject {
        object,
        outcome,
        findings,
    }
}

/// What every object of a kind is read from, once the kind is known.
struct Spec<'a, 'n> {
    api_version: &'a str,
    metadata: ObjectMeta,
    fields: &'a mut Fields<'n>,
    d: &'a mut Decoder,
}

impl Spec<'_, '_> {
    /// The object, with its `spec` read as `S`.
    fn object<S: Decode>(&mut self) -> Box<Object<S>> {
        Box::new(Object {
            api_version: self.api_version.to_string(),
            metadata: std::mem::take(&mut self.metadata),
            spec: self.fields.required(self.d, "spec"),
        })
    }
}

/// A kind Fulcrum does not read: ignored, or an error when it claims one of Fulcrum's
/// groups (a typo there would otherwise vanish silently).
fn unhandled(
    root: &Node,
    api_version: &str,
    group: &str,
    kind_name: &str,
    mut d: Decoder,
) -> DecodedObject {
    let object = peek_ref(root, kind_name);
    if group == fulcrum::GROUP {
        let mark = root.get("kind").map_or(root.mark, |e| e.key_mark);
        d.in_field("kind", |d| {
            d.error(
                mark,
                format!(
                    "{kind_name:?} is not a kind of {}; Fulcrum's kinds are FailoverPolicy and \
                     MeshCluster",
                    fulcrum::GROUP
                ),
            )
        });
        return rejected(root, object, d.into_findings());
    }
    if group != istio::GROUP
        && let Some(ours) = Kind::ALL.iter().find(|k| k.as_str() == kind_name)
    {
        let mark = root.get("apiVersion").map_or(root.mark, |e| e.key_mark);
        d.in_field("apiVersion", |d| {
            d.warn(
                mark,
                format!(
                    "{kind_name} in {api_version} is not {}'s {kind_name}, so it is ignored",
                    ours.group()
                ),
            )
        });
    }
    DecodedObject {
        object,
        outcome: Outcome::Ignored {
            api_version: api_version.to_string(),
            kind: kind_name.to_string(),
        },
        findings: d.into_findings(),
    }
}

fn rejected(root: &Node, object: Option<ObjectRef>, mut findings: Vec<Finding>) -> DecodedObject {
    if findings.is_empty() {
        findings.push(
            Finding::error(
                FieldPath::root(),
                format!(
                    "expected a Kubernetes object (a mapping with apiVersion, kind, metadata \
                     and spec), found {}",
                    root.describe()
                ),
            )
            .at(root.mark),
        );
    }
    place(root, &mut findings);
    DecodedObject {
        object,
        outcome: Outcome::Rejected,
        findings,
    }
}

fn metadata_findings(meta: &ObjectMeta) -> Vec<Finding> {
    let at = |field: &str| FieldPath::parse("metadata").field(field);
    let mut out = Vec::new();
    if meta.name.is_empty() {
        out.push(Finding::error(at("name"), "required field is missing"));
    } else if meta.name.len() > MAX_NAME || !names::is_dns1123_subdomain(&meta.name) {
        out.push(Finding::error(
            at("name"),
            format!(
                "name {:?} must be a lowercase DNS-1123 name: letters, digits, '-' and '.', \
                 starting and ending with a letter or digit",
                meta.name
            ),
        ));
    }
    if !names::is_namespace(&meta.namespace) {
        out.push(Finding::error(
            at("namespace"),
            format!(
                "namespace {:?} must be a lowercase DNS-1123 label",
                meta.namespace
            ),
        ));
    }
    for (key, problem) in names::label_problems(&meta.labels) {
        let mut path = at("labels");
        path.push_key(&key);
        out.push(Finding::error(path, problem));
    }
    for (key, value) in &meta.labels {
        if value.len() > 63 {
            let mut path = at("labels");
            path.push_key(key);
            out.push(Finding::error(
                path,
                "label values are at most 63 characters",
            ));
        }
    }
    out
}

/// Drops semantic findings about fields that already have a decoding error: the decoding
/// error is the real one, and the default put in the field's place would only add noise.
fn without_shadowed(structural: &[Finding], semantic: Vec<Finding>) -> Vec<Finding> {
    let broken: Vec<&FieldPath> = structural
        .iter()
        .filter(|f| f.severity == Severity::Error)
        .map(|f| &f.path)
        .collect();
    semantic
        .into_iter()
        .filter(|f| !broken.iter().any(|b| f.path.starts_with(b)))
        .collect()
}

/// Gives every finding a mark: its field's key, or the nearest enclosing node that exists.
fn place(root: &Node, findings: &mut [Finding]) {
    for f in findings.iter_mut() {
        if f.mark.is_none() {
            f.mark = Some(mark_of(root, &f.path));
        }
    }
}

/// The mark of the deepest node on `path` that exists in the tree.
pub fn mark_of(root: &Node, path: &FieldPath) -> Mark {
    let mut node = root;
    let mut mark = root.mark;
    for segment in path.segments() {
        match segment {
            Segment::Field(name) | Segment::Key(name) => match node.get(name) {
                Some(entry) => {
                    mark = entry.key_mark;
                    node = &entry.value;
                }
                None => break,
            },
            Segment::Index(i) => match &node.value {
                Value::Sequence(items) if *i < items.len() => {
                    node = &items[*i];
                    mark = node.mark;
                }
                _ => break,
            },
        }
    }
    mark
}
