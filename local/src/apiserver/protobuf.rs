//! Decoding of `application/vnd.kubernetes.protobuf` request bodies into the JSON objects
//! the rest of the server works with.
//!
//! client-go based tools (kubectl's `create configmap|secret|namespace|deployment`, `auth
//! can-i`, `create token`) send built-in objects as protobuf. The wire format is the
//! 4-byte magic `k8s\0` followed by a `runtime.Unknown` message whose `typeMeta` names the
//! `apiVersion`/`kind` and whose `raw` bytes are the object's own message, as declared in
//! Kubernetes' `generated.proto` files (vendored under `local/proto/`, compiled by
//! `build.rs` with protox and embedded here).
//!
//! The conversion follows the JSON encoding Kubernetes gives the same Go structs:
//! proto field names are the JSON names; `Time`/`MicroTime` become RFC 3339 strings (the
//! zero time is left out, as Go's `omitempty` on a `*Time`/zero `Time` renders it null);
//! `Quantity` is its string; `IntOrString` a number or a string; `RawExtension` and
//! `FieldsV1` the JSON they carry; `Duration` a Go duration string; the named slices
//! `Verbs`/`ExtraValue` plain arrays; `bytes` base64. Go's protobuf marshaller writes every
//! non-pointer string even when empty, so empty strings are dropped (they are the
//! `omitempty` zero values JSON clients would not have sent). Likewise `false` and `0` of
//! the non-pointer `omitempty` scalars in [`GO_OMITEMPTY_SCALARS`] (`stdin`, `paused`,
//! `minReadySeconds`, template `generation` …) are dropped; every other zero is kept,
//! because pointer fields (`replicas: 0`, `automountServiceAccountToken: false`) carry a
//! choice the client made, and the wire cannot tell the two apart.

use std::sync::LazyLock;

use base64::Engine;
use prost_reflect::{DescriptorPool, DynamicMessage, MapKey, ReflectMessage, Value as Field};
use serde_json::{Map, Value, json};

use super::error::ApiError;

/// The media type client-go uses for protobuf.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The magic prefix of every Kubernetes protobuf body.
const MAGIC: &[u8] = b"k8s\0";

static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/kubernetes.fds"))[..])
        .map_err(|e| format!("embedded Kubernetes descriptors do not decode: {e}"))
});

fn pool() -> Result<&'static DescriptorPool, ApiError> {
    POOL.as_ref().map_err(|e| ApiError::internal(e.clone()))
}

fn bad(message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!(
        "the object provided is unrecognized (protobuf body): {message}"
    ))
}

/// The protobuf package holding the messages of an `apiVersion` (`apps/v1` →
/// `k8s.io.api.apps.v1`, `v1` → `k8s.io.api.core.v1`).
fn package_of(api_version: &str) -> String {
    match api_version.split_once('/') {
        None => format!("k8s.io.api.core.{api_version}"),
        Some((group, version)) => {
            let short = group
                .strip_suffix(".k8s.io")
                .unwrap_or(group)
                .split('.')
                .next()
                .unwrap_or(group);
            format!("k8s.io.api.{short}.{version}")
        }
    }
}

/// Decodes a protobuf body (envelope included) into the object's JSON form.
pub fn decode(body: &[u8]) -> Result<Value, ApiError> {
    let pool = pool()?;
    let payload = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("the body does not start with the k8s protobuf magic"))?;
    let unknown_desc = pool
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .ok_or_else(|| ApiError::internal("runtime.Unknown is not in the embedded descriptors"))?;
    let unknown = DynamicMessage::decode(unknown_desc, payload).map_err(bad)?;
    let type_meta = match unknown.get_field_by_name("typeMeta").as_deref() {
        Some(Field::Message(m)) => m.clone(),
        _ => return Err(bad("the envelope has no typeMeta")),
    };
    let text = |m: &DynamicMessage, name: &str| match m.get_field_by_name(name).as_deref() {
        Some(Field::String(s)) => s.clone(),
        _ => String::new(),
    };
    let api_version = text(&type_meta, "apiVersion");
    let kind = text(&type_meta, "kind");
    if api_version.is_empty() || kind.is_empty() {
        return Err(bad("typeMeta.apiVersion and typeMeta.kind are required"));
    }
    let encoding = text(&unknown, "contentEncoding");
    if !encoding.is_empty() {
        return Err(bad(format!("unsupported contentEncoding {encoding:?}")));
    }
    let raw = match unknown.get_field_by_name("raw").as_deref() {
        Some(Field::Bytes(b)) => b.clone(),
        _ => bytes::Bytes::new(),
    };
    // Option kinds (DeleteOptions …) live in meta/v1 whatever group-version the client
    // names: client-go sends a DELETE's body as `v1, Kind=DeleteOptions` (Helm's uninstall).
    let desc = pool
        .get_message_by_name(&format!("{}.{kind}", package_of(&api_version)))
        .or_else(|| pool.get_message_by_name(&format!("{META}.{kind}")));
    let desc = desc.ok_or_else(|| {
        tracing::warn!(%api_version, %kind, "protobuf body of a kind without a vendored schema");
        ApiError::unsupported_media_type(&format!(
            "{MEDIA_TYPE} (no protobuf schema for {api_version}, Kind={kind}; send JSON)"
        ))
    })?;
    let message = DynamicMessage::decode(desc, raw).map_err(bad)?;
    let mut object = Map::new();
    object.insert("apiVersion".into(), json!(api_version));
    object.insert("kind".into(), json!(kind));
    if let Value::Object(fields) = message_to_json(&message)? {
        object.extend(fields);
    }
    Ok(Value::Object(object))
}

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";

/// Scalar fields declared in Go as non-pointer `bool`/integer with `omitempty`, by proto
/// message: Go's protobuf marshaller writes their zero value, its JSON marshaller omits
/// it. The messages are those client-go tools (`kubectl create deployment|service|job …`,
/// `kubectl run`) send; a zero of a field not listed here is kept.
const GO_OMITEMPTY_SCALARS: &[(&str, &[&str])] = &[
    (
        "k8s.io.apimachinery.pkg.apis.meta.v1.ObjectMeta",
        &["generation"],
    ),
    (
        "k8s.io.api.apps.v1.DeploymentSpec",
        &["minReadySeconds", "paused"],
    ),
    ("k8s.io.api.apps.v1.ReplicaSetSpec", &["minReadySeconds"]),
    ("k8s.io.api.apps.v1.StatefulSetSpec", &["minReadySeconds"]),
    ("k8s.io.api.apps.v1.DaemonSetSpec", &["minReadySeconds"]),
    (
        "k8s.io.api.core.v1.PodSpec",
        &["hostNetwork", "hostPID", "hostIPC"],
    ),
    (
        "k8s.io.api.core.v1.Container",
        &["stdin", "stdinOnce", "tty"],
    ),
    (
        "k8s.io.api.core.v1.EphemeralContainerCommon",
        &["stdin", "stdinOnce", "tty"],
    ),
    ("k8s.io.api.core.v1.ContainerPort", &["hostPort"]),
    ("k8s.io.api.core.v1.VolumeMount", &["readOnly"]),
    (
        "k8s.io.api.core.v1.Probe",
        &[
            "initialDelaySeconds",
            "timeoutSeconds",
            "periodSeconds",
            "successThreshold",
            "failureThreshold",
        ],
    ),
    (
        "k8s.io.api.core.v1.ServiceSpec",
        &["healthCheckNodePort", "publishNotReadyAddresses"],
    ),
    ("k8s.io.api.core.v1.ServicePort", &["nodePort"]),
];

/// Whether `value` of `field` in message `message` is a Go `omitempty` zero value.
fn is_go_omitted_zero(message: &str, field: &str, value: &Value) -> bool {
    let zero = value == &Value::Bool(false) || value.as_i64() == Some(0);
    zero && GO_OMITEMPTY_SCALARS
        .iter()
        .any(|(m, fields)| *m == message && fields.contains(&field))
}

/// One message as JSON, with the special cases of the module docs.
fn message_to_json(message: &DynamicMessage) -> Result<Value, ApiError> {
    let desc = message.descriptor();
    let name = desc.full_name();
    let field = |n: &str| message.get_field_by_name(n);
    match name {
        n if n == format!("{META}.Time") || n == format!("{META}.MicroTime") => {
            let seconds = field("seconds").and_then(|v| v.as_i64()).unwrap_or(0);
            let nanos = field("nanos").and_then(|v| v.as_i32()).unwrap_or(0);
            return Ok(time_json(seconds, nanos, n.ends_with("MicroTime")));
        }
        n if n == format!("{META}.Duration") => {
            let nanos = field("duration").and_then(|v| v.as_i64()).unwrap_or(0);
            return Ok(json!(go_duration(nanos)));
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity"
        | "k8s.io.apimachinery.pkg.api.resource.QuantityValue" => {
            let text = field("string")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default();
            return Ok(json!(text));
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            let is_string = field("type").and_then(|v| v.as_i64()).unwrap_or(0) == 1;
            return Ok(if is_string {
                json!(
                    field("strVal")
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default()
                )
            } else {
                json!(field("intVal").and_then(|v| v.as_i32()).unwrap_or(0))
            });
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension" => {
            let raw = field("raw")
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            return embedded_json(&raw, name);
        }
        n if n == format!("{META}.FieldsV1") => {
            let raw = field("Raw")
                .or_else(|| field("raw"))
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            return embedded_json(&raw, name);
        }
        n if n == format!("{META}.Verbs")
            || n == "k8s.io.api.authentication.v1.ExtraValue"
            || n == "k8s.io.api.authorization.v1.ExtraValue" =>
        {
            return match field("items").as_deref() {
                Some(items) => field_to_json(items),
                None => Ok(json!([])),
            };
        }
        _ => {}
    }
    let mut object = Map::new();
    for (fd, value) in message.fields() {
        let converted = field_to_json(value)?;
        if matches!(&converted, Value::Null)
            || converted.as_str() == Some("")
            || is_go_omitted_zero(name, fd.json_name(), &converted)
        {
            continue;
        }
        object.insert(fd.json_name().to_owned(), converted);
    }
    Ok(Value::Object(object))
}

fn embedded_json(raw: &[u8], what: &str) -> Result<Value, ApiError> {
    if raw.is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_slice(raw).map_err(|e| bad(format!("{what} does not hold JSON: {e}")))
}

fn field_to_json(value: &Field) -> Result<Value, ApiError> {
    Ok(match value {
        Field::Bool(b) => json!(b),
        Field::I32(n) => json!(n),
        Field::I64(n) => json!(n),
        Field::U32(n) => json!(n),
        Field::U64(n) => json!(n),
        Field::F32(n) => json!(n),
        Field::F64(n) => json!(n),
        Field::String(s) => json!(s),
        Field::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        Field::EnumNumber(n) => json!(n),
        Field::Message(m) => message_to_json(m)?,
        Field::List(items) => Value::Array(
            items
                .iter()
                .map(field_to_json)
                .collect::<Result<Vec<_>, _>>()?,
        ),
        Field::Map(entries) => {
            let mut object = Map::new();
            for (key, value) in entries {
                let key = match key {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                // Map values keep empty strings: `data: {k: ""}` is meaningful.
                object.insert(key, field_to_json(value)?);
            }
            Value::Object(object)
        }
    })
}

/// RFC 3339 as Kubernetes writes `Time` (seconds) and `MicroTime` (microseconds).
fn time_json(seconds: i64, nanos: i32, micro: bool) -> Value {
    if seconds == 0 && nanos == 0 {
        return Value::Null;
    }
    let Ok(ts) = jiff::Timestamp::new(seconds, if micro { nanos } else { 0 }) else {
        return Value::Null;
    };
    let text = if micro {
        format!("{}", ts.strftime("%Y-%m-%dT%H:%M:%S.%6fZ"))
    } else {
        format!("{}", ts.strftime("%Y-%m-%dT%H:%M:%SZ"))
    };
    json!(text)
}

/// A duration in nanoseconds as Go's `time.Duration.String()` prints it (`1h2m3.5s`).
fn go_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000 {
        return format!("{sign}{n}ns");
    }
    if n < 1_000_000 {
        return format!("{sign}{}µs", trim_fraction(n, 1_000));
    }
    if n < 1_000_000_000 {
        return format!("{sign}{}ms", trim_fraction(n, 1_000_000));
    }
    let hours = n / 3_600_000_000_000;
    let minutes = (n / 60_000_000_000) % 60;
    let seconds = trim_fraction(n % 60_000_000_000, 1_000_000_000);
    let mut out = sign.to_owned();
    if hours > 0 {
        out.push_str(&format!("{hours}h"));
    }
    if hours > 0 || minutes > 0 {
        out.push_str(&format!("{minutes}m"));
    }
    out.push_str(&format!("{seconds}s"));
    out
}

/// `value / unit` with its fractional digits, trailing zeros trimmed (`1500, 1000` → `1.5`).
fn trim_fraction(value: u64, unit: u64) -> String {
    let whole = value / unit;
    let fraction = value % unit;
    if fraction == 0 {
        return whole.to_string();
    }
    let width = unit.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// Encodes `object` (JSON, with `apiVersion`/`kind`) the way client-go does: used by
/// tests to produce bodies, and the inverse of [`decode`] for the fields it covers.
#[cfg(test)]
pub fn encode_for_test(object: &Value) -> Vec<u8> {
    use prost::Message;
    let pool = pool().unwrap();
    let api_version = object["apiVersion"].as_str().unwrap();
    let kind = object["kind"].as_str().unwrap();
    let desc = pool
        .get_message_by_name(&format!("{}.{kind}", package_of(api_version)))
        .or_else(|| pool.get_message_by_name(&format!("{META}.{kind}")))
        .unwrap();
    let mut body = object.clone();
    let map = body.as_object_mut().unwrap();
    map.remove("apiVersion");
    map.remove("kind");
    let inner = DynamicMessage::deserialize(desc, body).unwrap();
    let unknown_desc = pool
        .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
        .unwrap();
    let envelope = json!({
        "typeMeta": {"apiVersion": api_version, "kind": kind},
        "raw": base64::engine::general_purpose::STANDARD.encode(inner.encode_to_vec()),
    });
    let unknown = DynamicMessage::deserialize(unknown_desc, envelope).unwrap();
    let mut out = MAGIC.to_vec();
    out.extend(unknown.encode_to_vec());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packages_follow_the_api_group() {
        assert_eq!(package_of("v1"), "k8s.io.api.core.v1");
        assert_eq!(package_of("apps/v1"), "k8s.io.api.apps.v1");
        assert_eq!(
            package_of("authorization.k8s.io/v1"),
            "k8s.io.api.authorization.v1"
        );
        assert_eq!(
            package_of("rbac.authorization.k8s.io/v1"),
            "k8s.io.api.rbac.v1"
        );
    }

    #[test]
    fn delete_options_decode_whatever_group_version_names_them() {
        // Helm's uninstall: client-go sends the DELETE body as `v1, Kind=DeleteOptions`.
        let opts = json!({"apiVersion": "v1", "kind": "DeleteOptions",
            "propagationPolicy": "Background", "gracePeriodSeconds": 0});
        assert_eq!(decode(&encode_for_test(&opts)).unwrap(), opts);
    }

    #[test]
    fn go_durations_print_as_go_does() {
        assert_eq!(go_duration(0), "0s");
        assert_eq!(go_duration(1_500), "1.5µs");
        assert_eq!(go_duration(2_000_000), "2ms");
        assert_eq!(go_duration(90_000_000_000), "1m30s");
        assert_eq!(go_duration(3_723_500_000_000), "1h2m3.5s");
        assert_eq!(go_duration(-3_600_000_000_000), "-1h0m0s");
    }

    #[test]
    fn a_configmap_round_trips_with_empty_values_kept_in_data() {
        let cm = json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "c", "namespace": "default", "labels": {"a": "b"}},
            "data": {"k": "v", "empty": ""}, "binaryData": {"bin": "AAEC"}});
        let decoded = decode(&encode_for_test(&cm)).unwrap();
        assert_eq!(decoded, cm);
    }

    #[test]
    fn go_omitempty_zeros_are_dropped_and_pointer_zeros_kept() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "generation": 0},
            "spec": {"replicas": 0, "minReadySeconds": 0, "paused": false,
                "template": {"metadata": {"generation": 0},
                    "spec": {"hostNetwork": false, "automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "c", "image": "i", "stdin": false, "tty": false,
                            "ports": [{"containerPort": 80, "hostPort": 0}]}]}}}});
        let decoded = decode(&encode_for_test(&deployment)).unwrap();
        assert_eq!(
            decoded,
            json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "web"},
                "spec": {"replicas": 0, "template": {"metadata": {},
                    "spec": {"automountServiceAccountToken": false,
                        "terminationGracePeriodSeconds": 0,
                        "containers": [{"name": "c", "image": "i",
                            "ports": [{"containerPort": 80}]}]}}}})
        );
    }

    #[test]
    fn special_types_decode_to_their_json_forms() {
        let deployment = json!({"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "creationTimestamp": {"seconds": 0},
                         "deletionGracePeriodSeconds": 30},
            "spec": {"replicas": 0,
              "strategy": {"rollingUpdate": {"maxSurge": {"type": 1, "strVal": "25%"},
                                             "maxUnavailable": {"type": 0, "intVal": 1}}},
              "selector": {"matchLabels": {"app": "web"}},
              "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"containers": [{"name": "c", "image": "i",
                  "resources": {"limits": {"cpu": {"string": "500m"}}}}]}}}});
        let decoded = decode(&encode_for_test(&deployment)).unwrap();
        assert_eq!(decoded["spec"]["replicas"], 0, "a set zero pointer is kept");
        assert_eq!(
            decoded["metadata"]["deletionGracePeriodSeconds"], 30,
            "int64 stays a number"
        );
        assert!(
            decoded["metadata"].get("creationTimestamp").is_none(),
            "zero time is omitted: {decoded}"
        );
        let rolling = &decoded["spec"]["strategy"]["rollingUpdate"];
        assert_eq!(rolling["maxSurge"], "25%");
        assert_eq!(rolling["maxUnavailable"], 1);
        assert_eq!(
            decoded["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"],
            "500m"
        );
    }

    #[test]
    fn times_secrets_and_access_reviews() {
        let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": "l"},
            "spec": {"renewTime": {"seconds": 1_700_000_000, "nanos": 123_456_000}}});
        let decoded = decode(&encode_for_test(&lease)).unwrap();
        assert_eq!(decoded["spec"]["renewTime"], "2023-11-14T22:13:20.123456Z");
        let secret = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque", "data": {"password": "c2VjcmV0"}});
        assert_eq!(decode(&encode_for_test(&secret)).unwrap(), secret);
        let review = json!({"apiVersion": "authorization.k8s.io/v1",
            "kind": "SelfSubjectAccessReview", "metadata": {},
            "spec": {"resourceAttributes": {"verb": "get", "resource": "pods",
                                            "namespace": "default"}}});
        let decoded = decode(&encode_for_test(&review)).unwrap();
        assert_eq!(decoded["spec"]["resourceAttributes"]["verb"], "get");
        assert!(
            decoded["spec"]["resourceAttributes"].get("group").is_none(),
            "empty strings are dropped"
        );
    }

    #[test]
    fn bad_bodies_are_refused_with_a_reason() {
        let err = decode(b"{\"kind\":\"ConfigMap\"}").unwrap_err();
        assert_eq!(err.code, 400);
        assert!(err.message.contains("magic"), "{}", err.message);
        let err = decode(b"k8s\0\xff\xff\xff").unwrap_err();
        assert_eq!(err.code, 400);
        let widget = json!({"typeMeta": {"apiVersion": "example.com/v1", "kind": "Widget"}});
        let unknown = DynamicMessage::deserialize(
            pool()
                .unwrap()
                .get_message_by_name("k8s.io.apimachinery.pkg.runtime.Unknown")
                .unwrap(),
            widget,
        )
        .unwrap();
        let mut body = MAGIC.to_vec();
        prost::Message::encode(&unknown, &mut body).unwrap();
        let err = decode(&body).unwrap_err();
        assert_eq!(err.code, 415, "{}", err.message);
    }
}
