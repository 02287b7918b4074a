//! Field paths in the form operators know from `kubectl`: `spec.http[1].route[0].weight`,
//! `metadata.labels[app]`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// One step of a [`FieldPath`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Segment {
    /// A field of an object: `.name`.
    Field(String),
    /// An element of a list: `[3]`.
    Index(usize),
    /// An entry of a map: `[key]`.
    Key(String),
}

/// A path from the document root to a field. The empty path is the document itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FieldPath(Vec<Segment>);

impl FieldPath {
    /// The empty path: the document itself.
    pub fn root() -> Self {
        FieldPath(Vec::new())
    }

    /// Parses the text form back into a path (`spec.ports[0].number`). Map keys and list
    /// indexes are told apart by whether the bracket holds only digits.
    pub fn parse(text: &str) -> Self {
        let mut path = FieldPath::root();
        let mut rest = text;
        while !rest.is_empty() {
            if let Some(after) = rest.strip_prefix('[') {
                let end = after.find(']').unwrap_or(after.len());
                let inner = &after[..end];
                match inner.parse::<usize>() {
                    Ok(i) => path.push_index(i),
                    Err(_) => path.push_key(inner),
                }
                rest = after.get(end + 1..).unwrap_or("");
            } else {
                let rest_no_dot = rest.strip_prefix('.').unwrap_or(rest);
                let end = rest_no_dot.find(['.', '[']).unwrap_or(rest_no_dot.len());
                path.push_field(&rest_no_dot[..end]);
                rest = &rest_no_dot[end..];
            }
        }
        path
    }

    /// The steps of the path.
    pub fn segments(&self) -> &[Segment] {
        &self.0
    }

    /// True for the empty path.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// Appends a field step.
    pub fn push_field(&mut self, name: &str) {
        self.0.push(Segment::Field(name.to_string()));
    }

    /// Appends a list index step.
    pub fn push_index(&mut self, index: usize) {
        self.0.push(Segment::Index(index));
    }

    /// Appends a map key step.
    pub fn push_key(&mut self, key: &str) {
        self.0.push(Segment::Key(key.to_string()));
    }

    /// Removes the last step.
    pub fn pop(&mut self) {
        self.0.pop();
    }

    /// This path with a field step appended.
    pub fn field(&self, name: &str) -> FieldPath {
        let mut p = self.clone();
        p.push_field(name);
        p
    }

    /// True when `self` is `ancestor` or lies under it.
    pub fn starts_with(&self, ancestor: &FieldPath) -> bool {
        self.0.starts_with(&ancestor.0)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, segment) in self.0.iter().enumerate() {
            match segment {
                Segment::Field(name) if i == 0 => f.write_str(name)?,
                Segment::Field(name) => write!(f, ".{name}")?,
                Segment::Index(index) => write!(f, "[{index}]")?,
                Segment::Key(key) => write!(f, "[{key}]")?,
            }
        }
        Ok(())
    }
}

impl Serialize for FieldPath {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for FieldPath {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ok(FieldPath::parse(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_kubectl() {
        let mut p = FieldPath::root();
        p.push_field("spec");
        p.push_field("http");
        p.push_index(1);
        p.push_field("route");
        p.push_index(0);
        p.push_field("weight");
        assert_eq!(p.to_string(), "spec.http[1].route[0].weight");
        let mut q = FieldPath::root();
        q.push_field("metadata");
        q.push_field("labels");
        q.push_key("app");
        assert_eq!(q.to_string(), "metadata.labels[app]");
    }

    #[test]
    fn parse_inverts_display() {
        for text in [
            "spec.http[1].route[0].weight",
            "metadata.labels[app]",
            "spec",
            "",
        ] {
            assert_eq!(FieldPath::parse(text).to_string(), text);
        }
    }

    #[test]
    fn ancestry() {
        let spec = FieldPath::parse("spec.hosts");
        assert!(FieldPath::parse("spec.hosts[0]").starts_with(&spec));
        assert!(!FieldPath::parse("spec.host").starts_with(&spec));
    }
}
