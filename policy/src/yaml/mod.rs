//! YAML text to a tree of nodes that remember where they came from.
//!
//! The decoder needs three things a plain `serde` pass cannot give it: the line of every key
//! (for `FILE:LINE` diagnostics), the scalar style (a quoted `"80"` is a string, a plain `80`
//! is a number, as Kubernetes reads it) and the chance to keep going after the first problem.
//! So this module builds its own tree from the event stream of serde-saphyr's parser.
//!
//! It must never panic on input and never let input grow without bound: documents are capped
//! in size, nesting depth and node count (aliases are counted at their expanded size, so an
//! alias bomb is refused instead of being expanded).

mod builder;
mod scalar;

use std::fmt;

use serde_saphyr::granit_parser::{self, Parser};

use crate::path::FieldPath;
use builder::TreeBuilder;
pub use scalar::{Resolved, Scalar, ScalarTag};

/// Largest input accepted, in bytes. Kubernetes refuses objects above 3 MiB; a file holding
/// many of them is still far below this.
pub const DEFAULT_MAX_BYTES: usize = 8 * 1024 * 1024;
/// Largest number of nodes in one input, counting each alias at its expanded size.
pub const DEFAULT_MAX_NODES: usize = 1_000_000;
/// Deepest nesting of mappings and sequences. Istio resources nest about 10 levels.
pub const DEFAULT_MAX_DEPTH: usize = 64;

/// Resource limits for one parse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`DEFAULT_MAX_BYTES`].
    pub max_bytes: usize,
    /// See [`DEFAULT_MAX_NODES`].
    pub max_nodes: usize,
    /// See [`DEFAULT_MAX_DEPTH`].
    pub max_depth: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: DEFAULT_MAX_BYTES,
            max_nodes: DEFAULT_MAX_NODES,
            max_depth: DEFAULT_MAX_DEPTH,
        }
    }
}

/// A position in the source text; both numbers start at 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Mark {
    /// Line, from 1.
    pub line: u32,
    /// Column in characters, from 1.
    pub column: u32,
}

impl Mark {
    fn from_marker(m: &granit_parser::Marker) -> Mark {
        Mark {
            line: u32::try_from(m.line()).unwrap_or(u32::MAX),
            column: u32::try_from(m.col() + 1).unwrap_or(u32::MAX),
        }
    }
}

/// One node of the tree.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// What the node holds.
    pub value: Value,
    /// Where the node starts.
    pub mark: Mark,
}

/// The content of a [`Node`].
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A scalar, kept as written; [`Scalar::resolve`] says what it means.
    Scalar(Scalar),
    /// A sequence.
    Sequence(Vec<Node>),
    /// A mapping, in source order, without duplicate keys.
    Mapping(Vec<Entry>),
}

/// One `key: value` pair of a mapping.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The key text.
    pub key: String,
    /// Where the key is written.
    pub key_mark: Mark,
    /// The value.
    pub value: Node,
}

impl Node {
    /// The entries, when the node is a mapping.
    pub fn as_mapping(&self) -> Option<&[Entry]> {
        match &self.value {
            Value::Mapping(entries) => Some(entries),
            _ => None,
        }
    }

    /// The value stored under `key`, when the node is a mapping that has it.
    pub fn get(&self, key: &str) -> Option<&Entry> {
        self.as_mapping()?.iter().find(|e| e.key == key)
    }

    /// True for an explicit or implicit null.
    pub fn is_null(&self) -> bool {
        matches!(&self.value, Value::Scalar(s) if s.resolve() == Resolved::Null)
    }

    /// A short name for the kind of node, for error messages.
    pub fn describe(&self) -> &'static str {
        match &self.value {
            Value::Mapping(_) => "a mapping",
            Value::Sequence(_) => "a list",
            Value::Scalar(s) => match s.resolve() {
                Resolved::Null => "null",
                Resolved::Bool(_) => "a boolean",
                Resolved::Int(_) => "an integer",
                Resolved::Float(_) => "a number",
                Resolved::Str(_) => "a string",
                Resolved::Invalid(_) => "a tagged scalar",
            },
        }
    }

    fn size(&self) -> usize {
        1 + match &self.value {
            Value::Scalar(_) => 0,
            Value::Sequence(items) => items.iter().map(Node::size).sum(),
            Value::Mapping(entries) => entries.iter().map(|e| e.value.size()).sum(),
        }
    }
}

/// One YAML document of a stream.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    /// 1-based position of the document among the non-empty documents of the input.
    pub index: usize,
    /// The root node.
    pub root: Node,
    /// Problems that did not stop parsing (a duplicate key keeps its first value).
    pub problems: Vec<YamlProblem>,
}

/// A problem with the YAML itself, with the position the parser gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlProblem {
    /// Where the problem is.
    pub mark: Mark,
    /// The field it is about, when known (the document root otherwise).
    pub path: FieldPath,
    /// What is wrong, for an operator.
    pub message: String,
}

impl fmt::Display for YamlProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.mark.line, self.message)
    }
}

impl std::error::Error for YamlProblem {}

/// Parses every document of `text`. Empty documents (nothing, or only comments) and
/// documents that are just `null` are skipped, as `kubectl apply` does.
///
/// A syntax error or an exceeded limit stops the parse: the error names the line.
pub fn parse_documents(text: &str, limits: &Limits) -> Result<Vec<Document>, YamlProblem> {
    if text.len() > limits.max_bytes {
        return Err(YamlProblem {
            path: FieldPath::root(),
            mark: Mark { line: 1, column: 1 },
            message: format!(
                "input is {} bytes, more than the limit of {} bytes",
                text.len(),
                limits.max_bytes
            ),
        });
    }
    let mut options = granit_parser::Options::default();
    options.set_emit_comments(false);
    options.block_nesting_limit = limits.max_depth;
    options.flow_nesting_limit = limits.max_depth;
    let parser = Parser::new_from_str_with_options(text, options);
    let mut builder = TreeBuilder::new(text, limits);
    for event in parser {
        let (event, span) = event.map_err(|e| YamlProblem {
            path: FieldPath::root(),
            mark: Mark::from_marker(e.marker()),
            message: format!("YAML syntax error: {}", e.info()),
        })?;
        let start = span.start.byte_offset();
        let end = span.end.byte_offset();
        builder.event(event, Mark::from_marker(&span.start), start, end)?;
    }
    Ok(builder.documents)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Vec<Document> {
        parse_documents(text, &Limits::default()).expect("parses")
    }

    #[test]
    fn keys_remember_their_lines() {
        let docs = parse("a: 1\nb:\n  c: x\n");
        let root = &docs[0].root;
        assert_eq!(root.get("a").unwrap().key_mark.line, 1);
        let b = &root.get("b").unwrap().value;
        assert_eq!(b.get("c").unwrap().key_mark, Mark { line: 3, column: 3 });
    }

    #[test]
    fn quoted_scalars_are_strings_and_plain_ones_are_typed() {
        let docs = parse("a: \"80\"\nb: 80\nc: 1.5\nd: true\ne: ~\nf: 0x10\ng: v1\n");
        let root = &docs[0].root;
        let resolved = |k: &str| match &root.get(k).unwrap().value.value {
            Value::Scalar(s) => format!("{:?}", s.resolve()),
            other => format!("not a scalar: {other:?}"),
        };
        assert_eq!(resolved("a"), "Str(\"80\")");
        assert_eq!(resolved("b"), "Int(80)");
        assert_eq!(resolved("c"), "Float(1.5)");
        assert_eq!(resolved("d"), "Bool(true)");
        assert_eq!(resolved("e"), "Null");
        assert_eq!(resolved("f"), "Int(16)");
        assert_eq!(resolved("g"), "Str(\"v1\")");
    }

    #[test]
    fn empty_and_comment_only_documents_are_skipped() {
        let docs = parse("# only a comment\n---\na: 1\n---\n---\n# x\n---\nb: 2\n");
        assert_eq!(docs.len(), 2);
        assert_eq!(docs[0].index, 1);
        assert_eq!(docs[1].index, 2);
        assert_eq!(docs[1].root.get("b").unwrap().key_mark.line, 8);
    }

    #[test]
    fn duplicate_keys_keep_the_first_value_and_are_reported() {
        let docs = parse("a: 1\nb: 2\na: 3\n");
        let doc = &docs[0];
        assert_eq!(doc.problems.len(), 1);
        assert_eq!(doc.problems[0].mark.line, 3);
        assert_eq!(doc.problems[0].path.to_string(), "a");
        assert!(doc.problems[0].message.contains("first set at line 1"));
        let a = &doc.root.get("a").unwrap().value;
        assert!(matches!(&a.value, Value::Scalar(s) if s.text == "1"));
    }

    #[test]
    fn aliases_and_merge_keys_expand() {
        let docs = parse("base: &b {x: 1, y: 2}\nc:\n  <<: *b\n  y: 3\nd: *b\n");
        let root = &docs[0].root;
        let c = &root.get("c").unwrap().value;
        let text = |n: &Node, k: &str| match &n.get(k).unwrap().value.value {
            Value::Scalar(s) => s.text.clone(),
            _ => String::new(),
        };
        assert_eq!(text(c, "x"), "1");
        assert_eq!(text(c, "y"), "3");
        assert_eq!(text(&root.get("d").unwrap().value, "y"), "2");
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..9 {
            let prev = i - 1;
            text.push_str(&format!(
                "a{i}: &a{i} [*a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, *a{prev}, \
                 *a{prev}, *a{prev}, *a{prev}, *a{prev}]\n"
            ));
        }
        let err = parse_documents(&text, &Limits::default()).unwrap_err();
        assert!(err.message.contains("expanded size"), "{err}");
    }

    #[test]
    fn deep_nesting_is_refused() {
        let text = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_documents(&text, &Limits::default()).is_err());
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let err = parse_documents("a: 1\nb: [1, 2\nc: 3\n", &Limits::default()).unwrap_err();
        assert!(err.mark.line >= 2, "{err}");
        assert!(err.message.starts_with("YAML syntax error"), "{err}");
    }

    #[test]
    fn oversized_input_is_refused() {
        let limits = Limits {
            max_bytes: 10,
            ..Limits::default()
        };
        assert!(parse_documents("a: 123456789012", &limits).is_err());
    }

    #[test]
    fn colons_in_flow_collections_read_as_go_yaml_reads_them() {
        let docs = parse("a: [1.2.3.4, 001:db8::, x: y, p:]\nb: {k:}\nc: [x: , y]\n");
        let root = &docs[0].root;
        let Value::Sequence(items) = &root.get("a").unwrap().value.value else {
            panic!("a is not a list");
        };
        let text = |n: &Node| match &n.value {
            Value::Scalar(s) => s.text.clone(),
            other => format!("{other:?}"),
        };
        assert_eq!(text(&items[1]), "001:db8::");
        assert!(items[2].get("x").is_some(), "a real pair stays a pair");
        assert_eq!(text(&items[3]), "p:");
        assert!(root.get("b").unwrap().value.get("k:").is_some());
        let Value::Sequence(items) = &root.get("c").unwrap().value.value else {
            panic!("c is not a list");
        };
        assert!(
            items[0].get("x").is_some(),
            "a blank after the colon makes a pair"
        );
    }

    #[test]
    fn complex_keys_are_refused() {
        assert!(parse_documents("? [a, b]\n: c\n", &Limits::default()).is_err());
    }
}
