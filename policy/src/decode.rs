//! Turning a YAML tree into typed models, collecting every problem on the way.
//!
//! A decoder never stops at the first problem: a field of the wrong type is reported with its
//! path and line and replaced by its default, so the rest of the document is still read and
//! checked. A resource with any error is rejected as a whole by the loader, so those
//! placeholder defaults never reach a user of the model.
//!
//! Each model type is declared once with [`model!`]: the same line gives the Rust field, its
//! wire name (used by serde for output and storage) and whether it is required (used here).

use std::collections::BTreeMap;

use crate::diag::Finding;
use crate::path::FieldPath;
use crate::yaml::{Entry, Mark, Node, Resolved, Value};

/// Reads typed values from a [`Node`] tree, tracking the field path and collecting findings.
#[derive(Debug, Default)]
pub struct Decoder {
    path: FieldPath,
    findings: Vec<Finding>,
    strict: bool,
}

impl Decoder {
    /// A decoder positioned at the document root.
    pub fn new() -> Self {
        Decoder::default()
    }

    /// A decoder for formats Fulcrum owns outright (such as simulation scenarios), where an
    /// unknown field is an error rather than a warning.
    pub fn strict() -> Self {
        Decoder {
            strict: true,
            ..Decoder::default()
        }
    }

    /// The findings collected so far.
    pub fn into_findings(self) -> Vec<Finding> {
        self.findings
    }

    /// Records an error at the current path.
    pub fn error(&mut self, mark: Mark, message: impl Into<String>) {
        self.findings
            .push(Finding::error(self.path.clone(), message).at(mark));
    }

    /// Records a warning at the current path.
    pub fn warn(&mut self, mark: Mark, message: impl Into<String>) {
        self.findings
            .push(Finding::warning(self.path.clone(), message).at(mark));
    }

    /// Runs `f` one field deeper.
    pub fn in_field<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push_field(name);
        let out = f(self);
        self.path.pop();
        out
    }

    fn in_index<T>(&mut self, index: usize, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push_index(index);
        let out = f(self);
        self.path.pop();
        out
    }

    fn in_key<T>(&mut self, key: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.path.push_key(key);
        let out = f(self);
        self.path.pop();
        out
    }
}

/// A type that can be read from YAML with findings instead of a hard failure.
///
/// On a problem, `decode` records it and returns the default value, so decoding goes on.
/// A null node decodes to the default, as Kubernetes treats `field: null` as unset.
pub trait Decode: Default {
    /// Reads `node`.
    fn decode(node: &Node, d: &mut Decoder) -> Self;
}

/// Serde helper: fields equal to their default are left out of the output, so the YAML a
/// model writes is as short as the YAML a person would write.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn scalar(node: &Node) -> Option<Resolved<'_>> {
    match &node.value {
        Value::Scalar(s) => Some(s.resolve()),
        _ => None,
    }
}

fn type_error(d: &mut Decoder, node: &Node, expected: &str) {
    let found = node.describe();
    let hint = match scalar(node) {
        Some(Resolved::Int(_) | Resolved::Float(_) | Resolved::Bool(_))
            if expected == "a string" =>
        {
            let text = match &node.value {
                Value::Scalar(s) => s.text.as_str(),
                _ => "",
            };
            format!(" (write it in quotes, \"{text}\", to make it a string)")
        }
        Some(Resolved::Invalid(reason)) => format!(": {reason}"),
        _ => String::new(),
    };
    d.error(
        node.mark,
        format!("expected {expected}, found {found}{hint}"),
    );
}

impl Decode for String {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        match scalar(node) {
            Some(Resolved::Str(s)) => s.to_string(),
            Some(Resolved::Null) => String::new(),
            _ => {
                type_error(d, node, "a string");
                String::new()
            }
        }
    }
}

impl Decode for bool {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        match scalar(node) {
            Some(Resolved::Bool(b)) => b,
            Some(Resolved::Null) => false,
            _ => {
                type_error(d, node, "true or false");
                false
            }
        }
    }
}

macro_rules! decode_integer {
    ($($ty:ty),*) => {$(
        impl Decode for $ty {
            fn decode(node: &Node, d: &mut Decoder) -> Self {
                match scalar(node) {
                    Some(Resolved::Int(i)) => match <$ty>::try_from(i) {
                        Ok(v) => v,
                        Err(_) => {
                            d.error(node.mark, format!(
                                "{i} is out of range: must be between {} and {}",
                                <$ty>::MIN, <$ty>::MAX
                            ));
                            0
                        }
                    },
                    Some(Resolved::Null) => 0,
                    _ => {
                        type_error(d, node, "an integer");
                        0
                    }
                }
            }
        }
    )*};
}

decode_integer!(i32, u32, i64, u64);

impl Decode for f64 {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        match scalar(node) {
            Some(Resolved::Int(i)) => i as f64,
            Some(Resolved::Float(f)) if f.is_finite() => f,
            Some(Resolved::Float(_)) => {
                d.error(node.mark, "must be a finite number");
                0.0
            }
            Some(Resolved::Null) => 0.0,
            _ => {
                type_error(d, node, "a number");
                0.0
            }
        }
    }
}

impl<T: Decode> Decode for Option<T> {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        if node.is_null() {
            None
        } else {
            Some(T::decode(node, d))
        }
    }
}

impl<T: Decode> Decode for Vec<T> {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        match &node.value {
            Value::Sequence(items) => items
                .iter()
                .enumerate()
                .map(|(i, item)| d.in_index(i, |d| T::decode(item, d)))
                .collect(),
            _ if node.is_null() => Vec::new(),
            _ => {
                type_error(d, node, "a list");
                Vec::new()
            }
        }
    }
}

impl<T: Decode> Decode for BTreeMap<String, T> {
    fn decode(node: &Node, d: &mut Decoder) -> Self {
        match &node.value {
            Value::Mapping(entries) => entries
                .iter()
                .map(|e| {
                    let value = d.in_key(&e.key, |d| T::decode(&e.value, d));
                    (e.key.clone(), value)
                })
                .collect(),
            _ if node.is_null() => BTreeMap::new(),
            _ => {
                type_error(d, node, "a mapping");
                BTreeMap::new()
            }
        }
    }
}

/// Reads the fields of one mapping, remembering which keys were read so the rest can be
/// reported as unknown.
pub struct Fields<'n> {
    mark: Mark,
    entries: &'n [Entry],
    read: Vec<bool>,
}

impl<'n> Fields<'n> {
    /// Opens `node` as an object. Null is an empty object; anything else that is not a
    /// mapping is an error and gives `None`.
    pub fn open(node: &'n Node, d: &mut Decoder) -> Option<Fields<'n>> {
        match &node.value {
            Value::Mapping(entries) => Some(Fields {
                mark: node.mark,
                entries,
                read: vec![false; entries.len()],
            }),
            _ if node.is_null() => Some(Fields {
                mark: node.mark,
                entries: &[],
                read: Vec::new(),
            }),
            _ => {
                type_error(d, node, "a mapping");
                None
            }
        }
    }

    /// The entry for `wire`, marked as read.
    pub fn take(&mut self, wire: &str) -> Option<&'n Entry> {
        let i = self.entries.iter().position(|e| e.key == wire)?;
        self.read[i] = true;
        Some(&self.entries[i])
    }

    /// Reads an optional field: absent and null give the default.
    pub fn optional<T: Decode>(&mut self, d: &mut Decoder, wire: &str) -> T {
        match self.take(wire) {
            Some(entry) => d.in_field(wire, |d| T::decode(&entry.value, d)),
            None => T::default(),
        }
    }

    /// Reads a required field: absent or null is an error at the field's path.
    pub fn required<T: Decode>(&mut self, d: &mut Decoder, wire: &str) -> T {
        let mark = self.mark;
        match self.take(wire) {
            Some(entry) if !entry.value.is_null() => {
                d.in_field(wire, |d| T::decode(&entry.value, d))
            }
            Some(entry) => {
                d.in_field(wire, |d| d.error(entry.key_mark, "required field is null"));
                T::default()
            }
            None => {
                d.in_field(wire, |d| d.error(mark, "required field is missing"));
                T::default()
            }
        }
    }

    /// Marks `wire` as known without reading it (a field Fulcrum deliberately ignores).
    pub fn skip(&mut self, wire: &str) {
        let _ = self.take(wire);
    }

    /// Reports every key that was not read as an unknown field: a warning (Kubernetes
    /// prunes unknown fields rather than rejecting the object), or an error for a strict
    /// decoder.
    pub fn finish(self, d: &mut Decoder, known: &[&str]) {
        for (entry, read) in self.entries.iter().zip(self.read) {
            if read {
                continue;
            }
            let hint = match suggest(&entry.key, known) {
                Some(s) => format!("; did you mean {s:?}?"),
                None => String::new(),
            };
            d.in_field(&entry.key, |d| {
                if d.strict {
                    d.error(
                        entry.key_mark,
                        format!("unknown field {:?}{hint}", entry.key),
                    )
                } else {
                    d.warn(
                        entry.key_mark,
                        format!("unknown field {:?} is ignored{hint}", entry.key),
                    )
                }
            });
        }
    }
}

/// The known field an unknown one was probably meant to be: the same name in another case
/// or spelling (`max_ejection_percent` for `maxEjectionPercent`), or one typo away.
pub fn suggest<'k>(unknown: &str, known: &[&'k str]) -> Option<&'k str> {
    let squash = |s: &str| -> String {
        s.chars()
            .filter(|c| *c != '_' && *c != '-')
            .flat_map(char::to_lowercase)
            .collect()
    };
    let target = squash(unknown);
    if let Some(k) = known.iter().find(|k| squash(k) == target) {
        return Some(k);
    }
    known
        .iter()
        .map(|k| (edit_distance(&squash(k), &target), *k))
        .filter(|(dist, k)| *dist <= 2 && k.len() > 3)
        .min_by_key(|(dist, _)| *dist)
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut previous: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let substitution = previous[j] + usize::from(ca != *cb);
            current[j + 1] = substitution.min(previous[j + 1] + 1).min(current[j] + 1);
        }
        previous = current;
    }
    previous[b.len()]
}

/// Declares a model struct whose fields are read by the [`Decoder`] and written by serde
/// under the same wire names.
///
/// Each field is `required` or `optional`, then `name: Type = "wireName"`.
macro_rules! model {
    (
        $(#[$meta:meta])*
        pub struct $name:ident {
            $(
                $(#[$fmeta:meta])*
                $presence:ident $field:ident : $ty:ty = $wire:literal
            ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(default)]
        pub struct $name {
            $(
                $(#[$fmeta])*
                #[serde(rename = $wire, skip_serializing_if = "crate::decode::is_default")]
                pub $field: $ty,
            )*
        }

        impl $name {
            /// The wire names of the fields, in declaration order.
            pub const FIELDS: &'static [&'static str] = &[$($wire),*];
        }

        impl crate::decode::Decode for $name {
            fn decode(node: &crate::yaml::Node, d: &mut crate::decode::Decoder) -> Self {
                let Some(mut fields) = crate::decode::Fields::open(node, d) else {
                    return Self::default();
                };
                let value = Self {
                    $($field: fields.$presence(d, $wire),)*
                };
                fields.finish(d, Self::FIELDS);
                value
            }
        }
    };
}

/// Declares an enum written as one of a fixed set of strings (`ROUND_ROBIN`, `DNS`, ...).
macro_rules! string_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $(
                $(#[$vmeta:meta])*
                $variant:ident = $wire:literal
            ),* $(,)?
        }
        default $default:ident;
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash,
                 serde::Serialize, serde::Deserialize)]
        pub enum $name {
            $(
                $(#[$vmeta])*
                #[serde(rename = $wire)]
                $variant,
            )*
        }

        impl Default for $name {
            fn default() -> Self {
                $name::$default
            }
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];

            /// The value as written in YAML.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $wire,)*
                }
            }

            /// Parses the YAML form (exact match, as Kubernetes does).
            pub fn parse(text: &str) -> Option<Self> {
                match text {
                    $($wire => Some($name::$variant),)*
                    _ => None,
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl crate::decode::Decode for $name {
            fn decode(node: &crate::yaml::Node, d: &mut crate::decode::Decoder) -> Self {
                let names: Vec<&str> = Self::ALL.iter().map(|v| v.as_str()).collect();
                crate::decode::decode_enum(node, d, &names, Self::parse)
                    .unwrap_or_default()
            }
        }
    };
}

/// Reads a string that must be one of `names`, naming the choices (and a near miss) when
/// it is not.
pub fn decode_enum<T>(
    node: &Node,
    d: &mut Decoder,
    names: &[&str],
    parse: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let text = match scalar(node) {
        Some(Resolved::Str(s)) => s,
        Some(Resolved::Null) => return None,
        _ => {
            type_error(d, node, &format!("one of {}", names.join(", ")));
            return None;
        }
    };
    if let Some(value) = parse(text) {
        return Some(value);
    }
    let hint = match names.iter().find(|n| n.eq_ignore_ascii_case(text)) {
        Some(n) => format!("; did you mean {n:?}?"),
        None => String::new(),
    };
    d.error(
        node.mark,
        format!(
            "unsupported value {text:?}: must be one of {}{hint}",
            names.join(", ")
        ),
    );
    None
}

pub(crate) use {model, string_enum};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{Limits, parse_documents};

    model! {
        /// A test object.
        pub struct Probe {
            required name: String = "name",
            optional port: u32 = "port",
            optional weight: Option<i32> = "weight",
            optional labels: BTreeMap<String, String> = "labels",
            optional items: Vec<Inner> = "items",
        }
    }

    model! {
        /// A nested test object.
        pub struct Inner {
            optional enabled: bool = "enabled",
        }
    }

    fn decode(text: &str) -> (Probe, Vec<Finding>) {
        let docs = parse_documents(text, &Limits::default()).unwrap();
        let mut d = Decoder::new();
        let p = Probe::decode(&docs[0].root, &mut d);
        (p, d.into_findings())
    }

    fn rendered(findings: &[Finding]) -> Vec<String> {
        findings
            .iter()
            .map(|f| {
                format!(
                    "{:?} {} line {}: {}",
                    f.severity,
                    f.path,
                    f.mark.map(|m| m.line).unwrap_or(0),
                    f.message
                )
            })
            .collect()
    }

    #[test]
    fn reads_a_valid_object() {
        let (p, findings) = decode("name: a\nport: 80\nlabels: {app: x}\nitems: [{enabled: true}]");
        assert!(findings.is_empty(), "{findings:?}");
        assert_eq!(p.name, "a");
        assert_eq!(p.port, 80);
        assert_eq!(p.labels["app"], "x");
        assert!(p.items[0].enabled);
    }

    #[test]
    fn reports_every_problem_with_its_path_and_line() {
        let text = "port: -1\nweight: \"3\"\nitems:\n- enabled: yes\n- enabeld: true\nextra: 1\n";
        let (_, findings) = decode(text);
        assert_eq!(
            rendered(&findings),
            vec![
                "Error name line 1: required field is missing",
                "Error port line 1: -1 is out of range: must be between 0 and 4294967295",
                "Error weight line 2: expected an integer, found a string",
                "Error items[0].enabled line 4: expected true or false, found a string",
                "Warning items[1].enabeld line 5: unknown field \"enabeld\" is ignored; did you \
                 mean \"enabled\"?",
                "Warning extra line 6: unknown field \"extra\" is ignored",
            ]
        );
    }

    #[test]
    fn numbers_where_strings_belong_get_a_quoting_hint() {
        let (_, findings) = decode("name: 1.10\n");
        assert!(
            findings[0].message.contains("write it in quotes, \"1.10\""),
            "{findings:?}"
        );
    }

    #[test]
    fn suggestions_catch_other_spellings_and_typos() {
        let known = ["maxEjectionPercent", "interval", "baseEjectionTime"];
        assert_eq!(
            suggest("max_ejection_percent", &known),
            Some("maxEjectionPercent")
        );
        assert_eq!(suggest("intreval", &known), Some("interval"));
        assert_eq!(suggest("somethingElse", &known), None);
    }
}
