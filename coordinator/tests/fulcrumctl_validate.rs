//! `fulcrumctl validate`, run as the binary users run: exit codes, the exact shape of
//! error lines, JSON output, standard input, and unreadable inputs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus() -> PathBuf {
    let dir = std::env::var_os("FULCRUM_ISTIO_SAMPLES")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/istio-samples"));
    assert!(
        dir.join("validation").is_dir(),
        "Istio's sample corpus is not at {}; set FULCRUM_ISTIO_SAMPLES",
        dir.display()
    );
    dir
}

fn fulcrumctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fulcrumctl"))
        .args(args)
        .output()
        .expect("fulcrumctl runs")
}

fn validate(paths: &[&Path]) -> Output {
    let mut args = vec!["validate".to_string()];
    for p in paths {
        args.push("-f".into());
        args.push(p.display().to_string());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    fulcrumctl(&args)
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn the_sample_mesh_validates_clean() {
    let out = validate(&[&repo_root().join("deploy/local/config")]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let text = stdout(&out);
    assert!(
        text.contains("accepted: MeshCluster default/us-east"),
        "{text}"
    );
    assert!(
        text.contains("accepted: FailoverPolicy shop/checkout"),
        "{text}"
    );
    assert!(
        text.trim_end()
            .ends_with("11 accepted, 0 rejected, 0 ignored, 0 warnings"),
        "{text}"
    );
}

#[test]
fn istio_corpus_exit_codes() {
    let corpus = corpus();
    for (dir, code) in [
        ("bookinfo", 0),
        ("testdata", 0),
        ("validation", 1),
        (".", 1),
    ] {
        let out = validate(&[&corpus.join(dir)]);
        assert_eq!(out.status.code(), Some(code), "{dir}:\n{}", stdout(&out));
        assert!(stderr(&out).is_empty(), "{dir}: {}", stderr(&out));
    }
}

#[test]
fn istio_invalid_cases_print_file_line_object_and_path() {
    let file = corpus().join("validation/destinationrule-invalid.yaml");
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(1));
    let expected = format!(
        "{}:24: DestinationRule default/bookinfo-ratings: \
         spec.trafficPolicy.loadBalancer.warmup.duration: required field is missing",
        file.display()
    );
    assert!(
        stdout(&out).lines().any(|l| l == expected),
        "no line {expected:?} in:\n{}",
        stdout(&out)
    );
}

const BAD_ROUTE: &str = "\
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: checkout
  namespace: shop
spec:
  hosts: [checkout.shop.svc.cluster.local]
  http:
  - match:
    - uri: {prefix: /api}
    route:
    - destination: {host: checkout.shop.svc.cluster.local}
  - route:
    - destination: {host: checkout.shop.svc.cluster.local, subset: v1}
      weight: -1
    - destination: {host: checkout.shop.svc.cluster.local, subset: v2}
      weight: 10
";

#[test]
fn errors_name_the_exact_field_and_every_error_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "vs.yaml",
        &BAD_ROUTE.replace("{prefix: /api}", "{regex: \"(\"}"),
    );
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(1));
    let text = stdout(&out);
    let f = file.display();
    for line in [
        format!(
            "{f}:10: VirtualService shop/checkout: spec.http[0].match[0].uri.regex: invalid \
             regex \"(\": unclosed group; Istio uses RE2 syntax \
             (https://github.com/google/re2/wiki/Syntax)"
        ),
        format!(
            "{f}:15: VirtualService shop/checkout: spec.http[1].route[0].weight: weight -1 \
             must not be negative"
        ),
        format!("rejected: VirtualService shop/checkout ({f}:1)"),
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
}

#[test]
fn warnings_alone_exit_zero() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(
        dir.path(),
        "dr.yaml",
        "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: c}\n\
         spec:\n  host: c\n  trafficPolicy:\n    loadBalancer:\n      localityLbSetting:\n\
         \x20       failover: [{from: a, to: b}]\n  subsetz: []\n",
    );
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
    let text = stdout(&out);
    assert!(
        text.contains(&format!(
            "{}:9: warning: DestinationRule default/c: \
             spec.trafficPolicy.loadBalancer.localityLbSetting.failover: failover has no effect \
             without outlierDetection",
            file.display()
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "spec.subsetz: unknown field \"subsetz\" is ignored; did you mean \"subsets\"?"
        )
    );
}

#[test]
fn unreadable_inputs_exit_two_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let binary = dir.path().join("image.yaml");
    std::fs::write(&binary, [0u8, 159, 146, 150, 0, 1]).unwrap();
    let empty_dir = dir.path().join("no-yaml");
    std::fs::create_dir(&empty_dir).unwrap();
    std::fs::write(empty_dir.join("notes.txt"), "hello").unwrap();
    let missing = dir.path().join("missing.yaml");
    let cases: [(&Path, &str); 3] = [
        (
            &binary,
            "image.yaml: not a text file (it contains NUL bytes)",
        ),
        (
            &empty_dir,
            "no-yaml: no .yaml, .yml or .json files in this directory",
        ),
        (&missing, "missing.yaml: no such file or directory"),
    ];
    for (path, message) in cases {
        let out = validate(&[path]);
        assert_eq!(out.status.code(), Some(2), "{}", path.display());
        assert!(stderr(&out).contains(message), "{}", stderr(&out));
    }
}

#[test]
fn an_unreadable_input_wins_over_invalid_config_but_both_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let bad = write(dir.path(), "vs.yaml", BAD_ROUTE);
    let out = validate(&[&bad, &dir.path().join("missing.yaml")]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stdout(&out).contains("spec.http[1].route[0].weight"));
    assert!(stderr(&out).contains("missing.yaml: no such file or directory"));
}

#[test]
fn usage_errors_exit_two() {
    let out = fulcrumctl(&["validate"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--filename"), "{}", stderr(&out));
    let out = fulcrumctl(&["validate", "-f", "x.yaml", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn empty_input_exits_two() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "empty.yaml", "# nothing here\n---\n");
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no objects found"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn yaml_syntax_errors_name_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "broken.yaml", "apiVersion: v1\nkind: [oops\n");
    let out = validate(&[&file]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).contains(&format!("{}:2: YAML syntax error", file.display())),
        "{}",
        stdout(&out)
    );
}

#[test]
fn json_output_describes_every_object() {
    let dir = tempfile::tempdir().unwrap();
    let file = write(dir.path(), "vs.yaml", BAD_ROUTE);
    let out = fulcrumctl(&["validate", "-o", "json", "-f", &file.display().to_string()]);
    assert_eq!(out.status.code(), Some(1));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["valid"], false);
    assert_eq!(report["summary"]["rejected"], 1);
    let object = &report["objects"][0];
    assert_eq!(object["status"], "rejected");
    assert_eq!(object["kind"], "VirtualService");
    assert_eq!(object["namespace"], "shop");
    let diagnostic = &object["diagnostics"][0];
    assert_eq!(diagnostic["severity"], "error");
    assert_eq!(diagnostic["line"], 15);
    assert_eq!(diagnostic["path"], "spec.http[1].route[0].weight");
}

#[test]
fn standard_input_is_read_with_a_dash() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_fulcrumctl"))
        .args(["validate", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(BAD_ROUTE.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out)
            .contains("<stdin>:15: VirtualService shop/checkout: spec.http[1].route[0].weight"),
        "{}",
        stdout(&out)
    );
}
