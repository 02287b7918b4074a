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

use std::collections::HashMap;
use std::fmt;

use crate::path::FieldPath;
use serde_saphyr::granit_parser::{self, Event, Parser, ScalarStyle, StructureStyle};

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

/// A scalar exactly as written, with its style and explicit tag.
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    /// The text after escape processing.
    pub text: String,
    /// Plain scalars are typed by their content; every other style is a string.
    pub plain: bool,
    /// The explicit tag, if one was written.
    pub tag: Option<ScalarTag>,
}

/// The explicit tags a scalar may carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScalarTag {
    /// `!!str` or the non-specific `!`.
    Str,
    /// `!!int`.
    Int,
    /// `!!float`.
    Float,
    /// `!!bool`.
    Bool,
    /// `!!null`.
    Null,
    /// Any other tag, which Fulcrum does not interpret.
    Other(String),
}

/// What a scalar means under the YAML 1.2 core schema (the one Kubernetes tooling follows for
/// these forms), or which explicit tag made it so.
#[derive(Debug, Clone, PartialEq)]
pub enum Resolved<'a> {
    /// `~`, `null`, or nothing.
    Null,
    /// `true` or `false`.
    Bool(bool),
    /// A decimal, `0x` hexadecimal or `0o` octal integer.
    Int(i128),
    /// A floating point number (including `.inf` and `.nan`).
    Float(f64),
    /// Anything else, or any quoted or block scalar.
    Str(&'a str),
    /// An explicit tag whose content does not parse, or an unknown tag.
    Invalid(String),
}

impl Scalar {
    /// Resolves the scalar to a typed value.
    pub fn resolve(&self) -> Resolved<'_> {
        let text = self.text.as_str();
        match &self.tag {
            Some(ScalarTag::Str) => Resolved::Str(text),
            Some(ScalarTag::Null) => Resolved::Null,
            Some(ScalarTag::Bool) => match parse_bool(text) {
                Some(b) => Resolved::Bool(b),
                None => Resolved::Invalid(format!("{text:?} is not a boolean")),
            },
            Some(ScalarTag::Int) => match parse_int(text) {
                Some(i) => Resolved::Int(i),
                None => Resolved::Invalid(format!("{text:?} is not an integer")),
            },
            Some(ScalarTag::Float) => match parse_int(text)
                .map(|i| i as f64)
                .or_else(|| parse_float(text))
            {
                Some(f) => Resolved::Float(f),
                None => Resolved::Invalid(format!("{text:?} is not a number")),
            },
            Some(ScalarTag::Other(tag)) => {
                Resolved::Invalid(format!("the YAML tag {tag} is not supported here"))
            }
            None if !self.plain => Resolved::Str(text),
            None => {
                if matches!(text, "" | "~" | "null" | "Null" | "NULL") {
                    Resolved::Null
                } else if let Some(b) = parse_bool(text) {
                    Resolved::Bool(b)
                } else if let Some(i) = parse_int(text) {
                    Resolved::Int(i)
                } else if let Some(f) = parse_float(text) {
                    Resolved::Float(f)
                } else {
                    Resolved::Str(text)
                }
            }
        }
    }
}

fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "true" | "True" | "TRUE" => Some(true),
        "false" | "False" | "FALSE" => Some(false),
        _ => None,
    }
}

fn parse_int(text: &str) -> Option<i128> {
    let (negative, digits) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let magnitude = if let Some(hex) = digits.strip_prefix("0x") {
        if hex.is_empty() || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        i128::from_str_radix(hex, 16).ok()?
    } else if let Some(oct) = digits.strip_prefix("0o") {
        if oct.is_empty() || !oct.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
            return None;
        }
        i128::from_str_radix(oct, 8).ok()?
    } else {
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse::<i128>().ok()?
    };
    Some(if negative { -magnitude } else { magnitude })
}

fn parse_float(text: &str) -> Option<f64> {
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    match unsigned {
        ".inf" | ".Inf" | ".INF" => {
            return Some(if text.starts_with('-') {
                f64::NEG_INFINITY
            } else {
                f64::INFINITY
            });
        }
        ".nan" | ".NaN" | ".NAN" if unsigned.len() == text.len() => return Some(f64::NAN),
        _ => {}
    }
    // The core schema's float: digits with an optional fraction and exponent, at least one
    // digit in the mantissa. Rust's parser also accepts "inf" and "NaN", which YAML does not.
    let (mantissa, exponent) = match unsigned.find(['e', 'E']) {
        Some(i) => (&unsigned[..i], Some(&unsigned[i + 1..])),
        None => (unsigned, None),
    };
    let mut parts = mantissa.splitn(2, '.');
    let whole = parts.next().unwrap_or("");
    let fraction = parts.next().unwrap_or("");
    let digits_ok = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (whole.is_empty() && fraction.is_empty()) || !digits_ok(whole) || !digits_ok(fraction) {
        return None;
    }
    if let Some(exp) = exponent {
        let exp = exp.strip_prefix(['-', '+']).unwrap_or(exp);
        if exp.is_empty() || !digits_ok(exp) {
            return None;
        }
    }
    text.parse::<f64>().ok()
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

/// A collection under construction.
enum Frame {
    Sequence {
        mark: Mark,
        anchor: usize,
        flow: bool,
        items: Vec<Node>,
    },
    Mapping {
        mark: Mark,
        anchor: usize,
        flow: bool,
        /// A `key: value` pair written bare inside a flow sequence (`[a: b]`).
        implicit_pair: bool,
        /// The pair's key swallowed a `:` the YAML 1.2 parser took as an indicator.
        glued_key: bool,
        entries: Vec<Entry>,
        /// The key read last, waiting for its value.
        key: Option<(String, Mark)>,
        /// Values of `<<` merge keys, applied when the mapping ends.
        merges: Vec<Node>,
        problems: Vec<YamlProblem>,
    },
}

impl Frame {
    fn is_flow(&self) -> bool {
        match self {
            Frame::Sequence { flow, .. } | Frame::Mapping { flow, .. } => *flow,
        }
    }
}

fn is_flow_indicator(b: u8) -> bool {
    matches!(b, b',' | b'[' | b']' | b'{' | b'}')
}

struct TreeBuilder<'t, 'l> {
    text: &'t str,
    limits: &'l Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    documents: Vec<Document>,
    problems: Vec<YamlProblem>,
}

const MERGE_KEY: &str = "<<";

impl<'t, 'l> TreeBuilder<'t, 'l> {
    fn new(text: &'t str, limits: &'l Limits) -> Self {
        TreeBuilder {
            text,
            limits,
            stack: Vec::new(),
            anchors: HashMap::new(),
            nodes: 0,
            documents: Vec::new(),
            problems: Vec::new(),
        }
    }

    fn count(&mut self, n: usize, mark: Mark) -> Result<(), YamlProblem> {
        self.nodes = self.nodes.saturating_add(n);
        if self.nodes > self.limits.max_nodes {
            return Err(YamlProblem {
                path: FieldPath::root(),
                mark,
                message: format!(
                    "more than {} YAML nodes (aliases count at their expanded size); \
                     refusing to expand further",
                    self.limits.max_nodes
                ),
            });
        }
        Ok(())
    }

    /// Kubernetes reads YAML with go-yaml, where a `:` inside a flow collection belongs to a
    /// plain scalar unless a blank follows it: `[2001:db8::]` is one string. YAML 1.2 (and
    /// this parser) instead ends the scalar before a `:` that precedes a flow indicator.
    /// This says whether the scalar spanning `start..end` should take that `:` back.
    fn go_yaml_glues_colon(&self, start: Option<usize>, end: Option<usize>) -> bool {
        let (Some(start), Some(end)) = (start, end) else {
            return false;
        };
        let in_flow = self.stack.last().is_some_and(Frame::is_flow);
        let bytes = self.text.as_bytes();
        in_flow
            && end > start
            && bytes.get(end) == Some(&b':')
            && bytes.get(end + 1).copied().is_some_and(is_flow_indicator)
    }

    fn event(
        &mut self,
        event: Event<'_>,
        mark: Mark,
        start: Option<usize>,
        end: Option<usize>,
    ) -> Result<(), YamlProblem> {
        match event {
            Event::DocumentStart(..) => {
                self.anchors.clear();
                self.problems.clear();
            }
            Event::Scalar(text, style, anchor, tag) => {
                self.count(1, mark)?;
                let tag = tag.map(|t| classify_tag(t.handle(), t.suffix()));
                let plain = style == ScalarStyle::Plain;
                let mut text = text.into_owned();
                if plain && self.go_yaml_glues_colon(start, end) {
                    text.push(':');
                    if let Some(Frame::Mapping {
                        implicit_pair: true,
                        key: None,
                        entries,
                        glued_key,
                        ..
                    }) = self.stack.last_mut()
                        && entries.is_empty()
                    {
                        *glued_key = true;
                    }
                }
                let node = Node {
                    value: Value::Scalar(Scalar { text, plain, tag }),
                    mark,
                };
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.add(node)?;
            }
            Event::SequenceStart(style, anchor, _) => {
                self.open(mark)?;
                self.stack.push(Frame::Sequence {
                    mark,
                    anchor,
                    flow: style == StructureStyle::Flow,
                    items: Vec::new(),
                });
            }
            Event::MappingStart(style, anchor, _) => {
                self.open(mark)?;
                let flow = style == StructureStyle::Flow;
                let braced = start.is_some_and(|s| self.text.as_bytes().get(s) == Some(&b'{'));
                self.stack.push(Frame::Mapping {
                    mark,
                    anchor,
                    flow,
                    implicit_pair: flow && !braced,
                    glued_key: false,
                    entries: Vec::new(),
                    key: None,
                    merges: Vec::new(),
                    problems: Vec::new(),
                });
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let Some(frame) = self.stack.pop() else {
                    return Ok(());
                };
                let (node, anchor) = self.close(frame);
                if anchor != 0 {
                    self.anchors.insert(anchor, node.clone());
                }
                self.add(node)?;
            }
            Event::Alias(id) => {
                let Some(node) = self.anchors.get(&id).cloned() else {
                    return Err(YamlProblem {
                        path: FieldPath::root(),
                        mark,
                        message: "alias refers to an anchor that is not complete yet \
                                  (recursive aliases are not supported)"
                            .to_string(),
                    });
                };
                self.count(node.size(), mark)?;
                let node = Node {
                    value: node.value,
                    mark,
                };
                self.add(node)?;
            }
            // Stream markers, document ends (handled when the root completes) and
            // presentation-only events carry no data.
            _ => {}
        }
        Ok(())
    }

    /// A collection starts: it may not be a mapping key, and may not nest too deep.
    fn open(&mut self, mark: Mark) -> Result<(), YamlProblem> {
        self.count(1, mark)?;
        if let Some(Frame::Mapping { key: None, .. }) = self.stack.last() {
            return Err(YamlProblem {
                path: FieldPath::root(),
                mark,
                message: "mapping keys must be plain strings, not lists or mappings".to_string(),
            });
        }
        if self.stack.len() >= self.limits.max_depth {
            return Err(YamlProblem {
                path: FieldPath::root(),
                mark,
                message: format!("nesting is deeper than {} levels", self.limits.max_depth),
            });
        }
        Ok(())
    }

    fn close(&mut self, frame: Frame) -> (Node, usize) {
        match frame {
            Frame::Sequence {
                mark,
                anchor,
                items,
                ..
            } => (
                Node {
                    value: Value::Sequence(items),
                    mark,
                },
                anchor,
            ),
            Frame::Mapping {
                glued_key: true,
                mut entries,
                anchor,
                ..
            } if entries.len() == 1 && entries[0].value.is_null() => {
                // go-yaml reads `[x:]` as the string "x:", not as the pair {x: null}.
                let entry = entries.remove(0);
                (
                    Node {
                        value: Value::Scalar(Scalar {
                            text: entry.key,
                            plain: true,
                            tag: None,
                        }),
                        mark: entry.key_mark,
                    },
                    anchor,
                )
            }
            Frame::Mapping {
                mark,
                anchor,
                mut entries,
                merges,
                problems,
                ..
            } => {
                self.problems.extend(problems);
                // Explicit keys win over merged ones; earlier merge sources win over later.
                for source in merges {
                    let sources = match source.value {
                        Value::Mapping(_) => vec![source],
                        Value::Sequence(items) => items,
                        Value::Scalar(_) => {
                            self.problems.push(YamlProblem {
                                path: FieldPath::root(),
                                mark: source.mark,
                                message: "the merge key `<<` needs a mapping or a list of \
                                          mappings"
                                    .to_string(),
                            });
                            Vec::new()
                        }
                    };
                    for merged in sources {
                        let Value::Mapping(merged_entries) = merged.value else {
                            self.problems.push(YamlProblem {
                                path: FieldPath::root(),
                                mark: merged.mark,
                                message: "the merge key `<<` needs a mapping or a list of \
                                          mappings"
                                    .to_string(),
                            });
                            continue;
                        };
                        for entry in merged_entries {
                            if !entries.iter().any(|e| e.key == entry.key) {
                                entries.push(entry);
                            }
                        }
                    }
                }
                (
                    Node {
                        value: Value::Mapping(entries),
                        mark,
                    },
                    anchor,
                )
            }
        }
    }

    /// The field path of the value being read in the innermost mapping, for messages.
    fn path_of_pending_value(&self) -> FieldPath {
        let mut path = FieldPath::root();
        for frame in &self.stack {
            match frame {
                Frame::Mapping {
                    key: Some((k, _)), ..
                } => path.push_field(k),
                Frame::Sequence { items, .. } => path.push_index(items.len()),
                Frame::Mapping { .. } => {}
            }
        }
        path
    }

    /// Adds a completed node to its parent, or finishes the document with it.
    fn add(&mut self, node: Node) -> Result<(), YamlProblem> {
        let duplicate_path = match self.stack.last() {
            Some(Frame::Mapping {
                key: Some((k, _)),
                entries,
                ..
            }) if entries.iter().any(|e| &e.key == k) => Some(self.path_of_pending_value()),
            _ => None,
        };
        match self.stack.last_mut() {
            None => {
                if !node.is_null() {
                    let index = self.documents.len() + 1;
                    self.documents.push(Document {
                        index,
                        root: node,
                        problems: std::mem::take(&mut self.problems),
                    });
                }
            }
            Some(Frame::Sequence { items, .. }) => items.push(node),
            Some(Frame::Mapping {
                entries,
                key,
                merges,
                problems,
                ..
            }) => match key.take() {
                None => {
                    let Value::Scalar(scalar) = node.value else {
                        return Err(YamlProblem {
                            path: FieldPath::root(),
                            mark: node.mark,
                            message: "mapping keys must be plain strings".to_string(),
                        });
                    };
                    *key = Some((scalar.text, node.mark));
                }
                Some((text, key_mark)) => {
                    if text == MERGE_KEY {
                        merges.push(node);
                    } else if let Some(first) = entries.iter().find(|e| e.key == text) {
                        problems.push(YamlProblem {
                            path: duplicate_path.unwrap_or_default(),
                            mark: key_mark,
                            message: format!(
                                "duplicate key {text:?} (first set at line {}); the first \
                                 value is kept",
                                first.key_mark.line
                            ),
                        });
                    } else {
                        entries.push(Entry {
                            key: text,
                            key_mark,
                            value: node,
                        });
                    }
                }
            },
        }
        Ok(())
    }
}

fn classify_tag(handle: &str, suffix: &str) -> ScalarTag {
    const CORE: &str = "tag:yaml.org,2002:";
    if handle == "!" && suffix.is_empty() {
        return ScalarTag::Str;
    }
    if handle == CORE {
        match suffix {
            "str" => return ScalarTag::Str,
            "int" => return ScalarTag::Int,
            "float" => return ScalarTag::Float,
            "bool" => return ScalarTag::Bool,
            "null" => return ScalarTag::Null,
            _ => {}
        }
    }
    ScalarTag::Other(format!("{handle}{suffix}"))
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

    #[test]
    fn floats_follow_the_core_schema() {
        assert_eq!(parse_float("1.5"), Some(1.5));
        assert_eq!(parse_float(".5"), Some(0.5));
        assert_eq!(parse_float("1e3"), Some(1000.0));
        assert_eq!(parse_float("-.inf"), Some(f64::NEG_INFINITY));
        assert_eq!(parse_float("inf"), None);
        assert_eq!(parse_float("1.2.3"), None);
        assert_eq!(parse_float("."), None);
        assert_eq!(parse_int("-42"), Some(-42));
        assert_eq!(parse_int("0o17"), Some(15));
        assert_eq!(parse_int("12a"), None);
    }
}
