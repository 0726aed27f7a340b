//! kubectl commands that send protobuf bodies (`application/vnd.kubernetes.protobuf`):
//! `kubectl create configmap|secret|namespace|deployment` build the object in Go and
//! post it as protobuf; the server must store what a real cluster would.

mod common;

use common::Server;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn kubectl_create_sends_protobuf_and_objects_are_stored_as_sent() {
    let server = Server::start();
    assert_eq!(
        server
            .kubectl(&[
                "create",
                "configmap",
                "settings",
                "--from-literal=greeting=hello",
                "--from-literal=empty="
            ])
            .trim(),
        "configmap/settings created"
    );
    let cm = json(&server.kubectl(&["get", "configmap", "settings", "-o", "json"]));
    assert_eq!(cm["data"]["greeting"], "hello");
    assert_eq!(cm["data"]["empty"], "", "empty values in maps are kept");
    assert_eq!(cm["metadata"]["namespace"], "default");

    server.kubectl(&[
        "create",
        "secret",
        "generic",
        "creds",
        "--from-literal=password=s3cret",
    ]);
    let secret = json(&server.kubectl(&["get", "secret", "creds", "-o", "json"]));
    assert_eq!(secret["type"], "Opaque");
    assert_eq!(
        secret["data"]["password"], "czNjcmV0",
        "bytes arrive as base64"
    );

    server.kubectl(&["create", "namespace", "team-a"]);
    let ns = json(&server.kubectl(&["get", "namespace", "team-a", "-o", "json"]));
    assert_eq!(ns["metadata"]["name"], "team-a");

    server.kubectl(&[
        "create",
        "deployment",
        "web",
        "--image=ghcr.io/cellmesh/cell:0.1.0",
        "--replicas=3",
        "--port=8080",
        "-n",
        "team-a",
    ]);
    let deploy = json(&server.kubectl(&["get", "deploy", "web", "-n", "team-a", "-o", "json"]));
    assert_eq!(deploy["spec"]["replicas"], 3);
    assert_eq!(deploy["spec"]["selector"]["matchLabels"]["app"], "web");
    let container = &deploy["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "ghcr.io/cellmesh/cell:0.1.0");
    assert_eq!(container["ports"][0]["containerPort"], 8080);
    assert!(
        deploy["metadata"]["creationTimestamp"].is_string(),
        "the server stamps creation: {deploy}"
    );
    // Go's protobuf writes non-pointer zero values that its JSON would omit: the stored
    // object is what a JSON create gives, while a pointer's explicit zero stays.
    let spec = &deploy["spec"];
    for absent in [
        &spec["paused"],
        &spec["minReadySeconds"],
        &spec["template"]["metadata"]["generation"],
        &spec["template"]["spec"]["hostNetwork"],
        &container["stdin"],
        &container["tty"],
    ] {
        assert!(absent.is_null(), "a Go zero value was stored: {deploy}");
    }
    server.kubectl(&[
        "create",
        "deployment",
        "idle",
        "--image=cell",
        "--replicas=0",
    ]);
    let idle = json(&server.kubectl(&["get", "deploy", "idle", "-o", "json"]));
    assert_eq!(
        idle["spec"]["replicas"], 0,
        "an explicit zero stays: {idle}"
    );
    server.kubectl(&["create", "service", "clusterip", "api", "--tcp=80:8080"]);
    let service = json(&server.kubectl(&["get", "service", "api", "-o", "json"]));
    assert!(
        service["spec"]["ports"][0].get("nodePort").is_none()
            && service["spec"].get("publishNotReadyAddresses").is_none(),
        "{service}"
    );
    assert_eq!(service["spec"]["ports"][0]["port"], 80);
}
