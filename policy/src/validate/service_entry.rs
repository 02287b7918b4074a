//! ServiceEntry and WorkloadEntry validation: Istio's `ValidateServiceEntry` and
//! `validateWorkloadEntry`, plus the CEL rules of their CRDs (which is where messages such
//! as "UDS may not include ports" come from).

use std::collections::{BTreeMap, BTreeSet};

use super::names;
use super::{Checker, export_to, workload_selector};
use crate::istio::{Resolution, ServiceEntrySpec, WorkloadEntrySpec};
use crate::locality::Locality;

const UNIX_PREFIX: &str = "unix://";
const MAX_HOSTS: usize = 256;
const MAX_ADDRESSES: usize = 256;
const MAX_PORTS: usize = 256;
const MAX_ENDPOINTS: usize = 4096;
const MAX_ENDPOINT_PORTS: usize = 128;
const MAX_ADDRESS_LEN: usize = 256;
const MAX_LOCALITY_LEN: usize = 2048;
const MAX_SERVICE_ACCOUNT_LEN: usize = 253;

pub(super) fn check_service_entry(c: &mut Checker, spec: &ServiceEntrySpec, namespace: &str) {
    let resolution = spec.resolution();
    if let Some(selector) = &spec.workload_selector {
        c.at("workloadSelector", |c| {
            workload_selector(c, "labels", &selector.labels)
        });
        if !spec.endpoints.is_empty() {
            c.error("only one of workloadSelector or endpoints can be set");
        }
    }

    c.at("hosts", |c| {
        if spec.hosts.is_empty() {
            c.error("a ServiceEntry needs at least one host");
        }
        if spec.hosts.len() > MAX_HOSTS {
            c.error(format!("at most {MAX_HOSTS} hosts are allowed"));
        }
        for (i, host) in spec.hosts.iter().enumerate() {
            c.at_index(i, |c| {
                if host == "*" {
                    c.error("hostname cannot be wildcard \"*\"");
                    return;
                }
                c.check(names::check_wildcard_domain(host));
                if let Err(e) = names::check_partial_wildcard(host) {
                    c.warn(e);
                }
            });
        }
    });

    c.at("addresses", |c| {
        if spec.addresses.len() > MAX_ADDRESSES {
            c.error(format!("at most {MAX_ADDRESSES} addresses are allowed"));
        }
        for (i, address) in spec.addresses.iter().enumerate() {
            c.at_index(i, |c| c.check(names::check_ip_subnet(address)));
        }
        let has_cidr = spec.addresses.iter().any(|a| a.contains('/'));
        if has_cidr && !matches!(resolution, Resolution::None | Resolution::Static) {
            c.error("CIDR addresses are allowed only for NONE/STATIC resolution types");
        }
    });

    let port_names: BTreeSet<&str> = spec.ports.iter().map(|p| p.name.as_str()).collect();
    c.at("ports", |c| {
        if spec.ports.len() > MAX_PORTS {
            c.error(format!("at most {MAX_PORTS} ports are allowed"));
        }
        let mut names_seen: BTreeMap<&str, usize> = BTreeMap::new();
        let mut numbers_seen: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, port) in spec.ports.iter().enumerate() {
            c.at_index(i, |c| {
                if let Some(first) = names_seen.insert(&port.name, i) {
                    c.error(format!(
                        "Duplicate value: the port name {:?} is also used by ports[{first}]",
                        port.name
                    ));
                    names_seen.insert(&port.name, first);
                }
                if let Some(first) = numbers_seen.insert(port.number, i) {
                    c.error_in(
                        "number",
                        format!(
                            "port number cannot be duplicated: {} is also used by \
                             ports[{first}]",
                            port.number
                        ),
                    );
                    numbers_seen.insert(port.number, first);
                }
                c.port("number", port.number);
                if port.target_port != 0 {
                    c.port("targetPort", port.target_port);
                    if resolution == Resolution::None {
                        c.warn_in(
                            "targetPort",
                            "targetPort has no effect when resolution is NONE",
                        );
                    }
                }
                if !names::is_dns1123_label(&port.name) {
                    c.error_in("name", format!("invalid port name {:?}", port.name));
                }
                if !port.protocol.is_empty() && !names::is_known_protocol(&port.protocol) {
                    c.error_in(
                        "protocol",
                        format!(
                            "unsupported protocol {:?}; use HTTP, HTTPS, HTTP2, GRPC, \
                             GRPC-WEB, TCP, TLS, UDP, MONGO, REDIS or MYSQL",
                            port.protocol
                        ),
                    );
                }
            });
        }
    });

    c.at("endpoints", |c| {
        if spec.endpoints.len() > MAX_ENDPOINTS {
            c.error(format!("at most {MAX_ENDPOINTS} endpoints are allowed"));
        }
        match resolution {
            Resolution::None => {
                if !spec.endpoints.is_empty() {
                    c.error("NONE mode cannot set endpoints; use resolution STATIC or DNS");
                }
            }
            Resolution::Static => {
                for (i, endpoint) in spec.endpoints.iter().enumerate() {
                    c.at_index(i, |c| {
                        workload_entry(c, endpoint, Some(&port_names), false);
                    });
                }
            }
            Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns => {
                if resolution == Resolution::DnsRoundRobin && spec.endpoints.len() > 1 {
                    c.error("DNS_ROUND_ROBIN mode cannot have multiple endpoints");
                }
                for (i, endpoint) in spec.endpoints.iter().enumerate() {
                    c.at_index(i, |c| {
                        workload_entry(c, endpoint, Some(&port_names), true);
                    });
                }
            }
        }
    });

    if matches!(
        resolution,
        Resolution::Dns | Resolution::DnsRoundRobin | Resolution::DynamicDns
    ) && spec.endpoints.is_empty()
    {
        c.at("hosts", |c| {
            for (i, host) in spec.hosts.iter().enumerate() {
                // Under DYNAMIC_DNS a wildcard's names are resolved as requests ask for
                // them.
                let per_request = resolution == Resolution::DynamicDns
                    && host
                        .strip_prefix("*.")
                        .is_some_and(|rest| names::check_fqdn(rest).is_ok());
                if host != "*" && !per_request && names::check_fqdn(host).is_err() {
                    let or_wildcards = match resolution {
                        Resolution::DynamicDns => " (or wildcards, *.example.com)",
                        _ => "",
                    };
                    c.at_index(i, |c| {
                        c.error(format!(
                            "hosts must be fully qualified names{or_wildcards} when resolution \
                             is {resolution} and no endpoints are given"
                        ))
                    });
                }
            }
        });
    }
    if spec.workload_selector.is_some() && resolution != Resolution::Static {
        c.warn_in(
            "workloadSelector",
            format!("workloadSelector should not be set when resolution is {resolution}"),
        );
    }
    if resolution != Resolution::None && spec.hosts.len() > 1 {
        let bad = spec.ports.iter().position(|p| {
            !names::is_http_protocol(&p.protocol) && !names::is_tls_protocol(&p.protocol)
        });
        if let Some(i) = bad {
            c.at("ports", |c| {
                c.at_index(i, |c| {
                    c.error(
                        "several hosts need HTTP or TLS ports (the host or SNI tells them \
                         apart); plain TCP works only with resolution NONE",
                    )
                })
            });
        }
    }
    export_to(c, namespace, &spec.export_to, true, false);
}

pub(super) fn check_workload_entry(c: &mut Checker, spec: &WorkloadEntrySpec) {
    workload_entry(c, spec, None, true);
}

/// Istio's `validateWorkloadEntry` plus the CRD's endpoint rules. `service_ports` is set for
/// ServiceEntry endpoints, whose port names must be the ServiceEntry's.
fn workload_entry(
    c: &mut Checker,
    we: &WorkloadEntrySpec,
    service_ports: Option<&BTreeSet<&str>>,
    allow_fqdn: bool,
) {
    let address = we.address.as_str();
    if address.is_empty() {
        if we.network.is_empty() {
            c.error_in(
                "address",
                "Address is required (or set network for a remote endpoint)",
            );
            return;
        }
        c.warn_in(
            "address",
            format!("address is unset with network {:?}", we.network),
        );
    }
    if address.len() > MAX_ADDRESS_LEN {
        c.error_in(
            "address",
            format!("address is longer than {MAX_ADDRESS_LEN} characters"),
        );
    }
    let is_unix = address.starts_with(UNIX_PREFIX);
    if let Some(path) = address.strip_prefix(UNIX_PREFIX) {
        c.at("address", |c| {
            if !(path.starts_with('/') || path.starts_with('@')) {
                c.error("UDS must be an absolute path or abstract socket (unix:///path or unix://@name)");
            } else if path.ends_with('/') {
                c.error("UDS may not be a dir");
            }
        });
        if !we.ports.is_empty() {
            c.error_in("ports", "UDS may not include ports");
        }
        if let Some(ports) = service_ports
            && ports.len() != 1
        {
            c.error_in(
                "address",
                "a unix socket endpoint needs exactly one port on its ServiceEntry",
            );
        }
    } else if !address.is_empty() && names::parse_ip(address).is_none() {
        if !allow_fqdn {
            c.error_in(
                "address",
                format!(
                    "endpoint address {address:?} is not a valid IP address (resolution STATIC)"
                ),
            );
        } else if names::check_fqdn(address).is_err() {
            c.error_in(
                "address",
                format!("endpoint address {address:?} is not a valid FQDN or IP address"),
            );
        }
    }

    c.at("ports", |c| {
        if we.ports.len() > MAX_ENDPOINT_PORTS {
            c.error(format!("at most {MAX_ENDPOINT_PORTS} ports are allowed"));
        }
        for (name, number) in &we.ports {
            if !names::is_dns1123_label(name) {
                c.error(format!(
                    "invalid port name {name:?}: port names must be DNS-1123 labels"
                ));
            }
            c.at_key(name, |c| {
                if let Some(service_ports) = service_ports
                    && !service_ports.contains(name.as_str())
                {
                    c.error(format!(
                        "endpoint port {name:?} is not defined by the ServiceEntry's ports"
                    ));
                }
                if !is_unix {
                    c.check(names::check_port(*number));
                }
            });
        }
    });
    c.labels("labels", &we.labels);

    c.at("locality", |c| {
        if we.locality.len() > MAX_LOCALITY_LEN {
            c.error(format!(
                "locality is longer than {MAX_LOCALITY_LEN} characters"
            ));
        } else if let Err(e) = we.locality.parse::<Locality>() {
            c.warn(format!(
                "{e}; Fulcrum treats this endpoint as having no locality"
            ));
        }
    });
    if we.service_account.len() > MAX_SERVICE_ACCOUNT_LEN {
        c.error_in(
            "serviceAccount",
            format!("serviceAccount is longer than {MAX_SERVICE_ACCOUNT_LEN} characters"),
        );
    }
    if we.network.len() > MAX_LOCALITY_LEN {
        c.error_in(
            "network",
            format!("network is longer than {MAX_LOCALITY_LEN} characters"),
        );
    }
}
