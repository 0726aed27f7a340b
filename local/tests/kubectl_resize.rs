//! `pods/resize` through the real kubectl (`kubectl patch --subresource resize`), with the
//! answers kube-apiserver 1.33 gives: only containers' resources and resize policies
//! change (other fields in the request are dropped), the generation moves, a QoS change
//! or a memory-limit decrease is a 422, and a plain patch of resources is refused.

mod common;

use common::Server;
use serde_json::Value;

const POD: &str = r#"
apiVersion: v1
kind: Pod
metadata: {name: app}
spec:
  containers:
  - name: app
    image: busybox
    resources:
      requests: {cpu: 250m, memory: 64Mi}
      limits: {cpu: 500m, memory: 128Mi}
"#;

fn pod(server: &Server) -> Value {
    serde_json::from_str(&server.kubectl(&["get", "pod", "app", "-o", "json"]))
        .expect("kubectl prints JSON")
}

#[test]
fn resize_changes_resources_only_and_guards_qos() {
    let server = Server::start();
    server.kubectl_stdin(&["apply", "-f", "-"], Some(POD));
    let before = pod(&server);
    assert_eq!(before["metadata"]["generation"], 1);
    assert_eq!(before["status"]["qosClass"], "Burstable");

    // A strategic-merge resize; the image change riding along is dropped, not applied.
    server.kubectl(&[
        "patch",
        "pod",
        "app",
        "--subresource",
        "resize",
        "-p",
        r#"{"spec":{"containers":[{"name":"app","image":"nginx","resources":{"requests":{"cpu":"300m"},"limits":{"cpu":"1"}}}]}}"#,
    ]);
    let resized = pod(&server);
    let container = &resized["spec"]["containers"][0];
    assert_eq!(container["resources"]["requests"]["cpu"], "300m");
    assert_eq!(container["resources"]["requests"]["memory"], "64Mi");
    assert_eq!(container["resources"]["limits"]["cpu"], "1");
    assert_eq!(container["image"], "busybox");
    assert_eq!(resized["metadata"]["generation"], 2);

    // JSON patch and merge patch work on the subresource too.
    server.kubectl(&[
        "patch",
        "pod",
        "app",
        "--subresource",
        "resize",
        "--type",
        "json",
        "-p",
        r#"[{"op":"replace","path":"/spec/containers/0/resources/limits/memory","value":"256Mi"}]"#,
    ]);
    assert_eq!(
        pod(&server)["spec"]["containers"][0]["resources"]["limits"]["memory"],
        "256Mi"
    );
    assert_eq!(pod(&server)["metadata"]["generation"], 3);

    // Requests equal to limits would make the pod Guaranteed.
    let qos = server.kubectl_fails(
        &[
            "patch",
            "pod",
            "app",
            "--subresource",
            "resize",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"containers":[{"name":"app","resources":{"requests":{"cpu":"1","memory":"256Mi"},"limits":{"cpu":"1","memory":"256Mi"}}}]}}"#,
        ],
        None,
    );
    assert!(
        qos.contains(r#"The Pod "app" is invalid: spec: Invalid value: "Burstable": Pod QOS Class may not change as a result of resizing"#),
        "{qos}"
    );
    let memory = server.kubectl_fails(
        &[
            "patch",
            "pod",
            "app",
            "--subresource",
            "resize",
            "--type",
            "json",
            "-p",
            r#"[{"op":"replace","path":"/spec/containers/0/resources/limits/memory","value":"100Mi"}]"#,
        ],
        None,
    );
    assert!(
        memory.contains(r#"The Pod "app" is invalid: spec.containers[0].resources.limits[memory]: Forbidden: memory limits cannot be decreased unless resizePolicy is RestartContainer"#),
        "{memory}"
    );

    // The pod itself refuses resource changes; images may change.
    let plain = server.kubectl_fails(
        &[
            "patch",
            "pod",
            "app",
            "-p",
            r#"{"spec":{"containers":[{"name":"app","resources":{"limits":{"cpu":"2"}}}]}}"#,
        ],
        None,
    );
    assert!(
        plain.contains(r#"The Pod "app" is invalid: spec: Forbidden: pod updates may not change fields other than `spec.containers[*].image`,`spec.initContainers[*].image`,`spec.activeDeadlineSeconds`,`spec.tolerations` (only additions to existing tolerations),`spec.terminationGracePeriodSeconds` (allow it to be set to 1 if it was previously negative)"#),
        "{plain}"
    );
    server.kubectl(&[
        "patch",
        "pod",
        "app",
        "-p",
        r#"{"spec":{"containers":[{"name":"app","image":"busybox:1.37"}]}}"#,
    ]);
    let after = pod(&server);
    assert_eq!(after["spec"]["containers"][0]["image"], "busybox:1.37");
    assert_eq!(
        after["spec"]["containers"][0]["resources"]["limits"]["cpu"],
        "1"
    );
    assert_eq!(after["metadata"]["generation"], 4);

    // Server-side apply through the subresource, as `kubectl apply --subresource resize`.
    let config = POD
        .replace(
            "requests: {cpu: 250m, memory: 64Mi}",
            "requests: {cpu: 300m, memory: 64Mi}",
        )
        .replace(
            "limits: {cpu: 500m, memory: 128Mi}",
            "limits: {cpu: \"2\", memory: 256Mi}",
        );
    server.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--subresource",
            "resize",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&config),
    );
    let applied: Value = serde_json::from_str(&server.kubectl(&[
        "get",
        "pod",
        "app",
        "-o",
        "json",
        "--show-managed-fields",
    ]))
    .expect("kubectl prints JSON");
    let container = &applied["spec"]["containers"][0];
    assert_eq!(container["resources"]["limits"]["cpu"], "2");
    assert_eq!(
        container["image"], "busybox:1.37",
        "the image in the config is dropped"
    );
    assert_eq!(applied["metadata"]["generation"], 5);
    assert!(
        applied["metadata"]["managedFields"]
            .as_array()
            .expect("managedFields")
            .iter()
            .any(|m| m["operation"] == "Apply" && m["subresource"] == "resize"),
        "{applied}"
    );
}
