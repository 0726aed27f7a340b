//! RBAC and ServiceAccount tokens with the real kubectl: `auth can-i` (and `--list`,
//! `--as`), `auth whoami`, `create token`, a limited ServiceAccount's kubeconfig, and the
//! exact forbidden texts a real cluster prints.

// Test code: a panic is a test failure with its message.
#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::{Server, eventually};

/// A kubeconfig like the admin's but authenticating with `token`.
fn kubeconfig_with_token(server: &Server, token: &str, name: &str) -> std::path::PathBuf {
    let admin = std::fs::read_to_string(server.kubeconfig()).unwrap();
    let line = admin
        .lines()
        .find(|l| l.trim_start().starts_with("token: "))
        .expect("admin kubeconfig has a token");
    let replaced = admin.replace(line, &format!("    token: {token}"));
    let path = server.state.path().join(name);
    std::fs::write(&path, replaced).unwrap();
    path
}

#[test]
fn admin_can_do_everything_and_says_who_it_is() {
    let server = Server::start();
    assert_eq!(
        server.kubectl(&["auth", "can-i", "delete", "nodes"]).trim(),
        "yes"
    );
    assert_eq!(
        server
            .kubectl(&["auth", "can-i", "create", "pods", "-n", "kube-system"])
            .trim(),
        "yes"
    );
    let whoami = server.kubectl(&["auth", "whoami"]);
    assert!(whoami.contains("system:masters"), "{whoami}");
    let list = server.kubectl(&["auth", "can-i", "--list"]);
    assert!(
        list.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["*.*", "[]", "[]", "[*]"]),
        "{list}"
    );
    let roles = server.kubectl(&["get", "clusterroles", "-o", "name"]);
    for bootstrap in [
        "clusterrole.rbac.authorization.k8s.io/cluster-admin",
        "clusterrole.rbac.authorization.k8s.io/view",
    ] {
        assert!(
            roles.lines().any(|l| l == bootstrap),
            "{bootstrap} stored: {roles}"
        );
    }
}

#[test]
fn a_limited_service_account_gets_exactly_its_role() {
    let server = Server::start();
    server.kubectl(&["create", "namespace", "team"]);
    eventually(
        "the default ServiceAccount of a new namespace",
        Duration::from_secs(10),
        || {
            server
                .kubectl_output(&["get", "serviceaccount", "default", "-n", "team"], None)
                .status
                .success()
                .then_some(())
        },
    );
    server.kubectl(&["create", "serviceaccount", "reader", "-n", "team"]);
    server.kubectl(&[
        "create",
        "role",
        "pod-reader",
        "--verb=get,list,watch",
        "--resource=pods",
        "-n",
        "team",
    ]);
    server.kubectl(&[
        "create",
        "rolebinding",
        "reader",
        "--role=pod-reader",
        "--serviceaccount=team:reader",
        "-n",
        "team",
    ]);
    let token = server.kubectl(&["create", "token", "reader", "-n", "team"]);
    let token = token.trim();
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    let kubeconfig = kubeconfig_with_token(&server, token, "reader.kubeconfig");
    let kubeconfig = kubeconfig.to_str().unwrap();
    let as_reader = |args: &[&str]| {
        let mut all = vec!["--kubeconfig", kubeconfig];
        all.extend_from_slice(args);
        server.kubectl_output(&all, None)
    };
    let stdout =
        |out: std::process::Output| String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let stderr =
        |out: std::process::Output| String::from_utf8(out.stderr).unwrap().trim().to_owned();

    assert_eq!(
        stdout(as_reader(&["auth", "can-i", "list", "pods", "-n", "team"])),
        "yes"
    );
    assert_eq!(
        stdout(as_reader(&[
            "auth", "can-i", "list", "pods", "-n", "default"
        ])),
        "no"
    );
    assert_eq!(
        stdout(as_reader(&[
            "auth", "can-i", "delete", "pods", "-n", "team"
        ])),
        "no"
    );
    let whoami = stdout(as_reader(&["auth", "whoami"]));
    assert!(
        whoami.contains("system:serviceaccount:team:reader"),
        "{whoami}"
    );
    assert!(whoami.contains("system:serviceaccounts:team"), "{whoami}");

    let listed = as_reader(&["get", "pods", "-n", "team"]);
    assert!(listed.status.success(), "{}", stderr(listed));
    assert_eq!(
        stderr(as_reader(&["get", "secrets", "-n", "team"])),
        "Error from server (Forbidden): secrets is forbidden: User \"system:serviceaccount:team:reader\" cannot list resource \"secrets\" in API group \"\" in the namespace \"team\""
    );
    assert_eq!(
        stderr(as_reader(&["get", "configmap", "x", "-n", "default"])),
        "Error from server (Forbidden): configmaps \"x\" is forbidden: User \"system:serviceaccount:team:reader\" cannot get resource \"configmaps\" in API group \"\" in the namespace \"default\""
    );
    assert_eq!(
        stderr(as_reader(&["get", "deployments", "-A"])),
        "Error from server (Forbidden): deployments.apps is forbidden: User \"system:serviceaccount:team:reader\" cannot list resource \"deployments\" in API group \"apps\" at the cluster scope"
    );
    // Impersonation: the admin may act as the ServiceAccount; the reader may not.
    // `auth can-i` exits 1 when the answer is no.
    let as_sa = server.kubectl_output(
        &[
            "auth",
            "can-i",
            "list",
            "secrets",
            "-n",
            "team",
            "--as=system:serviceaccount:team:reader",
        ],
        None,
    );
    assert!(!as_sa.status.success());
    assert_eq!(stdout(as_sa), "no");
    assert_eq!(
        server
            .kubectl(&[
                "auth",
                "can-i",
                "list",
                "pods",
                "-n",
                "team",
                "--as=system:serviceaccount:team:reader"
            ])
            .trim(),
        "yes"
    );
    let refused = stderr(as_reader(&["get", "pods", "-n", "team", "--as=admin"]));
    assert!(
        refused.contains("cannot impersonate resource \"users\""),
        "{refused}"
    );

    // A token dies with its ServiceAccount.
    server.kubectl(&["delete", "serviceaccount", "reader", "-n", "team"]);
    let unauthorized = stderr(as_reader(&["get", "pods", "-n", "team"]));
    assert!(unauthorized.contains("Unauthorized"), "{unauthorized}");
}
