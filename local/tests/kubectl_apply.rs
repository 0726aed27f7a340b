//! The real kubectl against `cellmesh-local apiserver` for server-side apply, custom
//! resource validation (schema, CEL, unknown fields) and `kubectl explain`. Expected texts
//! are what kubectl prints against a real cluster.

mod common;

use common::Server;
use serde_json::Value;

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn configmap(data: &str) -> String {
    format!("apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: settings}}\ndata: {data}\n")
}

/// `(manager, operation)` of every managedFields entry.
fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["manager"].as_str().unwrap_or("").to_owned(),
                e["operation"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect()
}

fn pair(manager: &str, operation: &str) -> (String, String) {
    (manager.to_owned(), operation.to_owned())
}

#[test]
fn server_side_apply_owns_conflicts_forces_and_removes() {
    let server = Server::start();
    let get = || {
        json(&server.kubectl(&[
            "get",
            "cm",
            "settings",
            "-o",
            "json",
            "--show-managed-fields",
        ]))
    };

    let created = server.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&configmap("{a: '1', b: '2'}")),
    );
    assert_eq!(created.trim(), "configmap/settings serverside-applied");
    let cm = get();
    assert_eq!(managers(&cm), [pair("kubectl", "Apply")]);
    let fields = &cm["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(
        fields["f:data"]["f:a"].is_object() && fields["f:data"]["f:b"].is_object(),
        "{fields}"
    );
    let rv = cm["metadata"]["resourceVersion"].clone();

    // `kubectl diff --server-side` (a dry-run apply) shows the change and stores nothing;
    // so does `--dry-run=server`.
    let diff = server.kubectl_output(
        &["diff", "--server-side", "-f", "-"],
        Some(&configmap("{a: '1', b: '5'}")),
    );
    assert_eq!(diff.status.code(), Some(1), "{diff:?}");
    let shown = String::from_utf8_lossy(&diff.stdout);
    assert!(
        shown.contains("-  b: \"2\"") && shown.contains("+  b: \"5\""),
        "{shown}"
    );
    server.kubectl_stdin(
        &["apply", "--server-side", "--dry-run=server", "-f", "-"],
        Some(&configmap("{a: '1', b: '5'}")),
    );
    assert_eq!(get()["data"]["b"], "2");

    // Re-applying the same configuration changes nothing.
    server.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&configmap("{a: '1', b: '2'}")),
    );
    assert_eq!(get()["metadata"]["resourceVersion"], rv);

    // Another manager changing a field kubectl owns is a conflict, and nothing changes.
    let conflict = server.kubectl_fails(
        &["apply", "--server-side", "--field-manager=ops", "-f", "-"],
        Some(&configmap("{a: '9'}")),
    );
    assert!(
        conflict.contains("Apply failed with 1 conflict: conflict with \"kubectl\": .data.a"),
        "{conflict}"
    );
    assert_eq!(get()["data"]["a"], "1");

    // Forced, the field moves to the new manager.
    server.kubectl_stdin(
        &[
            "apply",
            "--server-side",
            "--field-manager=ops",
            "--force-conflicts",
            "-f",
            "-",
        ],
        Some(&configmap("{a: '9'}")),
    );
    let cm = get();
    assert_eq!(cm["data"]["a"], "9");
    let entries = cm["metadata"]["managedFields"].as_array().unwrap();
    let kubectl = entries.iter().find(|e| e["manager"] == "kubectl").unwrap();
    assert!(
        kubectl["fieldsV1"]["f:data"].get("f:a").is_none(),
        "{kubectl}"
    );

    // kubectl stops applying b: it is removed; a stays (ops owns it).
    server.kubectl_stdin(
        &["apply", "--server-side", "-f", "-"],
        Some(&configmap("{c: '3'}")),
    );
    let data = get()["data"].clone();
    assert_eq!(data, serde_json::json!({"a": "9", "c": "3"}));

    // Client-side writes are recorded as Update entries under kubectl's own manager names.
    server.kubectl(&["label", "cm", "settings", "tier=web"]);
    let cm = get();
    assert!(
        managers(&cm).contains(&pair("kubectl-label", "Update")),
        "{:?}",
        managers(&cm)
    );
    server.kubectl(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"data":{"d":"4"}}"#,
    ]);
    assert!(managers(&get()).contains(&pair("kubectl-patch", "Update")));

    // `[{}]` resets ownership; an empty list leaves it alone.
    server.kubectl(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"metadata":{"managedFields":[]}}"#,
    ]);
    assert!(!managers(&get()).is_empty());
    server.kubectl(&[
        "patch",
        "cm",
        "settings",
        "--type=merge",
        "-p",
        r#"{"metadata":{"managedFields":[{}]}}"#,
    ]);
    assert_eq!(managers(&get()), Vec::<(String, String)>::new());
}

const GADGET_CRD: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: gadgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: gadgets, singular: gadget, kind: Gadget}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    schema:
      openAPIV3Schema:
        type: object
        description: A Gadget is a test kind with validated fields.
        properties:
          spec:
            type: object
            description: What the gadget should be.
            x-kubernetes-validations:
            - rule: "self.size <= self.limit"
              message: size must not exceed limit
            properties:
              size:
                type: integer
                minimum: 1
                description: How many parts the gadget has.
              limit:
                type: integer
                default: 10
                description: The most parts allowed.
              color:
                type: string
                enum: [red, blue]
                description: The colour of the gadget.
              parts:
                type: object
                description: Named parts (a granular map of structs).
                additionalProperties:
                  type: object
                  properties:
                    count: {type: integer}
                    material: {type: string}
              slots:
                type: array
                description: Slots, merged by name.
                x-kubernetes-list-type: map
                x-kubernetes-list-map-keys: [name]
                items:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    width: {type: integer}
          status:
            type: object
            properties:
              ready: {type: boolean}
"#;

fn gadget(spec: &str) -> String {
    format!("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {{name: g1}}\nspec: {spec}\n")
}

fn with_crd() -> Server {
    let server = Server::start();
    server.kubectl_stdin(&["apply", "-f", "-"], Some(GADGET_CRD));
    server.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=20s",
        "crd/gadgets.example.com",
    ]);
    server
}

#[test]
fn custom_resources_are_validated_defaulted_and_pruned() {
    let server = with_crd();
    let not_stored = |server: &Server| {
        let err = server.kubectl_fails(&["get", "gadget", "g1"], None);
        assert!(err.contains("\"g1\" not found"), "{err}");
    };

    let schema = server.kubectl_fails(&["apply", "-f", "-"], Some(&gadget("{size: 0}")));
    assert!(
        schema.contains("The Gadget \"g1\" is invalid: spec.size: Invalid value: 0: spec.size in body should be greater than or equal to 1"),
        "{schema}"
    );
    not_stored(&server);

    let cel = server.kubectl_fails(&["apply", "-f", "-"], Some(&gadget("{size: 20, limit: 5}")));
    assert!(
        cel.contains(
            "The Gadget \"g1\" is invalid: spec: Invalid value: \"object\": size must not exceed limit"
        ),
        "{cel}"
    );
    not_stored(&server);

    let strict = server.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&gadget("{size: 2, shape: round}")),
    );
    assert!(
        strict.contains("strict decoding error: unknown field \"spec.shape\""),
        "{strict}"
    );
    not_stored(&server);

    // With warnings only, the unknown field is pruned and reported.
    let out = server.kubectl_output(
        &["apply", "--validate=warn", "-f", "-"],
        Some(&gadget("{size: 2, shape: round}")),
    );
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("Warning: unknown field \"spec.shape\""),
        "{stderr}"
    );
    let stored = json(&server.kubectl(&["get", "gadget", "g1", "-o", "json"]));
    assert!(stored["spec"].get("shape").is_none(), "{stored}");
    assert_eq!(stored["spec"]["limit"], 10, "defaulted: {stored}");
    let owners =
        json(&server.kubectl(&["get", "gadget", "g1", "-o", "json", "--show-managed-fields"]));
    assert_eq!(
        managers(&owners),
        [pair("kubectl-client-side-apply", "Update")]
    );

    // Server-side apply and patches go through the same validation.
    let ssa = server.kubectl_fails(
        &["apply", "--server-side", "-f", "-"],
        Some(&gadget("{size: 2, color: green}")),
    );
    assert!(
        ssa.contains(
            "spec.color: Unsupported value: \"green\": supported values: \"red\", \"blue\""
        ),
        "{ssa}"
    );
    let patch = server.kubectl_fails(
        &[
            "patch",
            "gadget",
            "g1",
            "--type=merge",
            "-p",
            r#"{"spec":{"size":11}}"#,
        ],
        None,
    );
    assert!(patch.contains("size must not exceed limit"), "{patch}");
    let unchanged = json(&server.kubectl(&["get", "gadget", "g1", "-o", "json"]));
    assert_eq!(unchanged["spec"]["size"], 2);
    assert_eq!(
        unchanged["metadata"]["resourceVersion"],
        stored["metadata"]["resourceVersion"]
    );
}

#[test]
fn explain_reads_custom_resource_schemas() {
    let server = with_crd();
    let spec = server.kubectl(&["explain", "gadgets.spec"]);
    assert!(spec.contains("GROUP:      example.com"), "{spec}");
    assert!(spec.contains("KIND:       Gadget"), "{spec}");
    assert!(spec.contains("What the gadget should be."), "{spec}");
    assert!(spec.contains("size\t<integer>"), "{spec}");
    assert!(spec.contains("How many parts the gadget has."), "{spec}");
    let size = server.kubectl(&["explain", "gadgets.spec.color"]);
    assert!(size.contains("The colour of the gadget."), "{size}");
}

#[test]
fn crds_without_structural_schemas_are_refused() {
    let server = Server::start();
    let untyped = GADGET_CRD.replace(
        "          status:\n            type: object\n",
        "          status:\n",
    );
    assert_ne!(untyped, GADGET_CRD, "the fixture changed");
    let err = server.kubectl_fails(&["apply", "-f", "-"], Some(&untyped));
    assert!(
        err.contains("The CustomResourceDefinition \"gadgets.example.com\" is invalid: spec.versions[0].schema.openAPIV3Schema.properties[status].type: Required value: must not be empty for specified object fields"),
        "{err}"
    );
    let missing = server.kubectl_fails(&["get", "crd", "gadgets.example.com"], None);
    assert!(missing.contains("not found"), "{missing}");
}

const DEPLOYMENT: &str = r#"
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, labels: {app: web}}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: cell, image: "cell:1", ports: [{containerPort: 8080}]}
"#;

#[test]
fn client_side_objects_move_to_server_side_apply() {
    let server = Server::start();
    assert_eq!(
        server
            .kubectl_stdin(&["apply", "-f", "-"], Some(DEPLOYMENT))
            .trim(),
        "deployment.apps/web created"
    );
    // kubectl migrates client-side ownership to its server-side manager: no conflict.
    let changed = DEPLOYMENT.replace("cell:1", "cell:2");
    assert_eq!(
        server
            .kubectl_stdin(&["apply", "--server-side", "-f", "-"], Some(&changed))
            .trim(),
        "deployment.apps/web serverside-applied"
    );
    let web = json(&server.kubectl(&[
        "get",
        "deploy",
        "web",
        "-o",
        "json",
        "--show-managed-fields",
    ]));
    assert_eq!(
        web["spec"]["template"]["spec"]["containers"][0]["image"],
        "cell:2"
    );
    assert_eq!(web["metadata"]["generation"], 2);
    assert!(
        managers(&web).contains(&pair("kubectl", "Apply")),
        "{:?}",
        managers(&web)
    );
    // Another manager changing the image conflicts on the list item's field.
    let err = server.kubectl_fails(
        &["apply", "--server-side", "--field-manager=ci", "-f", "-"],
        Some(&DEPLOYMENT.replace("cell:1", "cell:3")),
    );
    assert!(
        err.contains("conflict with \"kubectl\"")
            && err.contains(".spec.template.spec.containers[name=\"cell\"].image"),
        "{err}"
    );
}

/// A Deployment with labels `app` and (optionally) `tier`, container `cell` and
/// (optionally) the sidecar `log`.
fn web_deployment(tier: bool, sidecar: bool) -> String {
    let tier = if tier { ", tier: front" } else { "" };
    let log = if sidecar {
        "\n      - {name: log, image: \"log:1\"}"
    } else {
        ""
    };
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  labels: {{app: web{tier}}}\n\
         spec:\n  selector: {{matchLabels: {{app: web}}}}\n  template:\n    metadata: {{labels: {{app: web}}}}\n\
         \x20   spec:\n      containers:\n      - {{name: cell, image: \"cell:1\"}}{log}\n"
    )
}

#[test]
fn server_side_apply_removes_what_a_manager_stops_sending() {
    let server = with_crd();
    let ssa = |manager: &str, yaml: &str| {
        server.kubectl_stdin(
            &[
                "apply",
                "--server-side",
                &format!("--field-manager={manager}"),
                "-f",
                "-",
            ],
            Some(yaml),
        )
    };
    let get = |what: &str| json(&server.kubectl(&["get", what, "-o", "json"]));

    // Built-in: a label and a container (list item by merge key) dropped from the
    // configuration are removed.
    ssa("kubectl", &web_deployment(true, true));
    ssa("kubectl", &web_deployment(false, false));
    let web = get("deploy/web");
    assert_eq!(
        web["metadata"]["labels"],
        serde_json::json!({"app": "web"}),
        "{web}"
    );
    let containers = &web["spec"]["template"]["spec"]["containers"];
    assert_eq!(containers.as_array().map(Vec::len), Some(1), "{containers}");
    assert_eq!(containers[0]["name"], "cell");

    // A label another manager also applied stays when kubectl drops it.
    ssa("kubectl", &web_deployment(true, false));
    ssa(
        "team",
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web, labels: {tier: front}}\n",
    );
    ssa("kubectl", &web_deployment(false, false));
    assert_eq!(get("deploy/web")["metadata"]["labels"]["tier"], "front");

    // Custom resource: a map entry, a list-map item and an annotation dropped are removed;
    // a map entry co-owned by another manager keeps that manager's fields.
    let gadget = |parts: &str, slots: &str, note: bool| {
        let annotations = if note {
            "\n  annotations: {note: hi}"
        } else {
            ""
        };
        format!(
            "apiVersion: example.com/v1\nkind: Gadget\nmetadata:\n  name: g1{annotations}\n\
             spec:\n  size: 1\n  parts: {parts}\n  slots: {slots}\n"
        )
    };
    ssa(
        "kubectl",
        &gadget(
            "{wheel: {count: 4, material: steel}, bell: {count: 1}}",
            "[{name: a, width: 1}, {name: b, width: 2}]",
            true,
        ),
    );
    ssa(
        "painter",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {parts: {wheel: {count: 4}}}\n",
    );
    ssa(
        "kubectl",
        &gadget("{bell: {count: 1}}", "[{name: b, width: 2}]", false),
    );
    let g1 = get("gadget/g1");
    assert_eq!(
        g1["spec"]["parts"],
        serde_json::json!({"bell": {"count": 1}, "wheel": {"count": 4}}),
        "wheel stays with painter's count only: {g1}"
    );
    assert_eq!(
        g1["spec"]["slots"],
        serde_json::json!([{"name": "b", "width": 2}]),
        "{g1}"
    );
    assert!(
        g1["metadata"]
            .get("annotations")
            .is_none_or(|a| a.get("note").is_none()),
        "{g1}"
    );
    assert_eq!(g1["spec"]["limit"], 10, "defaults stay: {g1}");

    // painter stops applying wheel too: nobody owns it any more, so it goes.
    ssa(
        "painter",
        "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g1}\nspec: {}\n",
    );
    assert_eq!(
        get("gadget/g1")["spec"]["parts"],
        serde_json::json!({"bell": {"count": 1}})
    );
}

/// A CRD and a custom resource of it in one file, as charts and examples ship them.
const WIDGET_CRD_AND_CR: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w1, namespace: default}
spec: {size: 3}
"#;

#[test]
fn validation_on_applies_a_crd_and_its_resource_from_one_file() {
    let server = Server::start();
    // kubectl finds the new kind in neither OpenAPI document and falls back to v2 schema
    // validation, which must answer (with no schema for the kind) rather than fail.
    // Depending on its discovery cache kubectl then creates the resource or, as against a
    // real cluster, asks to "ensure CRDs are installed first"; a second apply creates it.
    let first = server.kubectl_output(&["apply", "-f", "-"], Some(WIDGET_CRD_AND_CR));
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(!printed.contains("error validating"), "{printed}");
    assert!(
        printed
            .contains("customresourcedefinition.apiextensions.k8s.io/widgets.example.com created"),
        "{printed}"
    );
    if !first.status.success() {
        assert!(
            printed.contains("ensure CRDs are installed first"),
            "{printed}"
        );
        server.kubectl_stdin(&["apply", "-f", "-"], Some(WIDGET_CRD_AND_CR));
    }
    let widget = json(&server.kubectl(&["get", "widget", "w1", "-o", "json"]));
    assert_eq!(widget["spec"]["size"], 3);

    // The server still validates: an unknown field is refused (kubectl sends Strict).
    let err = server.kubectl_fails(
        &["apply", "-f", "-"],
        Some(&WIDGET_CRD_AND_CR.replace("spec: {size: 3}", "spec: {size: 4, bogus: 1}")),
    );
    assert!(
        err.contains("strict decoding error: unknown field \"spec.bogus\""),
        "{err}"
    );
    // Plain `kubectl create` of built-ins keeps validation on as well.
    let created = server.kubectl_stdin(
        &["create", "-f", "-"],
        Some("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: plain}\ndata: {a: b}\n"),
    );
    assert_eq!(created.trim(), "configmap/plain created");
}
