//! The binary form of commands: `fulcrum.raft.v1.Command` (`proto/.../command.proto`).
//!
//! Every entry is decoded once by each follower and written once by each node, so the form
//! is made to be cheap to read: protobuf, and a digest's names (clusters, services,
//! locality parts) written once and referred to by index. Decoding checks what a damaged
//! or hostile peer could get wrong and names the field.

use std::collections::HashMap;
use std::sync::Arc;

use fulcrum_policy::Locality;
use fulcrum_policy::engine::DrainTarget;
use fulcrum_policy::engine::digest::{
    HealthDigest, InventorySample, ReachabilitySample, TrafficSample,
};
use fulcrum_policy::engine::state::Inventory;
use fulcrum_policy::engine::window::Counters;
use fulcrum_proto::raft::v1 as pb;
use prost::Message;

use super::command::{Change, ObjectKey, StoredObject};

/// Why bytes are not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct DecodeError {
    /// The field, e.g. `change.digest.traffic[3].service`.
    pub field: String,
    /// What is wrong with it.
    pub reason: String,
}

impl DecodeError {
    fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        DecodeError {
            field: field.into(),
            reason: reason.into(),
        }
    }

    fn missing(field: &str) -> Self {
        DecodeError::new(field, "required field is missing")
    }

    fn within(mut self, prefix: &str) -> Self {
        self.field = if self.field.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{}", self.field)
        };
        self
    }
}

/// A command's bytes.
pub fn encode_command(at_ms: u64, change: &Change) -> Vec<u8> {
    pb::Command {
        at_ms,
        change: Some(change_to_wire(change)),
    }
    .encode_to_vec()
}

/// A command from its bytes: the leader's timestamp and the change.
pub fn decode_command(bytes: &[u8]) -> Result<(u64, Change), DecodeError> {
    let command = pb::Command::decode(bytes)
        .map_err(|e| DecodeError::new("", format!("not a fulcrum.raft.v1.Command: {e}")))?;
    let change = command
        .change
        .as_ref()
        .ok_or_else(|| DecodeError::missing("change"))?;
    let change = change_from_wire(change, true).map_err(|e| e.within("change"))?;
    Ok((command.at_ms, change))
}

/// A change's bytes (what a follower forwards to the leader).
pub fn encode_change(change: &Change) -> Vec<u8> {
    change_to_wire(change).encode_to_vec()
}

/// A change from its bytes.
pub fn decode_change(bytes: &[u8]) -> Result<Change, DecodeError> {
    let change = pb::Change::decode(bytes)
        .map_err(|e| DecodeError::new("", format!("not a fulcrum.raft.v1.Change: {e}")))?;
    change_from_wire(&change, true)
}

fn change_to_wire(change: &Change) -> pb::Change {
    use pb::change::Change as C;
    let inner = match change {
        Change::Apply { objects } => C::Apply(pb::ApplyObjects {
            objects: objects
                .iter()
                .map(|o| pb::StoredObject {
                    key: Some(key_to_wire(&o.key)),
                    json: o.json.clone(),
                })
                .collect(),
        }),
        Change::Delete { key } => C::Delete(key_to_wire(key)),
        Change::Digest { digest } => C::Digest(digest_to_wire(digest)),
        Change::Tick => C::Tick(pb::Tick {}),
        Change::Drain {
            target,
            service,
            reason,
            requested_by,
        } => C::Drain(pb::Drain {
            target: Some(target_to_wire(target)),
            service: service.clone(),
            reason: reason.clone(),
            requested_by: requested_by.clone(),
        }),
        Change::Undrain { target, service } => C::Undrain(pb::Undrain {
            target: Some(target_to_wire(target)),
            service: service.clone(),
        }),
        Change::Batch { changes } => C::Batch(pb::Batch {
            changes: changes.iter().map(|c| change_to_wire(c)).collect(),
        }),
    };
    pb::Change {
        change: Some(inner),
    }
}

fn change_from_wire(change: &pb::Change, batch_allowed: bool) -> Result<Change, DecodeError> {
    use pb::change::Change as C;
    Ok(
        match change
            .change
            .as_ref()
            .ok_or_else(|| DecodeError::missing("change"))?
        {
            C::Apply(apply) => Change::Apply {
                objects: apply
                    .objects
                    .iter()
                    .enumerate()
                    .map(|(i, o)| {
                        let key = o.key.as_ref().ok_or_else(|| DecodeError::missing("key"));
                        key.and_then(key_from_wire)
                            .map(|key| StoredObject {
                                key,
                                json: o.json.clone(),
                            })
                            .map_err(|e| e.within(&format!("apply.objects[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
            },
            C::Delete(key) => Change::Delete {
                key: key_from_wire(key).map_err(|e| e.within("delete"))?,
            },
            C::Digest(digest) => Change::Digest {
                digest: digest_from_wire(digest).map_err(|e| e.within("digest"))?,
            },
            C::Tick(_) => Change::Tick,
            C::Drain(drain) => Change::Drain {
                target: target_from_wire(drain.target.as_ref()).map_err(|e| e.within("drain"))?,
                service: drain.service.clone(),
                reason: drain.reason.clone(),
                requested_by: drain.requested_by.clone(),
            },
            C::Undrain(undrain) => Change::Undrain {
                target: target_from_wire(undrain.target.as_ref())
                    .map_err(|e| e.within("undrain"))?,
                service: undrain.service.clone(),
            },
            C::Batch(batch) if batch_allowed => Change::Batch {
                changes: batch
                    .changes
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        change_from_wire(c, false)
                            .map(Arc::new)
                            .map_err(|e| e.within(&format!("batch.changes[{i}]")))
                    })
                    .collect::<Result<_, _>>()?,
            },
            C::Batch(_) => return Err(DecodeError::new("batch", "a batch inside a batch")),
        },
    )
}

fn key_to_wire(key: &ObjectKey) -> pb::ObjectKey {
    pb::ObjectKey {
        kind: key.kind.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    }
}

fn key_from_wire(key: &pb::ObjectKey) -> Result<ObjectKey, DecodeError> {
    for (field, value) in [("kind", &key.kind), ("name", &key.name)] {
        if value.is_empty() {
            return Err(DecodeError::new(field, "must not be empty"));
        }
    }
    Ok(ObjectKey {
        kind: key.kind.clone(),
        namespace: key.namespace.clone(),
        name: key.name.clone(),
    })
}

fn target_to_wire(target: &DrainTarget) -> pb::DrainTarget {
    use pb::drain_target::Target;
    pb::DrainTarget {
        target: Some(match target {
            DrainTarget::Cluster(c) => Target::Cluster(c.clone()),
            DrainTarget::Locality(l) => Target::Locality(l.to_string()),
        }),
    }
}

fn target_from_wire(target: Option<&pb::DrainTarget>) -> Result<DrainTarget, DecodeError> {
    use pb::drain_target::Target;
    match target.and_then(|t| t.target.as_ref()) {
        None => Err(DecodeError::missing("target")),
        Some(Target::Cluster(c)) => Ok(DrainTarget::Cluster(c.clone())),
        Some(Target::Locality(l)) => l
            .parse()
            .map(DrainTarget::Locality)
            .map_err(|e| DecodeError::new("target.locality", format!("{e}"))),
    }
}

/// Gives each distinct name one index.
#[derive(Default)]
struct Names<'a> {
    index: HashMap<&'a str, u32>,
    names: Vec<String>,
}

impl<'a> Names<'a> {
    fn of(&mut self, name: &'a str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        // More than 2^32 distinct names cannot fit in a message anyway.
        let i = u32::try_from(self.names.len()).unwrap_or(u32::MAX);
        self.names.push(name.to_string());
        self.index.insert(name, i);
        i
    }

    fn locality(&mut self, l: &'a Locality) -> [u32; 3] {
        [self.of(&l.region), self.of(&l.zone), self.of(&l.subzone)]
    }
}

fn digest_to_wire(digest: &HealthDigest) -> pb::HealthDigest {
    let mut names = Names::default();
    let reporters = digest.reporters.iter().map(|r| names.of(r)).collect();
    let traffic = digest
        .traffic
        .iter()
        .map(|t| {
            let [region, zone, subzone] = names.locality(&t.locality);
            pb::TrafficCount {
                service: names.of(&t.service),
                source_cluster: names.of(&t.source_cluster),
                region,
                zone,
                subzone,
                requests: t.counters.requests,
                http_5xx: t.counters.http_5xx,
                gateway_errors: t.counters.gateway_errors,
                connect_failures: t.counters.connect_failures,
            }
        })
        .collect();
    let inventory = digest
        .inventory
        .iter()
        .map(|s| {
            let [region, zone, subzone] = names.locality(&s.locality);
            pb::InventoryCount {
                cluster: names.of(&s.cluster),
                service: names.of(&s.service),
                region,
                zone,
                subzone,
                total: s.inventory.total,
                ready: s.inventory.ready,
                ejected: s.inventory.ejected,
            }
        })
        .collect();
    let reachability = digest
        .reachability
        .iter()
        .map(|r| pb::ReachabilityProbe {
            source_cluster: names.of(&r.source_cluster),
            target_cluster: names.of(&r.target_cluster),
            reachable: r.reachable,
        })
        .collect();
    pb::HealthDigest {
        names: names.names,
        reporters,
        traffic,
        inventory,
        reachability,
    }
}

/// Reads a digest's names back; localities are built once per distinct triple.
struct NameTable<'a> {
    names: &'a [String],
    localities: HashMap<[u32; 3], Locality>,
}

impl NameTable<'_> {
    fn name(&self, field: &str, i: u32) -> Result<&str, DecodeError> {
        self.names
            .get(i as usize)
            .map(String::as_str)
            .ok_or_else(|| {
                DecodeError::new(
                    field,
                    format!("name index {i}, but names has {}", self.names.len()),
                )
            })
    }

    fn locality(&mut self, parts: [u32; 3]) -> Result<Locality, DecodeError> {
        if let Some(l) = self.localities.get(&parts) {
            return Ok(l.clone());
        }
        let mut text = [""; 3];
        for ((field, i), part) in ["region", "zone", "subzone"]
            .into_iter()
            .zip(parts)
            .zip(&mut text)
        {
            *part = self.name(field, i)?;
            if part.contains(['/', '*']) {
                return Err(DecodeError::new(
                    field,
                    format!("locality part {part:?} contains '/' or '*'"),
                ));
            }
        }
        let locality = Locality::new(text[0], text[1], text[2]);
        self.localities.insert(parts, locality.clone());
        Ok(locality)
    }
}

fn digest_from_wire(digest: &pb::HealthDigest) -> Result<HealthDigest, DecodeError> {
    let mut table = NameTable {
        names: &digest.names,
        localities: HashMap::new(),
    };
    let at = |what: &'static str, i: usize| move |e: DecodeError| e.within(&format!("{what}[{i}]"));
    let mut out = HealthDigest {
        reporters: Vec::with_capacity(digest.reporters.len()),
        traffic: Vec::with_capacity(digest.traffic.len()),
        inventory: Vec::with_capacity(digest.inventory.len()),
        reachability: Vec::with_capacity(digest.reachability.len()),
    };
    for (i, &r) in digest.reporters.iter().enumerate() {
        let name = table.name("", r).map_err(at("reporters", i))?;
        out.reporters.push(name.to_string());
    }
    for (i, t) in digest.traffic.iter().enumerate() {
        out.traffic
            .push(traffic_from_wire(&mut table, t).map_err(at("traffic", i))?);
    }
    for (i, s) in digest.inventory.iter().enumerate() {
        out.inventory
            .push(inventory_from_wire(&mut table, s).map_err(at("inventory", i))?);
    }
    for (i, r) in digest.reachability.iter().enumerate() {
        out.reachability.push(ReachabilitySample {
            source_cluster: table
                .name("source_cluster", r.source_cluster)
                .map_err(at("reachability", i))?
                .to_string(),
            target_cluster: table
                .name("target_cluster", r.target_cluster)
                .map_err(at("reachability", i))?
                .to_string(),
            reachable: r.reachable,
        });
    }
    Ok(out)
}

fn traffic_from_wire(
    table: &mut NameTable<'_>,
    t: &pb::TrafficCount,
) -> Result<TrafficSample, DecodeError> {
    Ok(TrafficSample {
        service: table.name("service", t.service)?.to_string(),
        source_cluster: table.name("source_cluster", t.source_cluster)?.to_string(),
        locality: table.locality([t.region, t.zone, t.subzone])?,
        counters: Counters {
            requests: t.requests,
            http_5xx: t.http_5xx,
            gateway_errors: t.gateway_errors,
            connect_failures: t.connect_failures,
        },
    })
}

fn inventory_from_wire(
    table: &mut NameTable<'_>,
    s: &pb::InventoryCount,
) -> Result<InventorySample, DecodeError> {
    Ok(InventorySample {
        cluster: table.name("cluster", s.cluster)?.to_string(),
        service: table.name("service", s.service)?.to_string(),
        locality: table.locality([s.region, s.zone, s.subzone])?,
        inventory: Inventory {
            total: s.total,
            ready: s.ready,
            ejected: s.ejected,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest() -> HealthDigest {
        let l = |r: &str| Locality::new(r, &format!("{r}-a"), "");
        HealthDigest {
            reporters: vec!["east".into(), "west".into()],
            traffic: vec![
                TrafficSample {
                    service: "checkout.shop".into(),
                    source_cluster: "east".into(),
                    locality: l("us-west"),
                    counters: Counters {
                        requests: 1204,
                        http_5xx: 1168,
                        gateway_errors: 3,
                        connect_failures: 7,
                    },
                },
                TrafficSample {
                    service: "checkout.shop".into(),
                    source_cluster: "west".into(),
                    locality: l("us-east"),
                    counters: Counters {
                        requests: 9,
                        ..Counters::default()
                    },
                },
            ],
            inventory: vec![InventorySample {
                cluster: "west".into(),
                service: "checkout.shop".into(),
                locality: l("us-west"),
                inventory: Inventory {
                    total: 3,
                    ready: 2,
                    ejected: 1,
                },
            }],
            reachability: vec![ReachabilitySample {
                source_cluster: "east".into(),
                target_cluster: "west".into(),
                reachable: false,
            }],
        }
    }

    #[test]
    fn every_change_survives_the_round_trip() {
        let changes = vec![
            Change::Apply {
                objects: vec![StoredObject {
                    key: ObjectKey {
                        kind: "DestinationRule".into(),
                        namespace: "shop".into(),
                        name: "checkout".into(),
                    },
                    json: "{\"kind\":\"DestinationRule\"}".into(),
                }],
            },
            Change::Delete {
                key: ObjectKey {
                    kind: "MeshCluster".into(),
                    namespace: "default".into(),
                    name: "west".into(),
                },
            },
            Change::Digest { digest: digest() },
            Change::Tick,
            Change::Drain {
                target: DrainTarget::Locality("us-west/us-west-a".parse().unwrap()),
                service: Some("checkout.shop".into()),
                reason: "maintenance".into(),
                requested_by: "spiffe://fulcrum.test/admin/ops".into(),
            },
            Change::Undrain {
                target: DrainTarget::Cluster("west".into()),
                service: None,
            },
        ];
        let batch = Change::Batch {
            changes: changes.iter().cloned().map(Arc::new).collect(),
        };
        for change in changes.into_iter().chain([batch]) {
            let bytes = encode_command(42, &change);
            assert_eq!(decode_command(&bytes).unwrap(), (42, change.clone()));
            assert_eq!(decode_change(&encode_change(&change)).unwrap(), change);
        }
    }

    #[test]
    fn a_digest_names_each_string_once() {
        let wire = digest_to_wire(&digest());
        let mut names = wire.names.clone();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), wire.names.len());
        // east, west, checkout.shop, us-west, us-west-a, "", us-east, us-east-a
        assert_eq!(wire.names.len(), 8);
    }

    #[test]
    fn damaged_commands_are_refused_with_the_field() {
        assert!(decode_command(b"\xff\xff\xff").is_err());
        let missing = pb::Command {
            at_ms: 1,
            change: None,
        };
        assert_eq!(
            decode_command(&missing.encode_to_vec()).unwrap_err().field,
            "change"
        );
        let mut wire = digest_to_wire(&digest());
        wire.traffic[1].service = 99;
        let bad = pb::Command {
            at_ms: 1,
            change: Some(pb::Change {
                change: Some(pb::change::Change::Digest(wire)),
            }),
        };
        let err = decode_command(&bad.encode_to_vec()).unwrap_err();
        assert_eq!(err.field, "change.digest.traffic[1].service");
        assert!(err.reason.contains("name index 99"), "{err}");
        let mut wire = digest_to_wire(&digest());
        wire.names[3] = "us/west".into();
        let bad = pb::Change {
            change: Some(pb::change::Change::Digest(wire)),
        };
        let err = decode_change(&bad.encode_to_vec()).unwrap_err();
        assert!(err.field.starts_with("digest.traffic[0]"), "{err}");
        let nested = pb::Change {
            change: Some(pb::change::Change::Batch(pb::Batch {
                changes: vec![pb::Change {
                    change: Some(pb::change::Change::Batch(pb::Batch::default())),
                }],
            })),
        };
        assert_eq!(
            decode_change(&nested.encode_to_vec()).unwrap_err().field,
            "batch.changes[0].batch"
        );
    }
}
