//! Builds the node tree from the parser's event stream: anchors and aliases (counted at
//! their expanded size), `<<` merge keys, duplicate keys, and go-yaml's reading of `:` in
//! flow collections.

use std::collections::HashMap;

use serde_saphyr::granit_parser::{Event, ScalarStyle, StructureStyle};

use super::scalar::classify_tag;
use super::{Document, Entry, Limits, Mark, Node, Scalar, Value, YamlProblem};
use crate::path::FieldPath;

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

pub(super) struct TreeBuilder<'t, 'l> {
    text: &'t str,
    limits: &'l Limits,
    stack: Vec<Frame>,
    anchors: HashMap<usize, Node>,
    nodes: usize,
    pub(super) documents: Vec<Document>,
    problems: Vec<YamlProblem>,
}

const MERGE_KEY: &str = "<<";
const MERGE_NEEDS_MAPPINGS: &str = "the merge key `<<` needs a mapping or a list of mappings";

impl<'t, 'l> TreeBuilder<'t, 'l> {
    pub(super) fn new(text: &'t str, limits: &'l Limits) -> Self {
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

    pub(super) fn event(
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
                                message: MERGE_NEEDS_MAPPINGS.to_string(),
                            });
                            Vec::new()
                        }
                    };
                    for merged in sources {
                        let Value::Mapping(merged_entries) = merged.value else {
                            self.problems.push(YamlProblem {
                                path: FieldPath::root(),
                                mark: merged.mark,
                                message: MERGE_NEEDS_MAPPINGS.to_string(),
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
