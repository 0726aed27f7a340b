//! Resource paths: `/api/v1/...` and `/apis/<group>/<version>/...` split into group,
//! version, namespace, resource, name and subresource the way Kubernetes' request-info
//! parser does (including its rule that `namespaces/<ns>/status` and `/finalize` are
//! subresources of the namespace, not resources inside it).

/// What a resource request addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub group: String,
    pub version: String,
    pub namespace: Option<String>,
    pub resource: String,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

const NAMESPACE_SUBRESOURCES: &[&str] = &["status", "finalize"];

/// Parses a resource path; `None` for anything else (discovery documents, unknown roots).
pub fn parse(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", version, rest @ ..] => ("", *version, rest),
        ["apis", group, version, rest @ ..] => (*group, *version, rest),
        _ => return None,
    };
    if rest.is_empty() || rest.iter().any(|p| p.is_empty()) {
        return None;
    }
    let (namespace, rest) = match rest {
        ["namespaces", ns, sub, more @ ..] if !NAMESPACE_SUBRESOURCES.contains(sub) => (
            Some((*ns).to_owned()),
            std::iter::once(*sub)
                .chain(more.iter().copied())
                .collect::<Vec<_>>(),
        ),
        _ => (None, rest.to_vec()),
    };
    let (resource, name, subresource) = match rest.as_slice() {
        [resource] => (*resource, None, None),
        [resource, name] => (*resource, Some(*name), None),
        [resource, name, sub, ..] => (*resource, Some(*name), Some(*sub)),
        [] => return None,
    };
    Some(Target {
        group: group.to_owned(),
        version: version.to_owned(),
        namespace,
        resource: resource.to_owned(),
        name: name.map(str::to_owned),
        subresource: subresource.map(str::to_owned),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(
        group: &str,
        ns: Option<&str>,
        resource: &str,
        name: Option<&str>,
        sub: Option<&str>,
    ) -> Target {
        Target {
            group: group.into(),
            version: "v1".into(),
            namespace: ns.map(Into::into),
            resource: resource.into(),
            name: name.map(Into::into),
            subresource: sub.map(Into::into),
        }
    }

    #[test]
    fn core_and_group_paths() {
        assert_eq!(parse("/api/v1/pods"), Some(t("", None, "pods", None, None)));
        assert_eq!(
            parse("/api/v1/namespaces/a/pods/p/status"),
            Some(t("", Some("a"), "pods", Some("p"), Some("status")))
        );
        assert_eq!(
            parse("/apis/apps/v1/namespaces/a/deployments"),
            Some(t("apps", Some("a"), "deployments", None, None))
        );
        assert_eq!(
            parse("/apis/rbac.authorization.k8s.io/v1/clusterroles/admin"),
            Some(t(
                "rbac.authorization.k8s.io",
                None,
                "clusterroles",
                Some("admin"),
                None
            ))
        );
    }

    #[test]
    fn namespaces_themselves_and_their_subresources() {
        assert_eq!(
            parse("/api/v1/namespaces"),
            Some(t("", None, "namespaces", None, None))
        );
        assert_eq!(
            parse("/api/v1/namespaces/a"),
            Some(t("", None, "namespaces", Some("a"), None))
        );
        assert_eq!(
            parse("/api/v1/namespaces/a/finalize"),
            Some(t("", None, "namespaces", Some("a"), Some("finalize")))
        );
        assert_eq!(
            parse("/api/v1/namespaces/a/configmaps"),
            Some(t("", Some("a"), "configmaps", None, None))
        );
    }

    #[test]
    fn non_resource_paths_are_not_targets() {
        assert_eq!(parse("/api"), None);
        assert_eq!(parse("/api/v1"), None);
        assert_eq!(parse("/apis/apps/v1"), None);
        assert_eq!(parse("/version"), None);
        assert_eq!(parse("/api/v1//x"), None);
    }
}
