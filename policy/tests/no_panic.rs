//! Property: no input makes the loader or the scenario reader panic. Real configuration
//! and real scenarios are mutated at random — ranges deleted or repeated, YAML punctuation
//! inserted — and every diagnostic rendered.

use std::path::Path;

use fulcrum_policy::ConfigSet;
use proptest::prelude::*;

fn samples() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/config");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    texts.sort();
    assert!(!texts.is_empty());
    texts
}

#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Repeat { at: usize, len: usize },
    Insert { at: usize, text: String },
}

fn edit() -> impl Strategy<Value = Edit> {
    let punctuation = prop::sample::select(vec![
        ":", "- ", "[", "]", "{", "}", ",", "#", "&a ", "*a", "!!str ", "|", ">", "'", "\"", "\n",
        "\n  ", "\t", "? ", "%", "@", "`", "<<: ", "~", "---\n", "...\n", "\u{feff}", "\\",
        "\u{0}", "é", "0x", "1e999", "-", ".", "/", "*",
    ]);
    prop_oneof![
        (any::<usize>(), 0usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), 0usize..200).prop_map(|(at, len)| Edit::Repeat { at, len }),
        (any::<usize>(), punctuation).prop_map(|(at, text)| Edit::Insert {
            at,
            text: text.to_string()
        }),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let n = chars.len().max(1);
        match e {
            Edit::Delete { at, len } => {
                let at = at % n;
                let end = (at + len).min(chars.len());
                if at < end {
                    chars.drain(at..end);
                }
            }
            Edit::Repeat { at, len } => {
                let at = at % n;
                let end = (at + len).min(chars.len());
                if at < end {
                    let copy: Vec<char> = chars[at..end].to_vec();
                    chars.splice(end..end, copy);
                }
            }
            Edit::Insert { at, text } => {
                let at = (at % n).min(chars.len());
                chars.splice(at..at, text.chars());
            }
        }
    }
    chars.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn mutated_configuration_never_panics(
        which in any::<prop::sample::Index>(),
        edits in prop::collection::vec(edit(), 1..8),
    ) {
        let texts = samples();
        let text = apply(&texts[which.index(texts.len())], &edits);
        let mut config = ConfigSet::new();
        config.add_text("mutated.yaml", &text);
        config.check_consistency();
        for d in config.diagnostics() {
            let rendered = d.to_string();
            prop_assert!(rendered.starts_with("mutated.yaml:"), "{rendered}");
        }
        let _ = config.to_string();
    }

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,400}") {
        let mut config = ConfigSet::new();
        config.add_text("arbitrary.yaml", &text);
        config.check_consistency();
        for d in config.diagnostics() {
            let _ = d.to_string();
        }
    }
}

fn scenarios() -> Vec<String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/scenarios");
    let mut texts: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    texts.sort();
    texts
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A damaged scenario is refused with problems, or replayed; never a panic.
    #[test]
    fn damaged_scenarios_never_panic(index in any::<prop::sample::Index>(), edits in prop::collection::vec(edit(), 1..6)) {
        use fulcrum_policy::engine::Topology;
        use fulcrum_policy::scenario::{Scenario, simulate};
        let all = scenarios();
        let text = apply(&all[index.index(all.len())], &edits);
        let mut config = ConfigSet::new();
        config.add_path(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/local/config"));
        let topology = Topology::build(config.resources());
        match Scenario::parse(&text) {
            Err(problems) => {
                prop_assert!(!problems.is_empty());
                for p in &problems {
                    let _ = p.to_string();
                }
            }
            Ok(scenario) => {
                let short = scenario
                    .steps
                    .last()
                    .is_some_and(|s| s.at <= fulcrum_policy::Duration::from_secs(600));
                if scenario.check(&topology).is_empty() && short {
                    let _ = simulate(&topology, &scenario);
                }
            }
        }
    }
}
