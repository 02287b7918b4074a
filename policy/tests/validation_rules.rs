//! One case per validation rule: the spec, and the path and words of the finding it must
//! produce (or none). Specs are written as they would be in a file, under `spec:`.

use fulcrum_policy::{ConfigSet, Severity};

/// What a case expects.
enum Expect {
    /// Accepted with no findings at all.
    Clean,
    /// An error at this path whose message contains these words.
    Error(&'static str, &'static str),
    /// Accepted, with a warning at this path containing these words.
    Warning(&'static str, &'static str),
}

use Expect::*;

fn document(kind: &str, spec: &str) -> String {
    let api = match kind {
        "FailoverPolicy" | "MeshCluster" => "fulcrum.dev/v1alpha1",
        _ => "networking.istio.io/v1",
    };
    let spec: String = spec.lines().map(|l| format!("  {l}\n")).collect();
    format!(
        "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: case\n  namespace: shop\nspec:\n{spec}"
    )
}

fn check(name: &str, kind: &str, spec: &str, expect: Expect) -> Result<(), String> {
    let text = document(kind, spec);
    let mut config = ConfigSet::new();
    config.add_text(name, &text);
    let found: Vec<String> = config
        .diagnostics()
        .map(|d| format!("{:?} {}: {}", d.severity, d.path, d.message))
        .collect();
    let matches = |severity: Severity, path: &str, words: &str| {
        config.diagnostics().any(|d| {
            d.severity == severity && d.path.to_string() == path && d.message.contains(words)
        })
    };
    let ok = match expect {
        Clean => found.is_empty(),
        Error(path, words) => config.has_errors() && matches(Severity::Error, path, words),
        Warning(path, words) => !config.has_errors() && matches(Severity::Warning, path, words),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name}: unexpected findings {found:#?}\nfor:\n{text}"
        ))
    }
}

const FAILOVER_BASE: &str = "host: checkout\ntrafficPolicy:\n  outlierDetection: {consecutive5xxErrors: 5}\n  loadBalancer:\n    localityLbSetting:\n";

#[test]
fn validation_rules() {
    let lb = |setting: &str| format!("{FAILOVER_BASE}{setting}");
    let cases: Vec<(&str, &str, String, Expect)> = vec![
        // DestinationRule: locality load balancing.
        ("distribute ok", "DestinationRule",
         lb("      distribute:\n      - {from: \"us-east/*\", to: {\"us-east/*\": 80, \"us-central/*\": 20}}"), Clean),
        ("distribute weight above 100", "DestinationRule",
         lb("      distribute:\n      - {from: \"us-east/*\", to: {\"us-east/*\": 101}}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to[us-east/*]", "[1, 100]")),
        ("distribute weight 0", "DestinationRule",
         lb("      distribute:\n      - {from: \"us-east/*\", to: {\"us-east/*\": 0, \"eu/*\": 100}}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to[us-east/*]", "[1, 100]")),
        ("distribute not summing to 100", "DestinationRule",
         lb("      distribute:\n      - {from: \"us-east/*\", to: {\"us-east/*\": 60, \"eu/*\": 30}}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to", "add up to 90")),
        ("distribute overlapping destinations", "DestinationRule",
         lb("      distribute:\n      - {from: \"us-east/*\", to: {\"us-east\": 50, \"us-east/z1\": 50}}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.distribute[0].to", "overlaps")),
        ("distribute and failover together", "DestinationRule",
         lb("      distribute:\n      - {from: \"a/*\", to: {\"a/*\": 100}}\n      failover:\n      - {from: a, to: b}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting", "cannot both be set")),
        ("failover to the same region", "DestinationRule",
         lb("      failover:\n      - {from: us-east, to: us-east}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]", "different regions")),
        ("failover with a zone", "DestinationRule",
         lb("      failover:\n      - {from: us-east/z1, to: us-west}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]", "regions only")),
        ("failover with a wildcard", "DestinationRule",
         lb("      failover:\n      - {from: \"*\", to: us-west}"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.failover[0]", "wildcard")),
        ("failover priority with topology labels and failover", "DestinationRule",
         lb("      failover:\n      - {from: a, to: b}\n      failoverPriority: [topology.kubernetes.io/region]"),
         Error("spec.trafficPolicy.loadBalancer.localityLbSetting.failoverPriority[0]", "topology label")),
        ("failover without outlier detection", "DestinationRule",
         "host: checkout\ntrafficPolicy:\n  loadBalancer:\n    localityLbSetting:\n      failover: [{from: a, to: b}]".into(),
         Warning("spec.trafficPolicy.loadBalancer.localityLbSetting.failover", "outlierDetection")),
        // DestinationRule: the rest of the traffic policy.
        ("duplicate subsets", "DestinationRule",
         "host: checkout\nsubsets:\n- {name: v1}\n- {name: v1}".into(),
         Error("spec.subsets[1].name", "duplicate subset name")),
        ("bad subset label", "DestinationRule",
         "host: checkout\nsubsets:\n- {name: v1, labels: {\"bad key!\": v1}}".into(),
         Error("spec.subsets[0].labels[bad key!]", "invalid label key")),
        ("empty traffic policy", "DestinationRule",
         "host: checkout\ntrafficPolicy: {}".into(),
         Error("spec.trafficPolicy", "at least one field")),
        ("warmup percent out of range", "DestinationRule",
         "host: c\ntrafficPolicy:\n  loadBalancer:\n    warmup: {duration: 10s, minimumPercent: 101}".into(),
         Error("spec.trafficPolicy.loadBalancer.warmup.minimumPercent", "0 to 100")),
        ("warmup without duration", "DestinationRule",
         "host: c\ntrafficPolicy:\n  loadBalancer:\n    warmup: {minimumPercent: 10}".into(),
         Error("spec.trafficPolicy.loadBalancer.warmup.duration", "required")),
        ("zero duration", "DestinationRule",
         "host: c\ntrafficPolicy:\n  outlierDetection: {baseEjectionTime: 0s}".into(),
         Error("spec.trafficPolicy.outlierDetection.baseEjectionTime", "at least 1ms")),
        ("negative duration", "DestinationRule",
         "host: c\ntrafficPolicy:\n  connectionPool:\n    tcp: {connectTimeout: -5s}".into(),
         Error("spec.trafficPolicy.connectionPool.tcp.connectTimeout", "at least 1ms")),
        ("sub-millisecond duration", "DestinationRule",
         "host: c\ntrafficPolicy:\n  connectionPool:\n    tcp: {connectTimeout: 1500us}".into(),
         Error("spec.trafficPolicy.connectionPool.tcp.connectTimeout", "only milliseconds")),
        ("percent out of range", "DestinationRule",
         "host: c\ntrafficPolicy:\n  outlierDetection: {minHealthPercent: -1}".into(),
         Error("spec.trafficPolicy.outlierDetection.minHealthPercent", "0 to 100")),
        ("both simple and consistent hash", "DestinationRule",
         "host: c\ntrafficPolicy:\n  loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}".into(),
         Error("spec.trafficPolicy.loadBalancer", "only one of simple")),
        ("maglev table not prime", "DestinationRule",
         "host: c\ntrafficPolicy:\n  loadBalancer:\n    consistentHash: {useSourceIp: true, maglev: {tableSize: 1000}}".into(),
         Error("spec.trafficPolicy.loadBalancer.consistentHash.maglev.tableSize", "prime")),
        ("mutual TLS without certificate", "DestinationRule",
         "host: c\ntrafficPolicy:\n  tls: {mode: MUTUAL, privateKey: /k}".into(),
         Error("spec.trafficPolicy.tls.clientCertificate", "client certificate")),
        ("port policy without port", "DestinationRule",
         "host: c\ntrafficPolicy:\n  portLevelSettings:\n  - tls: {mode: SIMPLE}".into(),
         Error("spec.trafficPolicy.portLevelSettings[0]", "name its port")),
        ("bad host", "DestinationRule", "host: \"foo.*.com\"".into(), Error("spec.host", "invalid")),
        ("unknown field", "DestinationRule", "host: c\nsubset: []".into(),
         Warning("spec.subset", "did you mean \"subsets\"")),
        ("exportTo duplicates", "DestinationRule", "host: c\nexportTo: [shop, \".\"]".into(),
         Error("spec.exportTo[1]", "duplicate")),
        // VirtualService.
        ("negative weight", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n    weight: -5".into(),
         Error("spec.http[0].route[0].weight", "negative")),
        ("weights all zero", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - {destination: {host: c, subset: a}, weight: 0}\n  - {destination: {host: c, subset: b}, weight: 0}".into(),
         Error("spec.http[0].route", "add up to 0")),
        ("bad regex", "VirtualService",
         "hosts: [c]\nhttp:\n- match:\n  - headers: {x-user: {regex: \"a(\"}}\n  route:\n  - destination: {host: c}".into(),
         Error("spec.http[0].match[0].headers[x-user].regex", "RE2")),
        ("look-around is not RE2", "VirtualService",
         "hosts: [c]\nhttp:\n- match:\n  - uri: {regex: \"/a(?=b)\"}\n  route:\n  - destination: {host: c}".into(),
         Error("spec.http[0].match[0].uri.regex", "RE2")),
        ("two kinds of string match", "VirtualService",
         "hosts: [c]\nhttp:\n- match:\n  - uri: {exact: /a, prefix: /b}\n  route:\n  - destination: {host: c}".into(),
         Error("spec.http[0].match[0].uri", "only one of exact")),
        ("direct response bytes that are not base64", "VirtualService",
         "hosts: [c]\nhttp:\n- directResponse: {status: 200, body: {bytes: \"not base64!\"}}".into(),
         Error("spec.http[0].directResponse.body.bytes", "not base64")),
        ("direct response bytes in base64", "VirtualService",
         "hosts: [c]\nhttp:\n- directResponse: {status: 200, body: {bytes: aGk=}}".into(),
         Clean),
        ("CORS methods, the star among them", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n  corsPolicy: {allowOrigins: [{exact: \"*\"}], allowMethods: [GET, \"*\"]}".into(),
         Clean),
        ("CORS method unknown", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n  corsPolicy: {allowOrigins: [{exact: a}], allowMethods: [FETCH]}".into(),
         Error("spec.http[0].corsPolicy.allowMethods[0]", "not a supported HTTP method")),
        ("bad destination port", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c, port: {number: 70000}}".into(),
         Error("spec.http[0].route[0].destination.port.number", "1-65535")),
        ("retry on an unknown condition", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n  retries: {attempts: 2, retryOn: \"5xx,teapot\"}".into(),
         Error("spec.http[0].retries.retryOn", "teapot")),
        ("retry on a status code", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n  retries: {attempts: 2, retryOn: \"503,reset\"}".into(),
         Clean),
        ("fault percentage above 100", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n  fault: {delay: {fixedDelay: 1s, percentage: {value: 120}}}".into(),
         Error("spec.http[0].fault.delay.percentage", "0.0001, 100")),
        ("route and redirect", "VirtualService",
         "hosts: [c]\nhttp:\n- redirect: {uri: /x}\n  route:\n  - destination: {host: c}".into(),
         Error("spec.http[0]", "both destinations")),
        ("nothing to do", "VirtualService", "hosts: [c]\nhttp:\n- timeout: 1s".into(),
         Error("spec.http[0]", "needs destinations")),
        ("mesh wildcard host", "VirtualService",
         "hosts: [\"*\"]\nhttp:\n- route:\n  - destination: {host: c}".into(),
         Error("spec.hosts[0]", "wildcard host")),
        ("duplicate hosts", "VirtualService",
         "hosts: [a.shop.svc, \"*.svc\"]\nhttp:\n- route:\n  - destination: {host: c}".into(),
         Error("spec.hosts[1]", "duplicate hosts")),
        ("unreachable rule", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n- match:\n  - uri: {prefix: /}\n  route:\n  - destination: {host: c}".into(),
         Warning("spec.http[1]", "never used")),
        ("timeout without unit", "VirtualService",
         "hosts: [c]\nhttp:\n- route:\n  - destination: {host: c}\n  timeout: 5".into(),
         Error("spec.http[0].timeout", "add a unit")),
        // ServiceEntry resolution rules.
        ("static endpoints need IPs", "ServiceEntry",
         "hosts: [a.example.com]\nresolution: STATIC\nports: [{number: 80, name: http}]\nendpoints: [{address: b.example.com}]".into(),
         Error("spec.endpoints[0].address", "not a valid IP")),
        ("DNS without endpoints needs FQDN hosts", "ServiceEntry",
         "hosts: [\"*.example.com\"]\nresolution: DNS".into(),
         Error("spec.hosts[0]", "fully qualified")),
        ("DYNAMIC_DNS takes wildcard hosts, resolved per request", "ServiceEntry",
         "hosts: [\"*.example.com\"]\nresolution: DYNAMIC_DNS\nports: [{number: 80, name: http, protocol: HTTP}]".into(),
         Clean),
        ("DYNAMIC_DNS hosts are still names", "ServiceEntry",
         "hosts: [\"*.exa mple.com\"]\nresolution: DYNAMIC_DNS\nports: [{number: 80, name: http, protocol: HTTP}]".into(),
         Error("spec.hosts[0]", "fully qualified")),
        ("endpoint port not on the service", "ServiceEntry",
         "hosts: [a.example.com]\nresolution: STATIC\nports: [{number: 80, name: http}]\nendpoints: [{address: 1.2.3.4, ports: {grpc: 90}}]".into(),
         Error("spec.endpoints[0].ports[grpc]", "not defined")),
        ("several hosts need HTTP ports", "ServiceEntry",
         "hosts: [a.example.com, b.example.com]\nresolution: DNS\nports: [{number: 5432, name: pg, protocol: TCP}]".into(),
         Error("spec.ports[0]", "several hosts")),
        ("unknown protocol", "ServiceEntry",
         "hosts: [a.example.com]\nports: [{number: 80, name: http, protocol: SPDY}]".into(),
         Error("spec.ports[0].protocol", "unsupported protocol")),
        ("bad endpoint locality", "ServiceEntry",
         "hosts: [a.example.com]\nresolution: STATIC\nendpoints: [{address: 1.2.3.4, locality: \"a//b\"}]".into(),
         Warning("spec.endpoints[0].locality", "no locality")),
        // FailoverPolicy.
        ("policy defaults", "FailoverPolicy", "host: checkout.shop.svc.cluster.local".into(), Clean),
        ("recover above degrade", "FailoverPolicy",
         "host: c\nthresholds:\n  degrade: {http5xx: 20%}\n  recover: {http5xx: 25%}".into(),
         Error("spec.thresholds.recover.http5xx", "below the degrade threshold")),
        ("recover default above a low degrade", "FailoverPolicy",
         "host: c\nthresholds:\n  degrade: {connectFailures: 5%}".into(),
         Error("spec.thresholds.recover.connectFailures", "below the degrade threshold 5%")),
        ("percent with too much precision", "FailoverPolicy",
         "host: c\ndamping: {rampStep: 0.001%}".into(),
         Error("spec.damping.rampStep", "more precise than 0.01%")),
        ("window too short", "FailoverPolicy", "host: c\nwindow: 500ms".into(),
         Error("spec.window", "out of range")),
        ("zero request volume", "FailoverPolicy", "host: c\nminRequestVolume: 0".into(),
         Error("spec.minRequestVolume", "at least 1")),
        ("capacity needs a limit", "FailoverPolicy",
         "host: c\ncapacity: [{locality: us-east/us-east-1a}]".into(),
         Error("spec.capacity[0]", "maxRequestsPerSecond, maxShare")),
        ("capacity locality with a wildcard", "FailoverPolicy",
         "host: c\ncapacity: [{locality: \"us-east/*\", maxShare: 50%}]".into(),
         Error("spec.capacity[0].locality", "cannot contain '*'")),
        ("max drained as a count", "FailoverPolicy", "host: c\nguards: {maxDrained: 2}".into(), Clean),
        ("max drained as garbage", "FailoverPolicy", "host: c\nguards: {maxDrained: lots}".into(),
         Error("spec.guards.maxDrained", "count such as 1")),
        // MeshCluster.
        ("mesh cluster", "MeshCluster",
         "locality: us-east/us-east-1a\neastWestGateways: [{address: 127.0.0.1, port: 15443}]".into(), Clean),
        ("mesh cluster without zone", "MeshCluster",
         "locality: us-east\neastWestGateways: [{address: 127.0.0.1, port: 15443}]".into(),
         Error("spec.locality", "region and a zone")),
        ("mesh cluster without gateways", "MeshCluster", "locality: us-east/us-east-1a".into(),
         Warning("spec.eastWestGateways", "cannot fail over")),
    ];
    let failures: Vec<String> = cases
        .into_iter()
        .filter_map(|(name, kind, spec, expect)| check(name, kind, &spec, expect).err())
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}
