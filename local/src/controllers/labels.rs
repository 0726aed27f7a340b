//! Label selectors (`matchLabels` + `matchExpressions`) as the controllers evaluate them
//! against cached or listed objects, and their query-string form for list requests.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` satisfy `selector`. An empty selector matches everything, as in
/// Kubernetes' `metav1.LabelSelectorAsSelector` (controllers refuse empty selectors where
/// Kubernetes does, before calling this).
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let expressions_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        let value = labels.get(&e.key);
        match e.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            // Validation rejects other operators; an unknown one selects nothing.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// Whether a plain map selector (a Service's `spec.selector`) matches `labels`.
pub fn map_matches(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The `labelSelector` query parameter for a selector.
pub fn to_query(selector: &LabelSelector) -> String {
    let mut parts: Vec<String> = selector
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in selector.match_expressions.iter().flatten() {
        let values = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

/// Whether a selector selects nothing in particular (Kubernetes' controllers treat an
/// empty Deployment/ReplicaSet selector as invalid rather than "everything").
pub fn is_empty(selector: &LabelSelector) -> bool {
    selector
        .match_labels
        .as_ref()
        .is_none_or(BTreeMap::is_empty)
        && selector
            .match_expressions
            .as_ref()
            .is_none_or(Vec::is_empty)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn match_labels_and_expressions() {
        let selector = LabelSelector {
            match_labels: Some(labels(&[("app", "web")])),
            match_expressions: Some(vec![
                LabelSelectorRequirement {
                    key: "tier".into(),
                    operator: "In".into(),
                    values: Some(vec!["a".into(), "b".into()]),
                },
                LabelSelectorRequirement {
                    key: "canary".into(),
                    operator: "DoesNotExist".into(),
                    values: None,
                },
            ]),
        };
        assert!(matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "b")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "c")])
        ));
        assert!(!matches(
            &selector,
            &labels(&[("app", "web"), ("tier", "a"), ("canary", "1")])
        ));
        assert!(!matches(&selector, &labels(&[("tier", "a")])));
        assert_eq!(to_query(&selector), "app=web,tier in (a,b),!canary");
        assert!(!is_empty(&selector) && is_empty(&LabelSelector::default()));
    }

    #[test]
    fn service_selectors() {
        assert!(map_matches(
            &labels(&[("app", "web")]),
            &labels(&[("app", "web"), ("x", "y")])
        ));
        assert!(!map_matches(
            &labels(&[("app", "web")]),
            &labels(&[("app", "db")])
        ));
    }
}
