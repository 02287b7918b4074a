//! Property: a model written as YAML and read back is the same model.
//!
//! The models are written by serde (through serde-saphyr) and read by Fulcrum's own
//! decoder, so this checks both that the two agree on every wire name and that any string
//! a user may hold (numbers, `yes`, `null`, colons, quotes, newlines, unicode) survives.

use std::collections::BTreeMap;
use std::fmt::Debug;

use fulcrum_policy::decode::{Decode, Decoder};
use fulcrum_policy::fulcrum::{
    Damping, FailoverPolicySpec, GatewayAddress, Guards, IntOrPercent, LocalityCapacity,
    MeshClusterSpec, SignalThresholds, Thresholds,
};
use fulcrum_policy::istio::*;
use fulcrum_policy::yaml::{Limits, parse_documents};
use fulcrum_policy::{Duration, Locality, ObjectMeta, Percent, Severity};
use proptest::collection::{btree_map, vec};
use proptest::option;
use proptest::prelude::*;

/// Strings that stress YAML quoting as well as ordinary names.
fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z][a-z0-9-]{0,12}",
        Just("yes".to_string()),
        Just("null".to_string()),
        Just("~".to_string()),
        Just("0x1F".to_string()),
        Just("0o17".to_string()),
        Just(".inf".to_string()),
        Just("1e3".to_string()),
        Just("-42".to_string()),
        Just("true".to_string()),
        Just("a: b".to_string()),
        Just("# not a comment".to_string()),
        Just("- dash".to_string()),
        Just("[x, y]".to_string()),
        Just("2001:db8::".to_string()),
        Just("  padded  ".to_string()),
        Just("line one\nline two".to_string()),
        Just("tab\there".to_string()),
        Just("quote ' and \" both".to_string()),
        Just("*.example.com".to_string()),
        Just("&anchor".to_string()),
        Just("!tag".to_string()),
        Just("héllo ✓".to_string()),
        any::<String>().prop_map(|s| s.chars().take(20).collect()),
    ]
}

fn small_map() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..3)
}

fn finite() -> impl Strategy<Value = f64> {
    prop_oneof![
        Just(0.0),
        Just(100.0),
        Just(12.5),
        (-1.0e6..1.0e6f64),
        any::<f64>().prop_filter("finite", |f| f.is_finite()),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0i64..10_000).prop_map(Duration::from_millis),
        (-100i64..100_000).prop_map(Duration::from_secs),
        any::<i64>().prop_map(Duration::from_nanos),
    ]
}

fn percent() -> impl Strategy<Value = Percent> {
    (0u32..20_000).prop_map(Percent::from_basis_points)
}

fn string_match() -> impl Strategy<Value = StringMatch> {
    (option::of(text()), option::of(text()), option::of(text())).prop_map(
        |(exact, prefix, regex)| StringMatch {
            exact,
            prefix,
            regex,
        },
    )
}

fn destination() -> impl Strategy<Value = Destination> {
    (
        "[a-z]{1,8}(\\.[a-z]{1,8}){0,2}",
        text(),
        option::of(any::<u32>()),
    )
        .prop_map(|(host, subset, port)| Destination {
            host,
            subset,
            port: port.map(|number| PortSelector { number }),
        })
}

fn outlier_detection() -> impl Strategy<Value = OutlierDetection> {
    (
        option::of(any::<u32>()),
        option::of(any::<u32>()),
        option::of(duration()),
        option::of(duration()),
        any::<i32>(),
        any::<i32>(),
        any::<bool>(),
        vec(100u32..600, 0..3),
    )
        .prop_map(
            |(c5xx, gateway, interval, base, max_ej, min_health, split, codes)| OutlierDetection {
                consecutive_5xx_errors: c5xx,
                consecutive_gateway_errors: gateway,
                interval,
                base_ejection_time: base,
                max_ejection_percent: max_ej,
                min_health_percent: min_health,
                split_external_local_origin_errors: split,
                outlier_detection_http_error_codes: codes,
                ..OutlierDetection::default()
            },
        )
}

fn locality_lb() -> impl Strategy<Value = LocalityLbSetting> {
    (
        vec(
            (text(), btree_map(text(), any::<u32>(), 0..3))
                .prop_map(|(from, to)| LocalityDistribute { from, to }),
            0..2,
        ),
        vec(
            (text(), text()).prop_map(|(from, to)| LocalityFailover { from, to }),
            0..3,
        ),
        vec(text(), 0..3),
        option::of(any::<bool>()),
    )
        .prop_map(
            |(distribute, failover, failover_priority, enabled)| LocalityLbSetting {
                distribute,
                failover,
                failover_priority,
                enabled,
            },
        )
}

fn load_balancer() -> impl Strategy<Value = LoadBalancerSettings> {
    (
        option::of(prop::sample::select(SimpleLb::ALL)),
        option::of(
            (option::of(text()), option::of(any::<bool>()), any::<u64>()).prop_map(
                |(header, source_ip, ring)| ConsistentHashLb {
                    http_header_name: header,
                    use_source_ip: source_ip,
                    minimum_ring_size: ring,
                    http_cookie: Some(HttpCookie {
                        name: "session".into(),
                        ttl: Some(Duration::from_secs(30)),
                        ..HttpCookie::default()
                    }),
                    maglev: Some(Maglev { table_size: 65537 }),
                    ..ConsistentHashLb::default()
                },
            ),
        ),
        option::of(locality_lb()),
        option::of(
            (duration(), option::of(finite()), option::of(finite())).prop_map(
                |(duration, minimum_percent, aggression)| WarmupConfiguration {
                    duration,
                    minimum_percent,
                    aggression,
                },
            ),
        ),
    )
        .prop_map(
            |(simple, consistent_hash, locality, warmup)| LoadBalancerSettings {
                simple,
                consistent_hash,
                locality_lb_setting: locality,
                warmup,
                ..LoadBalancerSettings::default()
            },
        )
}

fn traffic_policy() -> impl Strategy<Value = TrafficPolicy> {
    (
        option::of(load_balancer()),
        option::of(outlier_detection()),
        option::of(
            (any::<i32>(), option::of(duration()), any::<bool>()).prop_map(
                |(max, idle, client)| ConnectionPoolSettings {
                    http: Some(HttpSettings {
                        http2_max_requests: max,
                        idle_timeout: idle,
                        use_client_protocol: client,
                        h2_upgrade_policy: Some(H2UpgradePolicy::Upgrade),
                        ..HttpSettings::default()
                    }),
                    tcp: Some(TcpSettings {
                        max_connections: max,
                        connect_timeout: idle,
                        ..TcpSettings::default()
                    }),
                },
            ),
        ),
        option::of(
            (
                option::of(prop::sample::select(TlsMode::ALL)),
                vec(text(), 0..2),
            )
                .prop_map(|(mode, sans)| ClientTlsSettings {
                    mode,
                    subject_alt_names: sans,
                    ..ClientTlsSettings::default()
                }),
        ),
    )
        .prop_map(|(lb, od, pool, tls)| TrafficPolicy {
            load_balancer: lb,
            outlier_detection: od,
            connection_pool: pool,
            tls,
            port_level_settings: vec![PortTrafficPolicy {
                port: Some(PortSelector { number: 8080 }),
                tls: Some(ClientTlsSettings::default()),
                ..PortTrafficPolicy::default()
            }],
            ..TrafficPolicy::default()
        })
}

fn destination_rule() -> impl Strategy<Value = DestinationRuleSpec> {
    (
        "[a-z]{1,10}",
        option::of(traffic_policy()),
        vec(
            (text(), small_map(), option::of(traffic_policy())).prop_map(
                |(name, labels, traffic_policy)| Subset {
                    name: format!("s{name}"),
                    labels,
                    traffic_policy,
                },
            ),
            0..3,
        ),
        vec(text(), 0..3),
        option::of(small_map().prop_map(|match_labels| WorkloadSelector { match_labels })),
    )
        .prop_map(
            |(host, traffic_policy, subsets, export_to, selector)| DestinationRuleSpec {
                host,
                traffic_policy,
                subsets,
                export_to,
                workload_selector: selector,
            },
        )
}

fn http_route() -> impl Strategy<Value = HttpRoute> {
    (
        text(),
        vec(
            (
                option::of(string_match()),
                btree_map(text(), string_match(), 0..2),
                any::<u32>(),
                any::<bool>(),
            )
                .prop_map(|(uri, headers, port, ignore_case)| HttpMatchRequest {
                    uri,
                    headers,
                    port,
                    ignore_uri_case: ignore_case,
                    ..HttpMatchRequest::default()
                }),
            0..3,
        ),
        vec(
            (destination(), any::<i32>()).prop_map(|(destination, weight)| HttpRouteDestination {
                destination,
                weight,
                headers: None,
            }),
            0..3,
        ),
        option::of(duration()),
        option::of((any::<i32>(), text(), option::of(any::<bool>())).prop_map(
            |(attempts, retry_on, remote)| HttpRetry {
                attempts,
                retry_on,
                retry_remote_localities: remote,
                per_try_timeout: Some(Duration::from_millis(250)),
                ..HttpRetry::default()
            },
        )),
        option::of(
            (option::of(finite()), option::of(any::<i32>())).prop_map(|(value, status)| {
                HttpFaultInjection {
                    abort: Some(FaultAbort {
                        http_status: status,
                        percentage: value.map(|value| Percentage { value }),
                        ..FaultAbort::default()
                    }),
                    delay: Some(FaultDelay {
                        fixed_delay: Some(Duration::from_secs(7)),
                        ..FaultDelay::default()
                    }),
                }
            }),
        ),
        option::of(small_map()),
    )
        .prop_map(
            |(name, matches, route, timeout, retries, fault, set)| HttpRoute {
                name,
                matches,
                route,
                timeout,
                retries,
                fault,
                headers: set.map(|set| Headers {
                    request: Some(HeaderOperations {
                        set,
                        remove: vec!["x-debug".into()],
                        ..HeaderOperations::default()
                    }),
                    response: None,
                }),
                mirror_percentage: Some(Percentage { value: 50.0 }),
                ..HttpRoute::default()
            },
        )
}

fn virtual_service() -> impl Strategy<Value = VirtualServiceSpec> {
    (
        vec(text(), 0..3),
        vec(text(), 0..2),
        vec(http_route(), 0..3),
    )
        .prop_map(|(hosts, gateways, http)| VirtualServiceSpec {
            hosts,
            gateways,
            http,
            tcp: vec![TcpRoute {
                matches: vec![L4MatchAttributes {
                    port: 9000,
                    ..L4MatchAttributes::default()
                }],
                route: vec![RouteDestination {
                    destination: Destination {
                        host: "db".into(),
                        ..Destination::default()
                    },
                    weight: 100,
                }],
            }],
            ..VirtualServiceSpec::default()
        })
}

fn workload_entry() -> impl Strategy<Value = WorkloadEntrySpec> {
    (
        text(),
        btree_map(text(), any::<u32>(), 0..3),
        small_map(),
        text(),
        text(),
        any::<u32>(),
    )
        .prop_map(
            |(address, ports, labels, network, locality, weight)| WorkloadEntrySpec {
                address,
                ports,
                labels,
                network,
                locality,
                weight,
                service_account: String::new(),
            },
        )
}

fn service_entry() -> impl Strategy<Value = ServiceEntrySpec> {
    (
        vec(text(), 1..3),
        vec(text(), 0..2),
        vec(
            (any::<u32>(), text(), text(), any::<u32>()).prop_map(
                |(number, protocol, name, target_port)| ServicePort {
                    number,
                    protocol,
                    name: format!("p{name}"),
                    target_port,
                },
            ),
            0..3,
        ),
        option::of(prop::sample::select(Resolution::ALL)),
        option::of(prop::sample::select(ServiceLocation::ALL)),
        vec(workload_entry(), 0..3),
    )
        .prop_map(
            |(hosts, addresses, ports, resolution, location, endpoints)| ServiceEntrySpec {
                hosts: hosts.into_iter().map(|h| format!("h{h}")).collect(),
                addresses,
                ports,
                resolution,
                location,
                endpoints,
                ..ServiceEntrySpec::default()
            },
        )
}

fn locality() -> impl Strategy<Value = Locality> {
    (
        "[a-z][a-z0-9-]{0,8}",
        option::of("[a-z0-9-]{1,8}"),
        option::of("[a-z0-9]{1,4}"),
    )
        .prop_map(|(region, zone, subzone)| {
            let zone = zone.unwrap_or_default();
            let subzone = if zone.is_empty() {
                String::new()
            } else {
                subzone.unwrap_or_default()
            };
            Locality::new(&region, &zone, &subzone)
        })
}

fn signals() -> impl Strategy<Value = SignalThresholds> {
    (
        option::of(percent()),
        option::of(percent()),
        option::of(percent()),
    )
        .prop_map(
            |(http_5xx, gateway_errors, connect_failures)| SignalThresholds {
                http_5xx,
                gateway_errors,
                connect_failures,
            },
        )
}

fn failover_policy() -> impl Strategy<Value = FailoverPolicySpec> {
    (
        "[a-z]{1,10}",
        option::of(any::<bool>()),
        option::of(duration()),
        option::of(any::<u32>()),
        option::of(
            (option::of(signals()), option::of(signals()))
                .prop_map(|(degrade, recover)| Thresholds { degrade, recover }),
        ),
        option::of(
            (
                option::of(duration()),
                option::of(duration()),
                option::of(percent()),
            )
                .prop_map(|(degrade_after, recover_after, ramp_step)| Damping {
                    degrade_after,
                    recover_after,
                    ramp_step,
                }),
        ),
        vec(
            (locality(), option::of(any::<u64>()), option::of(percent())).prop_map(
                |(locality, rps, share)| LocalityCapacity {
                    locality,
                    max_requests_per_second: rps,
                    max_share: share,
                },
            ),
            0..3,
        ),
        option::of(
            (
                option::of(prop_oneof![
                    any::<u32>().prop_map(IntOrPercent::Int),
                    percent().prop_map(IntOrPercent::Percent),
                ]),
                option::of(any::<bool>()),
            )
                .prop_map(|(max_drained, never_drain_last)| Guards {
                    max_drained,
                    never_drain_last,
                }),
        ),
    )
        .prop_map(
            |(host, auto_failover, window, volume, thresholds, damping, capacity, guards)| {
                FailoverPolicySpec {
                    host,
                    auto_failover,
                    window,
                    min_request_volume: volume,
                    thresholds,
                    damping,
                    capacity,
                    guards,
                }
            },
        )
}

fn mesh_cluster() -> impl Strategy<Value = MeshClusterSpec> {
    (
        text(),
        locality(),
        text(),
        vec(
            ("[a-z0-9.]{1,12}", any::<u32>())
                .prop_map(|(address, port)| GatewayAddress { address, port }),
            0..3,
        ),
    )
        .prop_map(
            |(cluster_name, locality, network, gateways)| MeshClusterSpec {
                cluster_name,
                locality,
                network,
                east_west_gateways: gateways,
            },
        )
}

fn object_meta() -> impl Strategy<Value = ObjectMeta> {
    (
        "[a-z]{1,10}",
        "[a-z]{1,10}",
        small_map(),
        small_map(),
        text(),
        any::<i64>(),
    )
        .prop_map(
            |(name, namespace, labels, annotations, resource_version, generation)| ObjectMeta {
                name,
                namespace,
                labels,
                annotations,
                resource_version,
                generation,
                ..ObjectMeta::default()
            },
        )
}

/// Writes `value` with serde and reads it back with Fulcrum's decoder.
fn round_trip<T>(value: &T) -> Result<(), TestCaseError>
where
    T: Decode + serde::Serialize + PartialEq + Debug,
{
    let yaml = serde_saphyr::to_string(value)
        .map_err(|e| TestCaseError::fail(format!("serialize: {e}")))?;
    let documents = parse_documents(&yaml, &Limits::default())
        .map_err(|e| TestCaseError::fail(format!("parse {yaml:?}: {e}")))?;
    let mut d = Decoder::new();
    let back = match documents.first() {
        Some(doc) => T::decode(&doc.root, &mut d),
        None => T::decode(
            &fulcrum_policy::yaml::Node {
                value: fulcrum_policy::yaml::Value::Mapping(Vec::new()),
                mark: Default::default(),
            },
            &mut d,
        ),
    };
    let errors: Vec<_> = d
        .into_findings()
        .into_iter()
        .filter(|f| f.severity == Severity::Error)
        .collect();
    prop_assert!(errors.is_empty(), "decode errors {errors:?} for:\n{yaml}");
    prop_assert_eq!(&back, value, "YAML was:\n{}", yaml);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn destination_rules_round_trip(spec in destination_rule()) {
        round_trip(&spec)?;
    }

    #[test]
    fn virtual_services_round_trip(spec in virtual_service()) {
        round_trip(&spec)?;
    }

    #[test]
    fn service_entries_round_trip(spec in service_entry()) {
        round_trip(&spec)?;
    }

    #[test]
    fn workload_entries_round_trip(spec in workload_entry()) {
        round_trip(&spec)?;
    }

    #[test]
    fn failover_policies_round_trip(spec in failover_policy()) {
        round_trip(&spec)?;
    }

    #[test]
    fn mesh_clusters_round_trip(spec in mesh_cluster()) {
        round_trip(&spec)?;
    }

    #[test]
    fn object_metadata_round_trips(meta in object_meta()) {
        round_trip(&meta)?;
    }
}
