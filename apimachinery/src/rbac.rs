//! RBAC authorization as Kubernetes' RBAC authorizer
//! (`k8s.io/kubernetes/plugin/pkg/auth/authorizer/rbac`) decides it, plus the bootstrap
//! ClusterRoles that matter, the 403 message text and the self-review APIs
//! `kubectl auth can-i` uses.
//!
//! [`authorize`] walks ClusterRoleBindings, then the RoleBindings of the request's
//! namespace; a binding applies when a subject names the user, one of its groups, or its
//! ServiceAccount (`system:serviceaccount:<ns>:<name>`); a rule allows when verb, API
//! group, resource (`pods`, `pods/resize`, `*/scale`, `*`), resourceNames — or, for
//! non-resource requests, the URL (`/healthz`, `/apis/*`) — match. Members of
//! `system:masters` are always allowed, as the apiserver's privileged-group authorizer
//! does. Aggregated ClusterRoles (`aggregationRule`) are resolved on the fly.

use k8s_openapi::api::authorization::v1::{
    NonResourceRule, ResourceRule, SelfSubjectAccessReview, SelfSubjectRulesReview,
    SubjectAccessReviewStatus, SubjectRulesReviewStatus,
};
use k8s_openapi::api::rbac::v1::{
    AggregationRule, ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef,
    Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::selector::LabelSelector;
use crate::status::{self, ApiError, GroupResource};

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name, e.g. `admin` or `system:serviceaccount:ns:sa`.
    pub name: String,
    /// Groups, including `system:authenticated`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// An authenticated user with extra groups (`system:authenticated` is added).
    pub fn authenticated(name: &str, groups: &[&str]) -> Self {
        let mut g: Vec<String> = groups.iter().map(|s| (*s).to_owned()).collect();
        g.push("system:authenticated".to_owned());
        Self {
            name: name.to_owned(),
            groups: g,
        }
    }

    /// A ServiceAccount's identity as its token authenticates it: user
    /// `system:serviceaccount:<ns>:<name>`, groups `system:serviceaccounts`,
    /// `system:serviceaccounts:<ns>`, `system:authenticated`.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".to_owned(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".to_owned(),
            ],
        }
    }

    /// The anonymous user (`system:anonymous`, group `system:unauthenticated`).
    pub fn anonymous() -> Self {
        Self {
            name: "system:anonymous".to_owned(),
            groups: vec!["system:unauthenticated".to_owned()],
        }
    }
}

/// What is being asked (Go's `authorizer.Attributes`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    /// The requester.
    pub user: UserInfo,
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`, … ;
    /// lower-case HTTP method for non-resource requests.
    pub verb: String,
    /// Namespace, empty for cluster-scoped requests.
    pub namespace: String,
    /// API group, empty for the core group.
    pub api_group: String,
    /// API version (only used in messages' details).
    pub api_version: String,
    /// Plural resource.
    pub resource: String,
    /// Subresource (`status`, `scale`, `resize`, `log`), empty for none.
    pub subresource: String,
    /// Object name, empty for lists/creates.
    pub name: String,
    /// Request path, for non-resource requests.
    pub path: String,
    /// `false` for non-resource URLs such as `/healthz`.
    pub resource_request: bool,
}

impl Attributes {
    /// A resource request.
    pub fn resource(
        user: UserInfo,
        verb: &str,
        namespace: &str,
        api_group: &str,
        resource: &str,
        subresource: &str,
        name: &str,
    ) -> Self {
        Self {
            user,
            verb: verb.to_owned(),
            namespace: namespace.to_owned(),
            api_group: api_group.to_owned(),
            resource: resource.to_owned(),
            subresource: subresource.to_owned(),
            name: name.to_owned(),
            resource_request: true,
            ..Self::default()
        }
    }

    /// A non-resource request.
    pub fn non_resource(user: UserInfo, verb: &str, path: &str) -> Self {
        Self {
            user,
            verb: verb.to_owned(),
            path: path.to_owned(),
            resource_request: false,
            ..Self::default()
        }
    }
}

/// The RBAC objects to decide with.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// All Roles (any namespace).
    pub roles: Vec<Role>,
    /// All ClusterRoles.
    pub cluster_roles: Vec<ClusterRole>,
    /// All RoleBindings (any namespace).
    pub role_bindings: Vec<RoleBinding>,
    /// All ClusterRoleBindings.
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
}

impl Policy {
    /// A policy holding only Kubernetes' bootstrap roles and bindings.
    pub fn bootstrap() -> Self {
        Self {
            cluster_roles: bootstrap_cluster_roles(),
            cluster_role_bindings: bootstrap_cluster_role_bindings(),
            ..Self::default()
        }
    }
}

/// The outcome, with Kubernetes' reason text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; e.g. `RBAC: allowed by ClusterRoleBinding "x" of ClusterRole "y" to User "z"`.
    Allow(String),
    /// Not allowed; the reason is empty unless a referenced role was missing.
    Deny(String),
}

impl Decision {
    /// Whether the request is allowed.
    pub fn allowed(&self) -> bool {
        matches!(self, Self::Allow(_))
    }
}

/// Decides a request.
pub fn authorize(attrs: &Attributes, policy: &Policy) -> Decision {
    if attrs.user.groups.iter().any(|g| g == "system:masters") {
        return Decision::Allow(String::new());
    }
    let mut missing: Vec<String> = Vec::new();
    for crb in &policy.cluster_role_bindings {
        let Some(subject) = applying_subject(&attrs.user, crb.subjects.as_deref(), "") else {
            continue;
        };
        match rules_of(&crb.role_ref, "", policy) {
            Ok(rules) => {
                if rules.iter().any(|r| rule_allows(attrs, r)) {
                    return Decision::Allow(format!(
                        "RBAC: allowed by ClusterRoleBinding {} of ClusterRole {} to {}",
                        quote(crb.metadata.name.as_deref().unwrap_or("")),
                        quote(&crb.role_ref.name),
                        describe_subject(subject, "")
                    ));
                }
            }
            Err(e) => missing.push(e),
        }
    }
    if !attrs.namespace.is_empty() {
        for rb in policy
            .role_bindings
            .iter()
            .filter(|rb| rb.metadata.namespace.as_deref() == Some(attrs.namespace.as_str()))
        {
            let Some(subject) =
                applying_subject(&attrs.user, rb.subjects.as_deref(), &attrs.namespace)
            else {
                continue;
            };
            match rules_of(&rb.role_ref, &attrs.namespace, policy) {
                Ok(rules) => {
                    if rules.iter().any(|r| rule_allows(attrs, r)) {
                        return Decision::Allow(format!(
                            "RBAC: allowed by RoleBinding {} of {} {} to {}",
                            quote(&format!(
                                "{}/{}",
                                rb.metadata.name.as_deref().unwrap_or(""),
                                attrs.namespace
                            )),
                            rb.role_ref.kind,
                            quote(&rb.role_ref.name),
                            describe_subject(subject, &attrs.namespace)
                        ));
                    }
                }
                Err(e) => missing.push(e),
            }
        }
    }
    if missing.is_empty() {
        Decision::Deny(String::new())
    } else {
        Decision::Deny(format!(
            "RBAC: {}",
            crate::field::aggregate_message(&missing)
        ))
    }
}

fn quote(s: &str) -> String {
    crate::field::go_quote(s)
}

fn describe_subject(s: &Subject, namespace: &str) -> String {
    if s.kind == "ServiceAccount" {
        let ns = s
            .namespace
            .as_deref()
            .filter(|n| !n.is_empty())
            .unwrap_or(namespace);
        format!("{} {}", s.kind, quote(&format!("{}/{ns}", s.name)))
    } else {
        format!("{} {}", s.kind, quote(&s.name))
    }
}

fn applying_subject<'a>(
    user: &UserInfo,
    subjects: Option<&'a [Subject]>,
    namespace: &str,
) -> Option<&'a Subject> {
    subjects?
        .iter()
        .find(|s| subject_applies(user, s, namespace))
}

/// Go's `appliesToUser`.
fn subject_applies(user: &UserInfo, s: &Subject, namespace: &str) -> bool {
    match s.kind.as_str() {
        "User" => user.name == s.name,
        "Group" => user.groups.contains(&s.name),
        "ServiceAccount" => {
            let ns = s
                .namespace
                .as_deref()
                .filter(|n| !n.is_empty())
                .unwrap_or(namespace);
            !ns.is_empty() && user.name == format!("system:serviceaccount:{ns}:{}", s.name)
        }
        _ => false,
    }
}

/// The rules a binding's roleRef grants, or the "not found" text when the role is missing.
fn rules_of(
    role_ref: &RoleRef,
    namespace: &str,
    policy: &Policy,
) -> Result<Vec<PolicyRule>, String> {
    match role_ref.kind.as_str() {
        "ClusterRole" => {
            let cr = policy
                .cluster_roles
                .iter()
                .find(|c| c.metadata.name.as_deref() == Some(role_ref.name.as_str()))
                .ok_or_else(|| {
                    format!(
                        "clusterrole.rbac.authorization.k8s.io {} not found",
                        quote(&role_ref.name)
                    )
                })?;
            Ok(cluster_role_rules(cr, policy))
        }
        "Role" => {
            let r = policy
                .roles
                .iter()
                .find(|r| {
                    r.metadata.name.as_deref() == Some(role_ref.name.as_str())
                        && r.metadata.namespace.as_deref() == Some(namespace)
                })
                .ok_or_else(|| {
                    format!(
                        "role.rbac.authorization.k8s.io {} not found",
                        quote(&role_ref.name)
                    )
                })?;
            Ok(r.rules.clone().unwrap_or_default())
        }
        other => Err(format!("unsupported role reference kind: {}", quote(other))),
    }
}

/// A ClusterRole's rules, resolving `aggregationRule` (the union of the rules of the
/// ClusterRoles whose labels match any selector), as the aggregation controller would.
pub fn cluster_role_rules(cr: &ClusterRole, policy: &Policy) -> Vec<PolicyRule> {
    let mut visiting = Vec::new();
    aggregated_rules(cr, policy, &mut visiting)
}

/// Aggregated roles may aggregate aggregated roles (`view` → `edit` → `admin`): the
/// controller writes each one's computed rules, so the union is transitive. `visiting`
/// guards against label cycles.
fn aggregated_rules<'a>(
    cr: &'a ClusterRole,
    policy: &'a Policy,
    visiting: &mut Vec<&'a str>,
) -> Vec<PolicyRule> {
    let Some(AggregationRule {
        cluster_role_selectors: Some(selectors),
    }) = &cr.aggregation_rule
    else {
        return cr.rules.clone().unwrap_or_default();
    };
    let name = cr.metadata.name.as_deref().unwrap_or("");
    if visiting.contains(&name) {
        return Vec::new();
    }
    visiting.push(name);
    let selectors: Vec<LabelSelector> = selectors
        .iter()
        .filter_map(|s| LabelSelector::from_metav1(Some(s)).ok())
        .collect();
    let mut rules: Vec<PolicyRule> = Vec::new();
    for other in &policy.cluster_roles {
        if other.metadata.name == cr.metadata.name {
            continue;
        }
        let labels = other.metadata.labels.clone().unwrap_or_default();
        if selectors.iter().any(|s| s.matches(&labels)) {
            for r in aggregated_rules(other, policy, visiting) {
                if !rules.contains(&r) {
                    rules.push(r);
                }
            }
        }
    }
    visiting.pop();
    rules
}

fn has(list: Option<&Vec<String>>, value: &str) -> bool {
    list.is_some_and(|l| l.iter().any(|x| x == "*" || x == value))
}

/// Whether one rule allows the request (Go's `RuleAllows`).
pub fn rule_allows(attrs: &Attributes, rule: &PolicyRule) -> bool {
    if !rule.verbs.iter().any(|v| v == "*" || *v == attrs.verb) {
        return false;
    }
    if attrs.resource_request {
        let combined = if attrs.subresource.is_empty() {
            attrs.resource.clone()
        } else {
            format!("{}/{}", attrs.resource, attrs.subresource)
        };
        has(rule.api_groups.as_ref(), &attrs.api_group)
            && resource_matches(
                rule.resources.as_deref().unwrap_or(&[]),
                &combined,
                &attrs.subresource,
            )
            && rule
                .resource_names
                .as_ref()
                .is_none_or(|n| n.is_empty() || n.contains(&attrs.name))
    } else {
        rule.non_resource_urls.iter().flatten().any(|u| {
            u == "*"
                || *u == attrs.path
                || u.strip_suffix('*')
                    .is_some_and(|prefix| attrs.path.starts_with(prefix))
        })
    }
}

fn resource_matches(rule_resources: &[String], combined: &str, subresource: &str) -> bool {
    rule_resources.iter().any(|r| {
        r == "*"
            || r == combined
            || (!subresource.is_empty() && r.strip_prefix("*/").is_some_and(|s| s == subresource))
    })
}

/// The 403 Status for a denied request, worded as the apiserver words it:
/// `pods "x" is forbidden: User "u" cannot get resource "pods" in API group "" in the namespace "ns"`.
pub fn forbidden(attrs: &Attributes, reason: &str) -> ApiError {
    let msg = forbidden_message(attrs);
    let why = if reason.is_empty() {
        msg
    } else {
        format!("{msg}: {reason}")
    };
    let gr = if attrs.resource_request {
        GroupResource::new(&attrs.api_group, &attrs.resource)
    } else {
        GroupResource::default()
    };
    status::forbidden(&gr, &attrs.name, &why)
}

/// Go's `forbiddenMessage`.
pub fn forbidden_message(attrs: &Attributes) -> String {
    let user = quote(&attrs.user.name);
    if !attrs.resource_request {
        return format!(
            "User {user} cannot {} path {}",
            attrs.verb,
            quote(&attrs.path)
        );
    }
    let resource = if attrs.subresource.is_empty() {
        attrs.resource.clone()
    } else {
        format!("{}/{}", attrs.resource, attrs.subresource)
    };
    if attrs.namespace.is_empty() {
        format!(
            "User {user} cannot {} resource {} in API group {} at the cluster scope",
            attrs.verb,
            quote(&resource),
            quote(&attrs.api_group)
        )
    } else {
        format!(
            "User {user} cannot {} resource {} in API group {} in the namespace {}",
            attrs.verb,
            quote(&resource),
            quote(&attrs.api_group),
            quote(&attrs.namespace)
        )
    }
}

/// Answers a SelfSubjectAccessReview (`kubectl auth can-i <verb> <resource>`): the review
/// comes back with `status` filled in.
pub fn self_subject_access_review(
    mut review: SelfSubjectAccessReview,
    user: &UserInfo,
    policy: &Policy,
) -> SelfSubjectAccessReview {
    let attrs = if let Some(ra) = &review.spec.resource_attributes {
        Attributes {
            user: user.clone(),
            verb: ra.verb.clone().unwrap_or_default(),
            namespace: ra.namespace.clone().unwrap_or_default(),
            api_group: ra.group.clone().unwrap_or_default(),
            api_version: ra.version.clone().unwrap_or_default(),
            resource: ra.resource.clone().unwrap_or_default(),
            subresource: ra.subresource.clone().unwrap_or_default(),
            name: ra.name.clone().unwrap_or_default(),
            path: String::new(),
            resource_request: true,
        }
    } else if let Some(nra) = &review.spec.non_resource_attributes {
        Attributes::non_resource(
            user.clone(),
            nra.verb.as_deref().unwrap_or(""),
            nra.path.as_deref().unwrap_or(""),
        )
    } else {
        review.status = Some(SubjectAccessReviewStatus {
            allowed: false,
            evaluation_error: Some(
                "exactly one of nonResourceAttributes or resourceAttributes must be specified"
                    .into(),
            ),
            ..SubjectAccessReviewStatus::default()
        });
        return review;
    };
    let decision = authorize(&attrs, policy);
    let reason = match &decision {
        Decision::Allow(r) | Decision::Deny(r) => r.clone(),
    };
    review.status = Some(SubjectAccessReviewStatus {
        allowed: decision.allowed(),
        reason: (!reason.is_empty()).then_some(reason),
        ..SubjectAccessReviewStatus::default()
    });
    review
}

/// Answers a SelfSubjectRulesReview (`kubectl auth can-i --list`): every rule that
/// applies to the user in the namespace.
pub fn self_subject_rules_review(
    mut review: SelfSubjectRulesReview,
    user: &UserInfo,
    policy: &Policy,
) -> SelfSubjectRulesReview {
    let namespace = review.spec.namespace.clone().unwrap_or_default();
    let mut rules: Vec<PolicyRule> = Vec::new();
    let mut errors: Vec<String> = Vec::new();
    if user.groups.iter().any(|g| g == "system:masters") {
        rules.extend(cluster_admin_rules());
    }
    for crb in &policy.cluster_role_bindings {
        if applying_subject(user, crb.subjects.as_deref(), "").is_some() {
            match rules_of(&crb.role_ref, "", policy) {
                Ok(r) => rules.extend(r),
                Err(e) => errors.push(e),
            }
        }
    }
    if !namespace.is_empty() {
        for rb in policy
            .role_bindings
            .iter()
            .filter(|rb| rb.metadata.namespace.as_deref() == Some(namespace.as_str()))
        {
            if applying_subject(user, rb.subjects.as_deref(), &namespace).is_some() {
                match rules_of(&rb.role_ref, &namespace, policy) {
                    Ok(r) => rules.extend(r),
                    Err(e) => errors.push(e),
                }
            }
        }
    }
    let mut resource_rules: Vec<ResourceRule> = Vec::new();
    let mut non_resource_rules: Vec<NonResourceRule> = Vec::new();
    for r in rules {
        if r.non_resource_urls.as_ref().is_some_and(|u| !u.is_empty()) {
            let nr = NonResourceRule {
                verbs: r.verbs.clone(),
                non_resource_urls: r.non_resource_urls.clone(),
            };
            if !non_resource_rules.contains(&nr) {
                non_resource_rules.push(nr);
            }
        }
        if r.resources.as_ref().is_some_and(|x| !x.is_empty()) {
            let rr = ResourceRule {
                verbs: r.verbs.clone(),
                api_groups: r.api_groups.clone(),
                resources: r.resources.clone(),
                resource_names: r.resource_names.clone(),
            };
            if !resource_rules.contains(&rr) {
                resource_rules.push(rr);
            }
        }
    }
    review.status = Some(SubjectRulesReviewStatus {
        evaluation_error: (!errors.is_empty()).then(|| crate::field::aggregate_message(&errors)),
        incomplete: !errors.is_empty(),
        non_resource_rules,
        resource_rules,
    });
    review
}

// ---------------------------------------------------------------- bootstrap policy

fn rule(verbs: &[&str], groups: &[&str], resources: &[&str]) -> PolicyRule {
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        verbs: v(verbs),
        api_groups: Some(v(groups)),
        resources: Some(v(resources)),
        ..PolicyRule::default()
    }
}

fn url_rule(verbs: &[&str], urls: &[&str]) -> PolicyRule {
    let v = |x: &[&str]| x.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
    PolicyRule {
        verbs: v(verbs),
        non_resource_urls: Some(v(urls)),
        ..PolicyRule::default()
    }
}

fn cluster_admin_rules() -> Vec<PolicyRule> {
    vec![rule(&["*"], &["*"], &["*"]), url_rule(&["*"], &["*"])]
}

fn meta(name: &str, aggregate_to: Option<&str>) -> ObjectMeta {
    let mut labels = std::collections::BTreeMap::from([(
        "kubernetes.io/bootstrapping".to_owned(),
        "rbac-defaults".to_owned(),
    )]);
    if let Some(target) = aggregate_to {
        labels.insert(
            format!("rbac.authorization.k8s.io/aggregate-to-{target}"),
            "true".to_owned(),
        );
    }
    ObjectMeta {
        name: Some(name.to_owned()),
        labels: Some(labels),
        annotations: Some(std::collections::BTreeMap::from([(
            "rbac.authorization.kubernetes.io/autoupdate".to_owned(),
            "true".to_owned(),
        )])),
        ..ObjectMeta::default()
    }
}

fn aggregated(name: &str, sources: &[&str], aggregate_to: Option<&str>) -> ClusterRole {
    ClusterRole {
        metadata: meta(name, aggregate_to),
        aggregation_rule: Some(AggregationRule {
            cluster_role_selectors: Some(
                sources
                    .iter()
                    .map(
                        |s| k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector {
                            match_labels: Some(std::collections::BTreeMap::from([(
                                format!("rbac.authorization.k8s.io/aggregate-to-{s}"),
                                "true".to_owned(),
                            )])),
                            ..Default::default()
                        },
                    )
                    .collect(),
            ),
        }),
        rules: Some(Vec::new()),
    }
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "delete", "deletecollection", "patch", "update"];

/// Kubernetes' bootstrap ClusterRoles that matter here: `cluster-admin`,
/// `system:discovery`, `system:basic-user`, `system:public-info-viewer`, and the
/// aggregated user-facing `admin`, `edit`, `view` (with the `system:aggregate-to-*`
/// roles they aggregate; abridged to the resources cellmesh-local serves).
pub fn bootstrap_cluster_roles() -> Vec<ClusterRole> {
    let plain = |name: &str, aggregate_to: Option<&str>, rules: Vec<PolicyRule>| ClusterRole {
        metadata: meta(name, aggregate_to),
        rules: Some(rules),
        aggregation_rule: None,
    };
    let view_core = &[
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "persistentvolumeclaims/status",
        "pods",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "serviceaccounts",
        "services",
        "services/status",
        "bindings",
        "events",
        "limitranges",
        "namespaces/status",
        "pods/log",
        "pods/status",
        "replicationcontrollers/status",
        "resourcequotas",
        "resourcequotas/status",
        "namespaces",
    ];
    let view_apps = &[
        "controllerrevisions",
        "daemonsets",
        "daemonsets/status",
        "deployments",
        "deployments/scale",
        "deployments/status",
        "replicasets",
        "replicasets/scale",
        "replicasets/status",
        "statefulsets",
        "statefulsets/scale",
        "statefulsets/status",
    ];
    let edit_core = &[
        "pods",
        "pods/attach",
        "pods/exec",
        "pods/portforward",
        "pods/proxy",
        "configmaps",
        "endpoints",
        "persistentvolumeclaims",
        "replicationcontrollers",
        "replicationcontrollers/scale",
        "secrets",
        "serviceaccounts",
        "services",
        "services/proxy",
    ];
    let edit_apps = &[
        "daemonsets",
        "deployments",
        "deployments/rollback",
        "deployments/scale",
        "replicasets",
        "replicasets/scale",
        "statefulsets",
        "statefulsets/scale",
    ];
    vec![
        plain("cluster-admin", None, cluster_admin_rules()),
        plain(
            "system:discovery",
            None,
            vec![url_rule(
                &["get"],
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/healthz",
                    "/livez",
                    "/openapi",
                    "/openapi/*",
                    "/readyz",
                    "/version",
                    "/version/",
                ],
            )],
        ),
        plain(
            "system:basic-user",
            None,
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                ),
                rule(
                    &["create"],
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                ),
            ],
        ),
        plain(
            "system:public-info-viewer",
            None,
            vec![url_rule(
                &["get"],
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
            )],
        ),
        aggregated("admin", &["admin"], None),
        aggregated("edit", &["edit"], Some("admin")),
        aggregated("view", &["view"], Some("edit")),
        plain(
            "system:aggregate-to-admin",
            Some("admin"),
            vec![
                rule(
                    &["create"],
                    &["authorization.k8s.io"],
                    &["localsubjectaccessreviews"],
                ),
                rule(
                    &[
                        "create",
                        "delete",
                        "deletecollection",
                        "get",
                        "list",
                        "patch",
                        "update",
                        "watch",
                    ],
                    &["rbac.authorization.k8s.io"],
                    &["rolebindings", "roles"],
                ),
            ],
        ),
        plain(
            "system:aggregate-to-edit",
            Some("edit"),
            vec![
                rule(
                    &["get", "list", "watch"],
                    &[""],
                    &[
                        "secrets",
                        "pods/attach",
                        "pods/exec",
                        "pods/portforward",
                        "pods/proxy",
                        "services/proxy",
                    ],
                ),
                rule(&["impersonate"], &[""], &["serviceaccounts"]),
                rule(WRITE, &[""], edit_core),
                rule(&["create"], &[""], &["serviceaccounts/token"]),
                rule(WRITE, &["apps"], edit_apps),
                rule(WRITE, &["autoscaling"], &["horizontalpodautoscalers"]),
                rule(WRITE, &["batch"], &["cronjobs", "jobs"]),
                rule(
                    WRITE,
                    &["networking.k8s.io"],
                    &["ingresses", "networkpolicies"],
                ),
                rule(WRITE, &["policy"], &["poddisruptionbudgets"]),
                rule(WRITE, &["coordination.k8s.io"], &["leases"]),
                rule(WRITE, &["discovery.k8s.io"], &["endpointslices"]),
            ],
        ),
        plain(
            "system:aggregate-to-view",
            Some("view"),
            vec![
                rule(READ, &[""], view_core),
                rule(READ, &["apps"], view_apps),
                rule(
                    READ,
                    &["autoscaling"],
                    &[
                        "horizontalpodautoscalers",
                        "horizontalpodautoscalers/status",
                    ],
                ),
                rule(
                    READ,
                    &["batch"],
                    &["cronjobs", "cronjobs/status", "jobs", "jobs/status"],
                ),
                rule(READ, &["discovery.k8s.io"], &["endpointslices"]),
                rule(
                    READ,
                    &["networking.k8s.io"],
                    &["ingresses", "ingresses/status", "networkpolicies"],
                ),
                rule(
                    READ,
                    &["policy"],
                    &["poddisruptionbudgets", "poddisruptionbudgets/status"],
                ),
                rule(READ, &["coordination.k8s.io"], &["leases"]),
                rule(READ, &["events.k8s.io"], &["events"]),
            ],
        ),
    ]
}

/// The bootstrap ClusterRoleBindings: `cluster-admin` to group `system:masters`,
/// `system:discovery` and `system:basic-user` to `system:authenticated`,
/// `system:public-info-viewer` to authenticated and unauthenticated users.
pub fn bootstrap_cluster_role_bindings() -> Vec<ClusterRoleBinding> {
    let binding = |name: &str, groups: &[&str]| ClusterRoleBinding {
        metadata: meta(name, None),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".into(),
            kind: "ClusterRole".into(),
            name: name.into(),
        },
        subjects: Some(
            groups
                .iter()
                .map(|g| Subject {
                    api_group: Some("rbac.authorization.k8s.io".into()),
                    kind: "Group".into(),
                    name: (*g).into(),
                    namespace: None,
                })
                .collect(),
        ),
    };
    vec![
        binding("cluster-admin", &["system:masters"]),
        binding("system:discovery", &["system:authenticated"]),
        binding("system:basic-user", &["system:authenticated"]),
        binding(
            "system:public-info-viewer",
            &["system:authenticated", "system:unauthenticated"],
        ),
    ]
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn role(ns: &str, name: &str, rules: serde_json::Value) -> Role {
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": ns}, "rules": rules}))
            .expect("role")
    }

    fn role_binding(
        ns: &str,
        name: &str,
        kind: &str,
        role: &str,
        subjects: serde_json::Value,
    ) -> RoleBinding {
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": ns},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": role},
            "subjects": subjects
        }))
        .expect("binding")
    }

    fn operator_policy() -> Policy {
        let mut p = Policy::bootstrap();
        p.roles.push(role("ns", "pod-resizer", json!([
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["pods/resize"], "verbs": ["patch"]},
            {"apiGroups": ["apps"], "resources": ["*/scale"], "verbs": ["update"]},
            {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cfg"], "verbs": ["get"]}
        ])));
        p.role_bindings.push(role_binding(
            "ns",
            "sa-resizer",
            "Role",
            "pod-resizer",
            json!([{"kind": "ServiceAccount", "name": "op"}]),
        ));
        p.role_bindings.push(role_binding(
            "ns",
            "viewers",
            "ClusterRole",
            "view",
            json!([{"kind": "Group", "name": "team", "apiGroup": "rbac.authorization.k8s.io"}]),
        ));
        p.role_bindings.push(role_binding(
            "ns",
            "broken",
            "Role",
            "does-not-exist",
            json!([{"kind": "User", "name": "carol"}]),
        ));
        p
    }

    fn sa() -> UserInfo {
        UserInfo::service_account("ns", "op")
    }

    #[test]
    fn service_account_rules_and_subresources() {
        let p = operator_policy();
        let ok = |verb: &str, group: &str, res: &str, sub: &str, name: &str| {
            authorize(
                &Attributes::resource(sa(), verb, "ns", group, res, sub, name),
                &p,
            )
            .allowed()
        };
        assert!(ok("get", "", "pods", "", "p"));
        assert!(ok("patch", "", "pods", "resize", "p"));
        assert!(
            !ok("patch", "", "pods", "", "p"),
            "pods/resize does not grant pods"
        );
        assert!(!ok("patch", "", "pods", "status", "p"));
        assert!(
            ok("update", "apps", "deployments", "scale", "d"),
            "*/scale matches any resource's scale"
        );
        assert!(!ok("update", "apps", "deployments", "", "d"));
        assert!(ok("get", "", "configmaps", "", "cfg"));
        assert!(
            !ok("get", "", "configmaps", "", "other"),
            "resourceNames restrict"
        );
        // Another namespace: the RoleBinding does not apply.
        assert!(
            !authorize(
                &Attributes::resource(sa(), "get", "other", "", "pods", "", "p"),
                &p
            )
            .allowed()
        );
    }

    #[test]
    fn forbidden_message_is_kubernetes_text() {
        let attrs = Attributes::resource(sa(), "delete", "ns", "", "pods", "", "x");
        let d = authorize(&attrs, &operator_policy());
        assert_eq!(d, Decision::Deny(String::new()));
        let e = forbidden(&attrs, "");
        assert_eq!(e.code(), 403);
        assert_eq!(
            e.message(),
            "pods \"x\" is forbidden: User \"system:serviceaccount:ns:op\" cannot delete resource \"pods\" in API group \"\" in the namespace \"ns\""
        );
        let attrs = Attributes::resource(sa(), "list", "", "apps", "deployments", "", "");
        assert_eq!(
            forbidden(&attrs, "").message(),
            "deployments.apps is forbidden: User \"system:serviceaccount:ns:op\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
        );
        let attrs = Attributes::resource(sa(), "patch", "ns", "", "pods", "resize", "p");
        assert!(forbidden_message(&attrs).contains("cannot patch resource \"pods/resize\""));
        let attrs = Attributes::non_resource(UserInfo::anonymous(), "get", "/metrics");
        assert_eq!(
            forbidden(&attrs, "").message(),
            "forbidden: User \"system:anonymous\" cannot get path \"/metrics\""
        );
    }

    #[test]
    fn missing_role_is_named_in_the_reason() {
        let attrs = Attributes::resource(
            UserInfo::authenticated("carol", &[]),
            "get",
            "ns",
            "",
            "pods",
            "",
            "p",
        );
        let d = authorize(&attrs, &operator_policy());
        assert_eq!(
            d,
            Decision::Deny(
                "RBAC: role.rbac.authorization.k8s.io \"does-not-exist\" not found".into()
            )
        );
        assert!(
            forbidden(&attrs, "RBAC: x")
                .message()
                .ends_with("in the namespace \"ns\": RBAC: x")
        );
    }

    #[test]
    fn groups_masters_discovery_and_aggregation() {
        let p = operator_policy();
        let admin = UserInfo::authenticated("admin", &["system:masters"]);
        assert!(
            authorize(
                &Attributes::resource(admin, "delete", "", "", "nodes", "", "n"),
                &p
            )
            .allowed()
        );
        let anyone = UserInfo::authenticated("bob", &[]);
        let d = authorize(
            &Attributes::non_resource(anyone.clone(), "get", "/apis/apps/v1"),
            &p,
        );
        assert_eq!(d, Decision::Allow("RBAC: allowed by ClusterRoleBinding \"system:discovery\" of ClusterRole \"system:discovery\" to Group \"system:authenticated\"".into()));
        assert!(
            authorize(
                &Attributes::non_resource(UserInfo::anonymous(), "get", "/version"),
                &p
            )
            .allowed()
        );
        assert!(
            !authorize(
                &Attributes::non_resource(UserInfo::anonymous(), "get", "/apis"),
                &p
            )
            .allowed()
        );
        assert!(
            authorize(
                &Attributes::resource(
                    anyone.clone(),
                    "create",
                    "",
                    "authorization.k8s.io",
                    "selfsubjectaccessreviews",
                    "",
                    ""
                ),
                &p
            )
            .allowed()
        );
        // view is aggregated from system:aggregate-to-view; bound to group "team" in ns.
        let member = UserInfo::authenticated("dave", &["team"]);
        assert!(
            authorize(
                &Attributes::resource(member.clone(), "list", "ns", "apps", "deployments", "", ""),
                &p
            )
            .allowed()
        );
        assert!(
            !authorize(
                &Attributes::resource(member.clone(), "get", "ns", "", "secrets", "", "s"),
                &p
            )
            .allowed(),
            "view cannot read secrets"
        );
        assert!(
            !authorize(
                &Attributes::resource(member, "delete", "ns", "", "pods", "", "p"),
                &p
            )
            .allowed()
        );
        let edit = p
            .cluster_roles
            .iter()
            .find(|c| c.metadata.name.as_deref() == Some("admin"))
            .expect("admin");
        let admin_rules = cluster_role_rules(edit, &p);
        assert!(admin_rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x.contains(&"roles".to_owned()))
        }));
        assert!(
            admin_rules.iter().any(|r| r
                .resources
                .as_ref()
                .is_some_and(|x| x.contains(&"secrets".to_owned()))),
            "admin includes edit"
        );
        assert!(
            admin_rules
                .iter()
                .any(|r| r.verbs.contains(&"watch".to_owned())
                    && r.resources
                        .as_ref()
                        .is_some_and(|x| x.contains(&"pods".to_owned()))),
            "and view"
        );
    }

    #[test]
    fn subjects() {
        let u = UserInfo::service_account("a", "b");
        let s = |kind: &str, name: &str, ns: Option<&str>| Subject {
            kind: kind.into(),
            name: name.into(),
            namespace: ns.map(Into::into),
            api_group: None,
        };
        assert!(subject_applies(
            &u,
            &s("ServiceAccount", "b", Some("a")),
            ""
        ));
        assert!(
            subject_applies(&u, &s("ServiceAccount", "b", None), "a"),
            "defaults to the binding's namespace"
        );
        assert!(!subject_applies(&u, &s("ServiceAccount", "b", None), ""));
        assert!(subject_applies(
            &u,
            &s("Group", "system:serviceaccounts:a", None),
            ""
        ));
        assert!(subject_applies(
            &u,
            &s("Group", "system:serviceaccounts", None),
            ""
        ));
        assert!(subject_applies(
            &u,
            &s("User", "system:serviceaccount:a:b", None),
            ""
        ));
        assert!(!subject_applies(&u, &s("User", "b", None), ""));
    }

    #[test]
    fn access_and_rules_reviews() {
        let p = operator_policy();
        let review: SelfSubjectAccessReview = serde_json::from_value(json!({
            "apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
            "spec": {"resourceAttributes": {"namespace": "ns", "verb": "patch", "resource": "pods", "subresource": "resize"}}
        }))
        .expect("review");
        let out = self_subject_access_review(review.clone(), &sa(), &p);
        let st = out.status.expect("status");
        assert!(st.allowed);
        assert_eq!(
            st.reason.as_deref(),
            Some(
                "RBAC: allowed by RoleBinding \"sa-resizer/ns\" of Role \"pod-resizer\" to ServiceAccount \"op/ns\""
            )
        );
        let out = self_subject_access_review(review, &UserInfo::authenticated("bob", &[]), &p);
        assert!(!out.status.expect("status").allowed);

        let rr: SelfSubjectRulesReview =
            serde_json::from_value(json!({"spec": {"namespace": "ns"}})).expect("review");
        let st = self_subject_rules_review(rr, &sa(), &p)
            .status
            .expect("status");
        assert!(st.resource_rules.iter().any(|r| {
            r.resources
                .as_ref()
                .is_some_and(|x| x == &vec!["pods/resize".to_owned()])
        }));
        assert!(st.non_resource_rules.iter().any(|r| {
            r.non_resource_urls
                .as_ref()
                .is_some_and(|u| u.contains(&"/api".to_owned()))
        }));
        assert!(!st.incomplete);
    }
}
