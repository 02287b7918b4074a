//! The names an application may give a service. From a sidecar, a Kubernetes service
//! `NAME.NAMESPACE.svc.cluster.local` is also reached as `NAME.NAMESPACE.svc`,
//! `NAME.NAMESPACE` and `NAME` (its pod's DNS search path). A sidecar reads `NAME` in its
//! own namespace; a cluster's proxy serves every namespace, so here `NAME` stands for the
//! service only while one namespace has a service of that name, and is refused as
//! ambiguous when several do (the client then gives the namespace).

use fulcrum_policy::references::DEFAULT_DOMAIN;

use crate::FastMap;

/// Short names of the mesh's Kubernetes services, to their full names.
#[derive(Debug, Clone, Default)]
pub struct ServiceNames {
    /// Each short form, to the full names it may stand for (sorted, no repeats).
    aliases: FastMap<String, Vec<String>>,
}

impl ServiceNames {
    /// The short forms of `hosts` (full names, in any case; names that are not a
    /// Kubernetes service's have none).
    pub fn new<'a>(hosts: impl IntoIterator<Item = &'a str>) -> ServiceNames {
        let suffix = format!(".svc.{DEFAULT_DOMAIN}");
        let mut aliases: FastMap<String, Vec<String>> = FastMap::default();
        for host in hosts {
            let host = host.to_ascii_lowercase();
            let Some((name, namespace)) = host
                .strip_suffix(&suffix)
                .and_then(|rest| rest.split_once('.'))
                .filter(|(name, namespace)| is_label(name) && is_label(namespace))
            else {
                continue;
            };
            for alias in [
                format!("{name}.{namespace}.svc"),
                format!("{name}.{namespace}"),
                name.to_string(),
            ] {
                let full = aliases.entry(alias).or_default();
                if let Err(at) = full.binary_search(&host) {
                    full.insert(at, host.clone());
                }
            }
        }
        ServiceNames { aliases }
    }

    /// The full name `host` stands for: `Ok(None)` when it is no short form (it is
    /// taken as it is), an error naming the candidates when it is ambiguous.
    pub fn resolve(&self, host: &str) -> Result<Option<&str>, String> {
        if self.aliases.is_empty() {
            return Ok(None);
        }
        match self
            .aliases
            .get(crate::lower_case(host).as_ref())
            .map(Vec::as_slice)
        {
            None => Ok(None),
            Some([one]) => Ok(Some(one)),
            Some(many) => Err(format!(
                "{host:?} names a service in several namespaces ({}): give the namespace",
                many.join(", ")
            )),
        }
    }
}

/// Whether `text` is a DNS label, as Kubernetes names of services and namespaces are.
fn is_label(text: &str) -> bool {
    !text.is_empty() && (text.bytes()).all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_forms_stand_for_one_service_and_ambiguity_is_named() {
        let names = ServiceNames::new([
            "reviews.default.svc.cluster.local",
            "Ratings.Default.svc.cluster.local",
            "ratings.test.svc.cluster.local",
            "shop.example",
            "*.shop.svc.cluster.local",
            "a.b.c.svc.cluster.local",
        ]);
        let full = "reviews.default.svc.cluster.local";
        for short in [
            "reviews",
            "reviews.default",
            "reviews.default.svc",
            "REVIEWS",
        ] {
            assert_eq!(names.resolve(short), Ok(Some(full)), "{short}");
        }
        assert_eq!(
            names.resolve("ratings.test"),
            Ok(Some("ratings.test.svc.cluster.local"))
        );
        let ambiguous = names.resolve("ratings").unwrap_err();
        assert!(
            ambiguous.contains("ratings.default.svc.cluster.local, ratings.test.svc.cluster.local"),
            "{ambiguous}"
        );
        // Full names, other names, wildcards and names that are no service's: as they are.
        for other in [full, "shop.example", "shop", "a.b.c", "unknown", "*"] {
            assert_eq!(names.resolve(other), Ok(None), "{other}");
        }
    }
}
