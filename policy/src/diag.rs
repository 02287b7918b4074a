//! Diagnostics: what is wrong (or worth a second look), and exactly where.
//!
//! A [`Diagnostic`] names the file, the line, the object (`DestinationRule shop/checkout`)
//! and the field path, and renders as `FILE:LINE: KIND ns/name: PATH: reason`, the form
//! `fulcrumctl validate` prints.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::path::FieldPath;
use crate::yaml::Mark;

/// How serious a diagnostic is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The resource is rejected.
    Error,
    /// The resource is accepted, but something in it is probably not what was meant.
    Warning,
}

/// A problem found inside one document, before it is placed in its file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// The field the finding is about.
    pub path: FieldPath,
    /// Where in the text, when known already; otherwise the path is looked up.
    pub mark: Option<Mark>,
    /// The reason, for an operator.
    pub message: String,
}

impl Finding {
    /// An error at `path`.
    pub fn error(path: FieldPath, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Error,
            path,
            mark: None,
            message: message.into(),
        }
    }

    /// A warning at `path`.
    pub fn warning(path: FieldPath, message: impl Into<String>) -> Self {
        Finding {
            severity: Severity::Warning,
            path,
            mark: None,
            message: message.into(),
        }
    }

    /// The same finding, pinned to a position in the text.
    pub fn at(mut self, mark: Mark) -> Self {
        self.mark = Some(mark);
        self
    }
}

/// Which object a diagnostic is about.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ObjectRef {
    /// `DestinationRule`, `FailoverPolicy`, ...
    pub kind: String,
    /// The namespace (`default` when the document gives none).
    pub namespace: String,
    /// The object's name.
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A finding placed in its source: file, document, line and object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Diagnostic {
    /// Error or warning.
    pub severity: Severity,
    /// The file (or `<stdin>`, or the name a caller gave the bytes).
    pub source: String,
    /// 1-based position of the document in the file (empty documents are not counted).
    pub document: usize,
    /// 1-based line, as close to the field as the text allows.
    pub line: u32,
    /// The object, when the document got far enough to name one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<ObjectRef>,
    /// The field path; empty when the problem is with the document as a whole.
    pub path: FieldPath,
    /// The reason, for an operator.
    pub message: String,
}

impl Diagnostic {
    /// True for errors.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.source, self.line)?;
        if self.severity == Severity::Warning {
            f.write_str("warning: ")?;
        }
        match &self.object {
            Some(object) => write!(f, "{object}: ")?,
            None if self.document > 0 => write!(f, "document {}: ", self.document)?,
            None => {}
        }
        if !self.path.is_root() {
            write!(f, "{}: ", self.path)?;
        }
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_file_line_object_path_reason() {
        let d = Diagnostic {
            severity: Severity::Error,
            source: "mesh.yaml".into(),
            document: 2,
            line: 14,
            object: Some(ObjectRef {
                kind: "VirtualService".into(),
                namespace: "shop".into(),
                name: "checkout".into(),
            }),
            path: FieldPath::parse("spec.http[1].route[0].weight"),
            message: "weight -1 is negative".into(),
        };
        assert_eq!(
            d.to_string(),
            "mesh.yaml:14: VirtualService shop/checkout: spec.http[1].route[0].weight: \
             weight -1 is negative"
        );
    }

    #[test]
    fn warnings_and_anonymous_documents_say_so() {
        let d = Diagnostic {
            severity: Severity::Warning,
            source: "x.yaml".into(),
            document: 3,
            line: 1,
            object: None,
            path: FieldPath::root(),
            message: "empty".into(),
        };
        assert_eq!(d.to_string(), "x.yaml:1: warning: document 3: empty");
    }
}
