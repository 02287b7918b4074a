//! Fulcrum must read Istio's configuration as Istio does. These tests run the loader over
//! Istio's own sample and validation corpus, read in place from `../shared/istio-samples`
//! (or `$FULCRUM_ISTIO_SAMPLES`): every file loads, `*-valid` documents are accepted, and
//! every `*-invalid` document is rejected for the reason Istio gives in its `_err` key.

use std::path::{Path, PathBuf};

use fulcrum_policy::resource::{Outcome, decode_object};
use fulcrum_policy::yaml::{Limits, Resolved, Value, parse_documents};
use fulcrum_policy::{ConfigSet, Severity};

fn corpus() -> PathBuf {
    let dir = std::env::var_os("FULCRUM_ISTIO_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/istio-samples")
        });
    assert!(
        dir.join("validation").is_dir(),
        "Istio's sample corpus is not at {}; set FULCRUM_ISTIO_SAMPLES to its directory",
        dir.display()
    );
    dir
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

fn is_invalid_case(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|n| n.to_string_lossy().ends_with("-invalid.yaml"))
}

#[test]
fn every_corpus_file_loads_and_every_sample_is_accepted() {
    let files = yaml_files(&corpus());
    assert!(files.len() > 30, "found only {} files", files.len());
    for file in &files {
        let mut config = ConfigSet::new();
        config.add_path(file);
        assert!(
            config.source_errors.is_empty(),
            "{}: {:?}",
            file.display(),
            config.source_errors
        );
        assert!(!config.objects.is_empty(), "{}: no objects", file.display());
        if is_invalid_case(file) {
            continue;
        }
        let errors: Vec<String> = config
            .diagnostics()
            .filter(|d| d.is_error())
            .map(|d| d.to_string())
            .collect();
        assert!(
            errors.is_empty(),
            "{}:\n{}",
            file.display(),
            errors.join("\n")
        );
    }
}

#[test]
fn kinds_fulcrum_does_not_handle_are_ignored_not_errors() {
    let mut config = ConfigSet::new();
    config.add_path(&corpus().join("bookinfo/bookinfo-gateway.yaml"));
    let ignored: Vec<_> = config
        .objects
        .iter()
        .filter(|o| matches!(&o.outcome, Outcome::Ignored { kind, .. } if kind == "Gateway"))
        .collect();
    assert_eq!(ignored.len(), 1);
    assert_eq!(
        config.resources().count(),
        1,
        "the VirtualService is still read"
    );
}

#[test]
fn valid_cases_are_accepted() {
    let dir = corpus().join("validation");
    let mut checked = 0;
    for file in yaml_files(&dir) {
        if !file.to_string_lossy().ends_with("-valid.yaml") {
            continue;
        }
        let mut config = ConfigSet::new();
        config.add_path(&file);
        for object in &config.objects {
            let errors: Vec<String> = object
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.to_string())
                .collect();
            assert!(
                matches!(object.outcome, Outcome::Accepted(_)),
                "{}: document {} rejected:\n{}",
                file.display(),
                object.document,
                errors.join("\n")
            );
            checked += 1;
        }
    }
    assert!(checked >= 14, "only {checked} valid documents checked");
}

/// Splits Istio's `_err` into a field path (`spec.hosts`) and a reason, when it has a path.
fn expected_path(err: &str) -> Option<&str> {
    let (head, _) = err.split_once(": ")?;
    let looks_like_path =
        (head == "spec" || head.starts_with("spec.") || head.starts_with("metadata"))
            && head
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '[' | ']' | '_'));
    looks_like_path.then_some(head)
}

#[test]
fn invalid_cases_are_rejected_for_istios_reason() {
    let dir = corpus().join("validation");
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in yaml_files(&dir) {
        if !is_invalid_case(&file) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in parse_documents(&text, &Limits::default()).unwrap() {
            let mut root = doc.root.clone();
            let Value::Mapping(entries) = &mut root.value else {
                panic!(
                    "{}: document {} is not a mapping",
                    file.display(),
                    doc.index
                );
            };
            let position = entries
                .iter()
                .position(|e| e.key == "_err")
                .unwrap_or_else(|| {
                    panic!("{}: document {} has no _err", file.display(), doc.index)
                });
            let err = match &entries.remove(position).value.value {
                Value::Scalar(s) => match s.resolve() {
                    Resolved::Str(text) => text.to_string(),
                    other => panic!("_err is not a string: {other:?}"),
                },
                other => panic!("_err is not a scalar: {other:?}"),
            };
            let decoded = decode_object(&root);
            let errors: Vec<_> = decoded
                .findings
                .iter()
                .filter(|f| f.severity == Severity::Error)
                .collect();
            let rendered: Vec<String> = errors
                .iter()
                .map(|f| format!("{}: {}", f.path, f.message))
                .collect();
            let case = format!("{} document {} ({err})", file.display(), doc.index);
            if !matches!(decoded.outcome, Outcome::Rejected) {
                failures.push(format!("{case}: accepted"));
            } else if let Some(path) = expected_path(&err) {
                if !errors.iter().any(|f| f.path.to_string() == path) {
                    failures.push(format!("{case}: no error at {path}; got {rendered:?}"));
                }
            } else {
                let reason = err.to_lowercase();
                if !errors
                    .iter()
                    .any(|f| f.message.to_lowercase().contains(&reason))
                {
                    failures.push(format!("{case}: no error says {err:?}; got {rendered:?}"));
                }
            }
            checked += 1;
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    assert!(checked >= 20, "only {checked} invalid documents checked");
}
