//! Loading configuration from bytes, files and directories into a [`ConfigSet`].
//!
//! Two kinds of trouble are kept apart: a [`SourceError`] means an input could not be read
//! as text at all (missing file, binary file, directory without YAML); a [`Diagnostic`]
//! means the text was read and something in it is wrong. `fulcrumctl validate` exits 2 for
//! the first and 1 for the second.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::diag::{Diagnostic, Finding, ObjectRef, Severity};
use crate::path::FieldPath;
use crate::references::{SubsetIndex, undefined_subsets};
use crate::resource::{DecodedObject, Outcome, Resource, decode_object, mark_of};
use crate::yaml::{Document, Limits, Node, Value, parse_documents};

/// File extensions read from directories.
pub const YAML_EXTENSIONS: &[&str] = &["yaml", "yml", "json"];
/// Deepest directory nesting followed.
const MAX_DIR_DEPTH: usize = 32;

/// An input that could not be read as configuration text.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The path does not exist.
    #[error("{path}: no such file or directory")]
    NotFound {
        /// The path given.
        path: PathBuf,
    },
    /// The file is not UTF-8 text (binary, or another encoding).
    #[error("{path}: not a text file ({reason}); Fulcrum reads UTF-8 YAML or JSON")]
    NotText {
        /// The file.
        path: PathBuf,
        /// What gave it away.
        reason: &'static str,
    },
    /// A directory holds no `.yaml`, `.yml` or `.json` file.
    #[error("{path}: no .yaml, .yml or .json files in this directory")]
    NoYaml {
        /// The directory.
        path: PathBuf,
    },
    /// Reading failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
}

/// What became of one object in the input.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadedObject {
    /// File name (or the name given to the bytes).
    pub source: String,
    /// 1-based document number in the source.
    pub document: usize,
    /// Position in the document's `items` when the document is a `List`.
    pub item: Option<usize>,
    /// Line where the object starts.
    pub line: u32,
    /// `Kind namespace/name`, when known.
    pub object: Option<ObjectRef>,
    /// Accepted, rejected or ignored.
    pub outcome: Outcome,
    /// Errors and warnings, in line order.
    pub diagnostics: Vec<Diagnostic>,
}

impl LoadedObject {
    /// True when the object was rejected.
    pub fn is_rejected(&self) -> bool {
        matches!(self.outcome, Outcome::Rejected)
    }
}

/// Everything read from a set of inputs.
#[derive(Debug, Default)]
pub struct ConfigSet {
    /// Every object, in input order.
    pub objects: Vec<LoadedObject>,
    /// Inputs that could not be read.
    pub source_errors: Vec<SourceError>,
    limits: Limits,
    /// The text of every source, to place findings that need several objects to see.
    texts: BTreeMap<String, String>,
}

impl ConfigSet {
    /// An empty set with the default limits.
    pub fn new() -> Self {
        ConfigSet::default()
    }

    /// An empty set with custom parse limits.
    pub fn with_limits(limits: Limits) -> Self {
        ConfigSet {
            limits,
            ..ConfigSet::default()
        }
    }

    /// Reads `text` as configuration named `source`.
    pub fn add_text(&mut self, source: &str, text: &str) {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let documents = match parse_documents(text, &self.limits) {
            Ok(documents) => documents,
            Err(problem) => {
                self.objects.push(LoadedObject {
                    source: source.to_string(),
                    document: 0,
                    item: None,
                    line: problem.mark.line,
                    object: None,
                    outcome: Outcome::Rejected,
                    diagnostics: vec![Diagnostic {
                        severity: Severity::Error,
                        source: source.to_string(),
                        document: 0,
                        line: problem.mark.line,
                        object: None,
                        path: FieldPath::root(),
                        message: problem.message,
                    }],
                });
                return;
            }
        };
        self.texts.insert(source.to_string(), text.to_string());
        for document in documents {
            let yaml_problems: Vec<Finding> = document
                .problems
                .iter()
                .map(|p| Finding::error(p.path.clone(), p.message.clone()).at(p.mark))
                .collect();
            let (items, is_list) = match list_items(&document.root) {
                Some(items) => (items, true),
                None => (vec![&document.root], false),
            };
            for (i, node) in items.iter().enumerate() {
                let mut decoded = decode_object(node);
                if i == 0 && !yaml_problems.is_empty() {
                    decoded.findings.extend(yaml_problems.iter().cloned());
                    decoded.outcome = Outcome::Rejected;
                }
                let item = is_list.then_some(i);
                self.push(source, document.index, item, node, decoded);
            }
        }
    }

    /// Reads `bytes` as configuration named `source`; refuses anything that is not UTF-8
    /// text.
    pub fn add_bytes(&mut self, source: &str, bytes: &[u8]) -> Result<(), SourceError> {
        let text = as_text(bytes).map_err(|reason| SourceError::NotText {
            path: PathBuf::from(source),
            reason,
        })?;
        self.add_text(source, text);
        Ok(())
    }

    /// Reads a file, or every YAML file under a directory (recursively, in name order,
    /// skipping hidden entries). Problems reading an input are kept in `source_errors`.
    pub fn add_path(&mut self, path: &Path) {
        let metadata = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                self.source_errors.push(SourceError::NotFound {
                    path: path.to_path_buf(),
                });
                return;
            }
            Err(source) => {
                self.source_errors.push(SourceError::Io {
                    path: path.to_path_buf(),
                    source,
                });
                return;
            }
        };
        if metadata.is_dir() {
            let mut files = Vec::new();
            if let Err(source) = collect_yaml_files(path, 0, &mut files) {
                self.source_errors.push(SourceError::Io {
                    path: path.to_path_buf(),
                    source,
                });
                return;
            }
            if files.is_empty() {
                self.source_errors.push(SourceError::NoYaml {
                    path: path.to_path_buf(),
                });
            }
            for file in files {
                self.add_file(&file);
            }
        } else {
            self.add_file(path);
        }
    }

    fn add_file(&mut self, path: &Path) {
        let limit = self.limits.max_bytes;
        let bytes = match read_limited(path, limit) {
            Ok(bytes) => bytes,
            Err(source) => {
                self.source_errors.push(SourceError::Io {
                    path: path.to_path_buf(),
                    source,
                });
                return;
            }
        };
        if let Err(e) = self.add_bytes(&path.display().to_string(), &bytes) {
            self.source_errors.push(e);
        }
    }

    fn push(
        &mut self,
        source: &str,
        document: usize,
        item: Option<usize>,
        node: &Node,
        decoded: DecodedObject,
    ) {
        let DecodedObject {
            object,
            outcome,
            findings,
        } = decoded;
        let mut diagnostics: Vec<Diagnostic> = findings
            .into_iter()
            .map(|f| Diagnostic {
                severity: f.severity,
                source: source.to_string(),
                document,
                line: f.mark.map_or(node.mark.line, |m| m.line),
                object: object.clone(),
                path: f.path,
                message: f.message,
            })
            .collect();
        diagnostics.sort_by_key(|d| d.line);
        self.objects.push(LoadedObject {
            source: source.to_string(),
            document,
            item,
            line: node.mark.line,
            object,
            outcome,
            diagnostics,
        });
    }

    /// Checks that hold across resources, as `kubectl apply` would see them: an object
    /// defined twice is a warning (the last definition wins); two different objects
    /// claiming the same cluster name, or setting the failover policy of the same host,
    /// is an error on the later one; a VirtualService naming a subset no DestinationRule
    /// defines is a warning.
    pub fn check_consistency(&mut self) {
        let found = self.cross_resource_findings();
        let mut parsed = ParsedSources::default();
        for (index, severity, path, message) in found {
            let line = parsed.line(&self.texts, &self.limits, &self.objects[index], &path);
            let loaded = &mut self.objects[index];
            if severity == Severity::Error {
                loaded.outcome = Outcome::Rejected;
            }
            loaded.diagnostics.push(Diagnostic {
                severity,
                source: loaded.source.clone(),
                document: loaded.document,
                line,
                object: loaded.object.clone(),
                path,
                message,
            });
            loaded.diagnostics.sort_by_key(|d| d.line);
        }
    }

    /// Every cross-resource finding, as (object index, severity, path, message).
    fn cross_resource_findings(&self) -> Vec<(usize, Severity, FieldPath, String)> {
        let accepted: Vec<(usize, &Resource)> = self
            .objects
            .iter()
            .enumerate()
            .filter_map(|(i, o)| match &o.outcome {
                Outcome::Accepted(r) => Some((i, r)),
                _ => None,
            })
            .collect();
        let last_definition: BTreeMap<ObjectRef, usize> =
            accepted.iter().map(|(i, r)| (r.object_ref(), *i)).collect();
        let is_final = |i: usize, r: &Resource| last_definition.get(&r.object_ref()) == Some(&i);

        let mut found = Vec::new();
        let mut first_seen: BTreeMap<ObjectRef, usize> = BTreeMap::new();
        let mut clusters: BTreeMap<String, ObjectRef> = BTreeMap::new();
        let mut policies: BTreeMap<&str, ObjectRef> = BTreeMap::new();
        let mut subsets = SubsetIndex::default();
        for &(i, resource) in &accepted {
            let me = resource.object_ref();
            if let Some(&first) = first_seen.get(&me) {
                let first = &self.objects[first];
                found.push((
                    i,
                    Severity::Warning,
                    FieldPath::parse("metadata.name"),
                    format!(
                        "{me} is also defined at {}:{}; the last definition wins",
                        first.source, first.line
                    ),
                ));
            } else {
                first_seen.insert(me.clone(), i);
            }
            if !is_final(i, resource) {
                continue;
            }
            match resource {
                Resource::MeshCluster(o) => {
                    let name = o.spec.name(&o.metadata.name).to_string();
                    match clusters.get(&name) {
                        Some(other) => found.push((
                            i,
                            Severity::Error,
                            FieldPath::parse("spec.clusterName"),
                            format!("the cluster name {name:?} is already used by {other}"),
                        )),
                        None => {
                            clusters.insert(name, me);
                        }
                    }
                }
                Resource::FailoverPolicy(o) => match policies.get(o.spec.host.as_str()) {
                    Some(other) => found.push((
                        i,
                        Severity::Error,
                        FieldPath::parse("spec.host"),
                        format!(
                            "{other} already sets the failover policy of {:?}",
                            o.spec.host
                        ),
                    )),
                    None => {
                        policies.insert(&o.spec.host, me);
                    }
                },
                Resource::DestinationRule(o) => subsets.add(&o.spec, &o.metadata.namespace),
                _ => {}
            }
        }
        for &(i, resource) in &accepted {
            if let Resource::VirtualService(o) = resource
                && is_final(i, resource)
            {
                for (path, message) in undefined_subsets(&o.spec, &o.metadata.namespace, &subsets) {
                    found.push((i, Severity::Warning, path, message));
                }
            }
        }
        found
    }

    /// The accepted resources.
    pub fn resources(&self) -> impl Iterator<Item = &Resource> {
        self.objects.iter().filter_map(|o| match &o.outcome {
            Outcome::Accepted(r) => Some(r),
            _ => None,
        })
    }

    /// Every diagnostic, in input order.
    pub fn diagnostics(&self) -> impl Iterator<Item = &Diagnostic> {
        self.objects.iter().flat_map(|o| o.diagnostics.iter())
    }

    /// True when any object was rejected.
    pub fn has_errors(&self) -> bool {
        self.objects.iter().any(LoadedObject::is_rejected)
    }
}

impl fmt::Display for ConfigSet {
    /// A one-line summary: `4 accepted, 1 rejected, 2 ignored, 3 warnings`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count =
            |pred: fn(&Outcome) -> bool| self.objects.iter().filter(|o| pred(&o.outcome)).count();
        let warnings = self
            .diagnostics()
            .filter(|d| d.severity == Severity::Warning)
            .count();
        write!(
            f,
            "{} accepted, {} rejected, {} ignored, {} warning{}",
            count(|o| matches!(o, Outcome::Accepted(_))),
            count(|o| matches!(o, Outcome::Rejected)),
            count(|o| matches!(o, Outcome::Ignored { .. })),
            warnings,
            if warnings == 1 { "" } else { "s" }
        )
    }
}

/// Sources parsed again, once each, to find the line of a field named after loading.
#[derive(Default)]
struct ParsedSources {
    documents: BTreeMap<String, Vec<Document>>,
}

impl ParsedSources {
    fn line(
        &mut self,
        texts: &BTreeMap<String, String>,
        limits: &Limits,
        object: &LoadedObject,
        path: &FieldPath,
    ) -> u32 {
        let documents = self
            .documents
            .entry(object.source.clone())
            .or_insert_with(|| {
                texts
                    .get(&object.source)
                    .and_then(|text| parse_documents(text, limits).ok())
                    .unwrap_or_default()
            });
        let Some(document) = documents.iter().find(|d| d.index == object.document) else {
            return object.line;
        };
        let node = match (object.item, list_items(&document.root)) {
            (Some(i), Some(items)) => items.get(i).copied(),
            (None, _) => Some(&document.root),
            (Some(_), None) => None,
        };
        node.map_or(object.line, |n| mark_of(n, path).line)
    }
}

/// The items of a `v1` `List` document, or `None` when the document is one object.
fn list_items(root: &Node) -> Option<Vec<&Node>> {
    let is_list = root
        .get("kind")
        .is_some_and(|e| matches!(&e.value.value, Value::Scalar(s) if s.text == "List"))
        && root
            .get("apiVersion")
            .is_some_and(|e| matches!(&e.value.value, Value::Scalar(s) if s.text == "v1"));
    if is_list
        && let Some(items) = root.get("items")
        && let Value::Sequence(items) = &items.value.value
    {
        return Some(items.iter().collect());
    }
    None
}

fn as_text(bytes: &[u8]) -> Result<&str, &'static str> {
    if bytes.starts_with(&[0xff, 0xfe]) || bytes.starts_with(&[0xfe, 0xff]) {
        return Err("it is UTF-16; save it as UTF-8");
    }
    if bytes.iter().take(8192).any(|b| *b == 0) {
        return Err("it contains NUL bytes");
    }
    std::str::from_utf8(bytes).map_err(|_| "it is not valid UTF-8")
}

fn read_limited(path: &Path, limit: usize) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(limit as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("file is larger than the limit of {limit} bytes"),
        ));
    }
    Ok(bytes)
}

/// What the configuration files under some paths are, as far as telling a change goes:
/// each file [`ConfigSet::add_path`] would read, with its length, modification time and,
/// on Unix, its inode and status change time (a symlinked file's target's, as Kubernetes
/// mounts a ConfigMap). Two fingerprints differ when a file was written, replaced (a
/// file moved into place is a new inode, however soon after the last it came), added or
/// removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fingerprint(Vec<(PathBuf, FileMark)>);

/// What tells one version of a file from another without reading it.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord)]
struct FileMark {
    length: u64,
    modified: Option<SystemTime>,
    /// Inode and status change time (seconds, nanoseconds), on Unix.
    identity: (u64, i64, i64),
}

impl FileMark {
    fn of(meta: &fs::Metadata) -> FileMark {
        #[cfg(unix)]
        let identity = {
            use std::os::unix::fs::MetadataExt;
            (meta.ino(), meta.ctime(), meta.ctime_nsec())
        };
        #[cfg(not(unix))]
        let identity = (0, 0, 0);
        FileMark {
            length: meta.len(),
            modified: meta.modified().ok(),
            identity,
        }
    }
}

impl Fingerprint {
    /// The files under `paths` (files or directories) as they are now. A path that cannot
    /// be read leaves its files out; reading it then tells why.
    pub fn of(paths: &[&Path]) -> Fingerprint {
        let mut files = Vec::new();
        for path in paths {
            match fs::metadata(path) {
                Ok(m) if m.is_dir() => {
                    // What could be listed: the error is the load's to report.
                    let _ = collect_yaml_files(path, 0, &mut files);
                }
                Ok(_) => files.push(path.to_path_buf()),
                Err(_) => {}
            }
        }
        let mut seen: Vec<_> = files
            .into_iter()
            .map(|file| {
                let mark = fs::metadata(&file).map(|m| FileMark::of(&m));
                (file, mark.unwrap_or_default())
            })
            .collect();
        seen.sort();
        Fingerprint(seen)
    }
}

fn collect_yaml_files(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) -> io::Result<()> {
    if depth > MAX_DIR_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // Symlinked directories are not followed (no loops); symlinked files are read.
        let file_type = entry.file_type()?;
        if file_type.is_dir() {
            collect_yaml_files(&path, depth + 1, out)?;
        } else if has_yaml_extension(&path) && fs::metadata(&path).is_ok_and(|m| m.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

fn has_yaml_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| YAML_EXTENSIONS.iter().any(|y| y.eq_ignore_ascii_case(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A change to a file that would be read, a file added or one removed, tells; what
    /// would not be read (hidden, not YAML) does not.
    #[test]
    fn a_fingerprint_tells_a_change_to_what_would_be_read() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let (a, nested) = (dir.path().join("a.yaml"), dir.path().join("more"));
        fs::write(&a, "kind: one\n").expect("write");
        fs::create_dir(&nested).expect("directory");
        let paths = [dir.path()];
        let first = Fingerprint::of(&paths);
        assert_eq!(first, Fingerprint::of(&paths), "nothing changed");
        fs::write(dir.path().join(".a.yaml.swp"), "x").expect("write");
        fs::write(dir.path().join("notes.txt"), "x").expect("write");
        assert_eq!(first, Fingerprint::of(&paths), "neither would be read");
        // The same length, written later: its time tells.
        let later = SystemTime::now() + std::time::Duration::from_secs(5);
        fs::write(&a, "kind: two\n").expect("write");
        let file = fs::File::options().write(true).open(&a).expect("open");
        file.set_modified(later).expect("set the time");
        let rewritten = Fingerprint::of(&paths);
        assert_ne!(first, rewritten, "a file rewritten");
        // Replaced by one of the same length and time, moved into place: a new file.
        let aside = dir.path().join(".a.yaml.new");
        fs::write(&aside, "kind: owt\n").expect("write");
        let file = fs::File::options().write(true).open(&aside).expect("open");
        file.set_modified(later).expect("set the time");
        fs::rename(&aside, &a).expect("move into place");
        let replaced = Fingerprint::of(&paths);
        assert_ne!(rewritten, replaced, "a file moved into place");
        let rewritten = replaced;
        fs::write(nested.join("b.yml"), "kind: three\n").expect("write");
        let added = Fingerprint::of(&paths);
        assert_ne!(rewritten, added, "a file added under a directory");
        fs::remove_file(nested.join("b.yml")).expect("remove");
        assert_eq!(rewritten, Fingerprint::of(&paths), "the file removed again");
        // A file given by its path, missing and then there.
        let alone = dir.path().join("alone.json");
        let missing = Fingerprint::of(&[alone.as_path()]);
        assert_eq!(missing, Fingerprint::default());
        fs::write(&alone, "{}").expect("write");
        assert_ne!(missing, Fingerprint::of(&[alone.as_path()]));
    }

    fn load(text: &str) -> ConfigSet {
        let mut config = ConfigSet::new();
        config.add_text("test.yaml", text);
        config.check_consistency();
        config
    }

    fn messages(config: &ConfigSet) -> Vec<String> {
        config.diagnostics().map(ToString::to_string).collect()
    }

    const CLUSTER: &str = "apiVersion: fulcrum.dev/v1alpha1\nkind: MeshCluster\n\
                           metadata: {name: NAME}\nspec:\n  clusterName: CLUSTER\n  \
                           locality: r/z\n  eastWestGateways: [{address: 127.0.0.1, port: 1}]\n";

    fn cluster(name: &str, cluster_name: &str) -> String {
        CLUSTER
            .replace("NAME", name)
            .replace("CLUSTER", cluster_name)
    }

    #[test]
    fn a_redefined_object_is_a_warning_and_the_last_definition_wins() {
        let config = load(&format!(
            "{}---\n{}",
            cluster("a", "east"),
            cluster("a", "east")
        ));
        assert!(!config.has_errors(), "{:?}", messages(&config));
        assert_eq!(
            messages(&config),
            [
                "test.yaml:11: warning: MeshCluster default/a: metadata.name: MeshCluster \
              default/a is also defined at test.yaml:1; the last definition wins"
            ]
        );
    }

    #[test]
    fn two_clusters_claiming_one_name_is_an_error() {
        let config = load(&format!(
            "{}---\n{}",
            cluster("a", "east"),
            cluster("b", "east")
        ));
        assert!(config.has_errors());
        assert_eq!(
            messages(&config),
            [
                "test.yaml:13: MeshCluster default/b: spec.clusterName: the cluster name \"east\" \
              is already used by MeshCluster default/a"
            ]
        );
    }

    #[test]
    fn two_policies_for_one_host_is_an_error() {
        let policy = |name: &str| {
            format!(
                "apiVersion: fulcrum.dev/v1alpha1\nkind: FailoverPolicy\nmetadata: {{name: {name}}}\n\
                 spec: {{host: checkout.shop.svc.cluster.local}}\n"
            )
        };
        let config = load(&format!("{}---\n{}", policy("one"), policy("two")));
        let rejected: Vec<_> = config.objects.iter().filter(|o| o.is_rejected()).collect();
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].object.as_ref().unwrap().name, "two");
    }

    #[test]
    fn undefined_subsets_are_warnings_at_their_field() {
        let config = load(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n\
             metadata: {name: r, namespace: shop}\n\
             spec: {host: reviews, subsets: [{name: v1}]}\n---\n\
             apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
             metadata: {name: r, namespace: shop}\nspec:\n  hosts: [reviews]\n  http:\n\
             \x20 - route:\n    - destination:\n        host: reviews.shop.svc.cluster.local\n\
             \x20       subset: v2\n",
        );
        assert!(!config.has_errors());
        assert_eq!(
            messages(&config),
            ["test.yaml:15: warning: VirtualService shop/r: \
              spec.http[0].route[0].destination.subset: subset \"v2\" of \
              reviews.shop.svc.cluster.local is not defined by its DestinationRule (it \
              defines: v1)"]
        );
    }

    #[test]
    fn list_items_are_objects_of_their_own() {
        let config = load(
            "apiVersion: v1\nkind: List\nitems:\n\
             - {apiVersion: v1, kind: ConfigMap, metadata: {name: cm}}\n\
             - {apiVersion: networking.istio.io/v1, kind: DestinationRule, metadata: {name: d}, \
             spec: {host: d}}\n",
        );
        assert_eq!(config.objects.len(), 2);
        assert!(matches!(config.objects[0].outcome, Outcome::Ignored { .. }));
        assert_eq!(config.resources().count(), 1);
        assert_eq!(config.objects[1].line, 5);
    }

    #[test]
    fn duplicate_keys_reject_the_object_at_their_path() {
        let config = load(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: d}\n\
             spec:\n  host: a\n  host: b\n",
        );
        assert!(config.has_errors());
        assert_eq!(
            messages(&config),
            [
                "test.yaml:6: DestinationRule default/d: spec.host: duplicate key \"host\" (first \
              set at line 5); the first value is kept"
            ]
        );
    }

    #[test]
    fn bytes_that_are_not_utf8_text_are_refused() {
        let mut config = ConfigSet::new();
        assert!(matches!(
            config.add_bytes("x", &[0xff, 0xfe, 0x41, 0x00]),
            Err(SourceError::NotText { .. })
        ));
        assert!(matches!(
            config.add_bytes("x", b"a: \xc3\x28"),
            Err(SourceError::NotText { .. })
        ));
        assert!(config.objects.is_empty());
    }
}
