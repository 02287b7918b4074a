//! Endpoints named by DNS: a ServiceEntry whose `resolution` is `DNS` or
//! `DNS_ROUND_ROBIN` may give its endpoints by name (a VM's or a load balancer's), and
//! the proxy reaches them at the addresses the names resolve to.
//!
//! One task resolves every name the configuration gives, through the system's resolver,
//! at once when the configuration names new ones and again every `--dns-refresh`
//! ([`REFRESH`] by default, Envoy's default rate for its DNS clusters). When the answers change, the
//! routing is built again with them. A name that fails to resolve keeps the addresses it
//! had, as Envoy keeps a DNS cluster's hosts when a lookup fails; one never resolved has
//! no endpoint until it is.
//!
//! Names under a wildcard host that is resolved per request (a ServiceEntry for
//! `*.example.com` without endpoints, under `resolution: NONE` or `DYNAMIC_DNS`) are looked
//! up by the first request for each, which waits for the answer, as Envoy's dynamic forward
//! proxy does; the task then resolves them again with the others, until no request has
//! asked for one for [`LOOKED_UP_IDLE`]. At most [`LOOKED_UP_MAX`] such names are kept.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;

use crate::discovery::Resolved;
use crate::outbound::Outbound;

/// How often every name is resolved again, unless the proxy is told otherwise.
pub const REFRESH: Duration = Duration::from_secs(5);
/// How long one lookup may take (Envoy's default DNS query timeout).
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a name looked up for requests is kept, and resolved again, after the last
/// request for it (the dynamic forward proxy's default `host_ttl`).
pub const LOOKED_UP_IDLE: Duration = Duration::from_secs(300);
/// How many names looked up for requests are kept at once (its default `max_hosts`).
pub const LOOKED_UP_MAX: usize = 1024;

/// What a lookup finds: a name's addresses, sorted, each once; or why there are none.
pub type Found = Result<Arc<[IpAddr]>, String>;

/// How names are looked up: the system's resolver ([`Resolver::system`]), or, in tests,
/// one that answers from a table and sends no query.
#[derive(Clone)]
pub struct Resolver(Arc<dyn Fn(String) -> BoxFuture<'static, Found> + Send + Sync>);

impl Resolver {
    /// The system's resolver (`getaddrinfo`, as configured in `/etc/nsswitch.conf`).
    pub fn system() -> Resolver {
        Resolver::new(system_lookup)
    }

    /// A resolver that looks a name up with `lookup`.
    pub fn new<F, Looking>(lookup: F) -> Resolver
    where
        F: Fn(String) -> Looking + Send + Sync + 'static,
        Looking: Future<Output = Found> + Send + 'static,
    {
        Resolver(Arc::new(move |name| Box::pin(lookup(name))))
    }

    /// What `name` resolves to, within [`LOOKUP_TIMEOUT`].
    pub async fn lookup(&self, name: String) -> Found {
        match tokio::time::timeout(LOOKUP_TIMEOUT, (self.0)(name)).await {
            Ok(found) => found,
            Err(_) => Err(format!("no answer within {}s", LOOKUP_TIMEOUT.as_secs())),
        }
    }
}

impl Default for Resolver {
    fn default() -> Resolver {
        Resolver::system()
    }
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Resolver")
    }
}

/// Resolves the names `outbound`'s configuration gives its endpoints, and those looked up
/// for requests, until `stop`.
pub async fn run(outbound: Arc<Outbound>, refresh: Duration, mut stop: watch::Receiver<bool>) {
    let mut resolved = Resolved::default();
    // Names whose last lookup failed: a failure is told when it begins, not every turn.
    let mut failing = BTreeSet::new();
    let resolver = outbound.resolver().clone();
    let lookup = |name: String| {
        let resolver = resolver.clone();
        async move { resolver.lookup(name).await }
    };
    loop {
        let names = outbound.dns_names();
        failing.retain(|name| names.contains(name));
        if !names.is_empty() {
            resolved = resolve_all(&names, &resolved, &mut failing, lookup).await;
            outbound.resolved(resolved.clone());
        }
        tokio::select! {
            () = tokio::time::sleep(refresh), if !names.is_empty() => {}
            () = outbound.dns_changed() => {}
            _ = stop.changed() => return,
        }
    }
}

/// What each of `names` resolves to now by `lookup`; a name that fails keeps what it
/// had in `before`. `failing` holds the names whose lookup failed, kept up to date.
async fn resolve_all<F, Found>(
    names: &[String],
    before: &Resolved,
    failing: &mut BTreeSet<String>,
    lookup: F,
) -> Resolved
where
    F: Fn(String) -> Found,
    Found: Future<Output = Result<Arc<[IpAddr]>, String>>,
{
    let lookups = names.iter().map(|name| {
        let found = lookup(name.clone());
        async move { (name, found.await) }
    });
    let mut resolved = Resolved::default();
    for (name, found) in futures::future::join_all(lookups).await {
        match found {
            Ok(addresses) => {
                if failing.remove(name) {
                    tracing::info!("endpoint name {name} resolves again: {addresses:?}");
                }
                resolved.insert(name.clone(), addresses);
            }
            Err(why) => {
                let kept = before.get(name);
                if failing.insert(name.clone()) {
                    let keeping =
                        kept.map_or("no address yet".into(), |a| format!("keeping {a:?}"));
                    tracing::warn!("endpoint name {name} does not resolve ({why}); {keeping}");
                }
                if let Some(kept) = kept {
                    resolved.insert(name.clone(), kept.clone());
                }
            }
        }
    }
    resolved
}

/// The addresses `name` resolves to by the system's resolver, sorted, each once.
async fn system_lookup(name: String) -> Found {
    let addresses: BTreeSet<IpAddr> = match tokio::net::lookup_host((name.as_str(), 0)).await {
        Ok(found) => found.map(|a| a.ip()).collect(),
        Err(e) => return Err(e.to_string()),
    };
    if addresses.is_empty() {
        return Err("no address".into());
    }
    Ok(addresses.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn localhost_resolves_to_loopback() {
        let found = Resolver::system()
            .lookup("localhost".into())
            .await
            .expect("localhost resolves");
        assert!(found.iter().all(IpAddr::is_loopback), "{found:?}");
    }

    #[tokio::test]
    async fn a_name_that_fails_to_resolve_keeps_what_it_had() {
        // A resolver of its own: no query leaves the machine.
        let fake = |name: String| async move {
            match name.as_str() {
                "up.example" => Ok(Arc::from([IpAddr::from([127, 0, 0, 7])])),
                _ => Err("no such name".to_string()),
            }
        };
        let names = ["up.example".to_string(), "down.example".to_string()];
        let mut before = Resolved::default();
        let kept: Arc<[IpAddr]> = Arc::from([IpAddr::from([127, 0, 0, 9])]);
        before.insert("down.example".into(), kept.clone());
        let mut failing = BTreeSet::new();
        let resolved = resolve_all(&names, &before, &mut failing, fake).await;
        assert_eq!(&*resolved["up.example"], [IpAddr::from([127, 0, 0, 7])]);
        assert_eq!(resolved["down.example"], kept);
        assert_eq!(failing, BTreeSet::from(["down.example".to_string()]));
        let fresh = resolve_all(&names, &Resolved::default(), &mut failing, fake).await;
        assert!(
            !fresh.contains_key("down.example"),
            "never resolved: no endpoint"
        );
    }
}
