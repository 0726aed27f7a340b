//! Server-side printing (`Accept: application/json;as=Table;g=meta.k8s.io;v=v1`): the
//! `meta.k8s.io/v1` Table kubectl renders for `get`, with the columns a real cluster
//! prints for the built-in kinds (wide-only columns at priority 1) and the printer
//! columns of CustomResourceDefinitions.

use serde_json::{Value, json};

use super::registry::ResourceInfo;

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept.split(',').any(|media| {
        let params: Vec<&str> = media.split(';').map(str::trim).collect();
        params.contains(&"as=Table") && params.iter().any(|p| p.starts_with("g=meta.k8s.io"))
    })
}

/// Whether an Accept header asks for PartialObjectMetadata(List).
pub fn wants_metadata(accept: &str) -> bool {
    accept.split(',').any(|media| {
        media
            .split(';')
            .map(str::trim)
            .any(|p| p == "as=PartialObjectMetadataList" || p == "as=PartialObjectMetadata")
    })
}

/// A column: header name, type, priority (0 = default output, 1 = `-o wide`).
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub kind: &'static str,
    pub priority: u8,
    /// For CRD printer columns: the JSON path of the value.
    pub json_path: Option<String>,
}

fn col(name: &str, priority: u8) -> Column {
    Column {
        name: name.to_owned(),
        kind: "string",
        priority,
        json_path: None,
    }
}

/// Kubernetes' `HumanDuration`: `45s`, `3m20s`, `2h5m`, `6d`, `2y100d`.
pub fn human_duration(seconds: i64) -> String {
    if seconds < -1 {
        return "<invalid>".into();
    }
    let s = seconds.max(0);
    let (m, h, d) = (s / 60, s / 3600, s / 86_400);
    if s < 120 {
        return format!("{s}s");
    }
    if m < 10 {
        return if s % 60 == 0 {
            format!("{m}m")
        } else {
            format!("{m}m{}s", s % 60)
        };
    }
    if h < 3 {
        return format!("{m}m");
    }
    if h < 8 {
        return if m % 60 == 0 {
            format!("{h}h")
        } else {
            format!("{h}h{}m", m % 60)
        };
    }
    if h < 48 {
        return format!("{h}h");
    }
    if h < 24 * 8 {
        return if h % 24 == 0 {
            format!("{d}d")
        } else {
            format!("{d}d{}h", h % 24)
        };
    }
    if d < 365 * 2 {
        return format!("{d}d");
    }
    let y = d / 365;
    if d < 365 * 8 {
        return if d % 365 == 0 {
            format!("{y}y")
        } else {
            format!("{y}y{}d", d % 365)
        };
    }
    format!("{y}y")
}

fn age(object: &Value, now: jiff::Timestamp) -> String {
    object
        .pointer("/metadata/creationTimestamp")
        .and_then(Value::as_str)
        .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        .map_or_else(
            || "<unknown>".to_owned(),
            |t| human_duration(now.as_second() - t.as_second()),
        )
}

fn s(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn int(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_i64).unwrap_or(0)
}

fn none_if_empty(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn containers_and_images(template_spec: Option<&Value>) -> (String, String) {
    let containers = template_spec
        .and_then(|s| s.get("containers"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let names: Vec<String> = containers.iter().map(|c| s(c.get("name"))).collect();
    let images: Vec<String> = containers.iter().map(|c| s(c.get("image"))).collect();
    (names.join(","), images.join(","))
}

fn selector_text(selector: Option<&Value>) -> String {
    let Some(selector) = selector else {
        return "<none>".into();
    };
    let labels = selector.get("matchLabels").unwrap_or(selector);
    let mut parts: Vec<String> = labels
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", s(Some(v))))
                .collect()
        })
        .unwrap_or_default();
    parts.sort();
    none_if_empty(parts.join(","))
}

fn pod_cells(pod: &Value) -> Vec<Value> {
    let statuses = pod
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = statuses
        .iter()
        .filter(|c| c.get("ready").and_then(Value::as_bool) == Some(true))
        .count();
    let restarts: i64 = statuses.iter().map(|c| int(c.get("restartCount"))).sum();
    let mut reason = s(pod.pointer("/status/phase"));
    if let Some(r) = pod.pointer("/status/reason").and_then(Value::as_str) {
        reason = r.to_owned();
    }
    for c in &statuses {
        if let Some(waiting) = c.pointer("/state/waiting/reason").and_then(Value::as_str) {
            reason = waiting.to_owned();
        } else if let Some(term) = c
            .pointer("/state/terminated/reason")
            .and_then(Value::as_str)
        {
            reason = term.to_owned();
        }
    }
    if pod.pointer("/metadata/deletionTimestamp").is_some() {
        reason = "Terminating".into();
    }
    vec![
        json!(format!("{ready}/{total}")),
        json!(reason),
        json!(restarts),
    ]
}

fn service_ports(svc: &Value) -> String {
    let ports = svc
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let parts: Vec<String> = ports
        .iter()
        .map(|p| {
            let proto = p.get("protocol").and_then(Value::as_str).unwrap_or("TCP");
            match p.get("nodePort") {
                Some(node) => format!("{}:{}/{proto}", s(p.get("port")), s(Some(node))),
                None => format!("{}/{proto}", s(p.get("port"))),
            }
        })
        .collect();
    none_if_empty(parts.join(","))
}

fn endpoints_text(ep: &Value) -> String {
    let mut parts = Vec::new();
    for subset in ep
        .get("subsets")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let ports: Vec<String> = subset
            .get("ports")
            .and_then(Value::as_array)
            .map(|ps| ps.iter().map(|p| s(p.get("port"))).collect())
            .unwrap_or_default();
        for addr in subset
            .get("addresses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let ip = s(addr.get("ip"));
            if ports.is_empty() {
                parts.push(ip);
            } else {
                parts.extend(ports.iter().map(|p| format!("{ip}:{p}")));
            }
        }
    }
    let shown = parts.len().min(3);
    let mut text = parts[..shown].join(",");
    if parts.len() > shown {
        text.push_str(&format!(" + {} more...", parts.len() - shown));
    }
    none_if_empty(text)
}

fn count_of(v: Option<&Value>) -> usize {
    v.and_then(Value::as_object).map_or(0, serde_json::Map::len)
}

/// Columns (after Name, before Age unless stated) and cell function of a built-in kind.
type Cells = fn(&Value) -> Vec<Value>;

fn builtin_columns(info: &ResourceInfo) -> Option<(Vec<Column>, Cells, bool)> {
    // (columns excluding Name/Age, cells, whether Age comes after the default columns)
    let spec: (Vec<Column>, Cells, bool) = match (info.group.as_str(), info.resource.as_str()) {
        ("", "pods") => (
            vec![
                col("Ready", 0),
                col("Status", 0),
                col("Restarts", 0),
                col("IP", 1),
                col("Node", 1),
                col("Nominated Node", 1),
                col("Readiness Gates", 1),
            ],
            |p| {
                let mut cells = pod_cells(p);
                cells.push(json!(none_if_empty(s(p.pointer("/status/podIP")))));
                cells.push(json!(none_if_empty(s(p.pointer("/spec/nodeName")))));
                cells.push(json!(none_if_empty(s(
                    p.pointer("/status/nominatedNodeName")
                ))));
                cells.push(json!("<none>"));
                cells
            },
            true,
        ),
        ("apps", "deployments") => (
            vec![
                col("Ready", 0),
                col("Up-to-date", 0),
                col("Available", 0),
                col("Containers", 1),
                col("Images", 1),
                col("Selector", 1),
            ],
            |d| {
                let (containers, images) = containers_and_images(d.pointer("/spec/template/spec"));
                vec![
                    json!(format!(
                        "{}/{}",
                        int(d.pointer("/status/readyReplicas")),
                        int(d.pointer("/spec/replicas"))
                    )),
                    json!(int(d.pointer("/status/updatedReplicas"))),
                    json!(int(d.pointer("/status/availableReplicas"))),
                    json!(containers),
                    json!(images),
                    json!(selector_text(d.pointer("/spec/selector"))),
                ]
            },
            true,
        ),
        ("apps", "replicasets") => (
            vec![
                col("Desired", 0),
                col("Current", 0),
                col("Ready", 0),
                col("Containers", 1),
                col("Images", 1),
                col("Selector", 1),
            ],
            |r| {
                let (containers, images) = containers_and_images(r.pointer("/spec/template/spec"));
                vec![
                    json!(int(r.pointer("/spec/replicas"))),
                    json!(int(r.pointer("/status/replicas"))),
                    json!(int(r.pointer("/status/readyReplicas"))),
                    json!(containers),
                    json!(images),
                    json!(selector_text(r.pointer("/spec/selector"))),
                ]
            },
            true,
        ),
        ("", "services") => (
            vec![
                col("Type", 0),
                col("Cluster-IP", 0),
                col("External-IP", 0),
                col("Port(s)", 0),
                col("Selector", 1),
            ],
            |svc| {
                let external = svc
                    .pointer("/spec/externalIPs")
                    .and_then(Value::as_array)
                    .map(|ips| ips.iter().map(|i| s(Some(i))).collect::<Vec<_>>().join(","))
                    .unwrap_or_default();
                vec![
                    json!(s(svc.pointer("/spec/type"))),
                    json!(none_if_empty(s(svc.pointer("/spec/clusterIP")))),
                    json!(none_if_empty(external)),
                    json!(service_ports(svc)),
                    json!(selector_text(svc.pointer("/spec/selector"))),
                ]
            },
            true,
        ),
        ("", "namespaces") => (
            vec![col("Status", 0)],
            |n| vec![json!(s(n.pointer("/status/phase")))],
            true,
        ),
        ("", "configmaps") => (
            vec![col("Data", 0)],
            |c| {
                vec![json!(
                    count_of(c.get("data")) + count_of(c.get("binaryData"))
                )]
            },
            true,
        ),
        ("", "secrets") => (
            vec![col("Type", 0), col("Data", 0)],
            |c| vec![json!(s(c.get("type"))), json!(count_of(c.get("data")))],
            true,
        ),
        ("", "serviceaccounts") => (
            vec![col("Secrets", 0)],
            |sa| {
                vec![json!(
                    sa.get("secrets")
                        .and_then(Value::as_array)
                        .map_or(0, Vec::len)
                )]
            },
            true,
        ),
        ("", "endpoints") => (
            vec![col("Endpoints", 0)],
            |e| vec![json!(endpoints_text(e))],
            true,
        ),
        ("", "nodes") => (
            vec![col("Status", 0), col("Roles", 0), col("Version", 0)],
            |n| {
                let ready = n
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter()
                            .find(|c| c.get("type").and_then(Value::as_str) == Some("Ready"))
                    })
                    .map(|c| {
                        if c.get("status").and_then(Value::as_str) == Some("True") {
                            "Ready"
                        } else {
                            "NotReady"
                        }
                    })
                    .unwrap_or("Unknown");
                vec![
                    json!(ready),
                    json!("<none>"),
                    json!(s(n.pointer("/status/nodeInfo/kubeletVersion"))),
                ]
            },
            true,
        ),
        ("coordination.k8s.io", "leases") => (
            vec![col("Holder", 0)],
            |l| vec![json!(s(l.pointer("/spec/holderIdentity")))],
            true,
        ),
        ("rbac.authorization.k8s.io", "rolebindings" | "clusterrolebindings") => (
            vec![col("Role", 0)],
            |b| {
                vec![json!(format!(
                    "{}/{}",
                    s(b.pointer("/roleRef/kind")),
                    s(b.pointer("/roleRef/name"))
                ))]
            },
            true,
        ),
        ("discovery.k8s.io", "endpointslices") => (
            vec![col("AddressType", 0), col("Ports", 0), col("Endpoints", 0)],
            |e| {
                let ports: Vec<String> = e
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|ps| ps.iter().map(|p| s(p.get("port"))).collect())
                    .unwrap_or_default();
                let addrs: Vec<String> = e
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .map(|es| {
                        es.iter()
                            .filter_map(|ep| ep.pointer("/addresses/0"))
                            .map(|a| s(Some(a)))
                            .collect()
                    })
                    .unwrap_or_default();
                vec![
                    json!(s(e.get("addressType"))),
                    json!(none_if_empty(ports.join(","))),
                    json!(none_if_empty(addrs.join(","))),
                ]
            },
            true,
        ),
        _ => return None,
    };
    Some(spec)
}

/// Evaluates a printer-column JSON path as kubectl's columns use them: fields
/// (`.spec.replicas`), indexes (`.status.conditions[0].type`) and equality filters
/// (`.status.conditions[?(@.type=="Ready")].status`, the first match).
fn json_path<'a>(object: &'a Value, path: &str) -> Option<&'a Value> {
    let mut current = object;
    for segment in path_segments(path)? {
        current = match segment {
            Segment::Field(field) => current.get(field)?,
            Segment::Index(index) => current.get(index)?,
            Segment::Filter { key, value } => current.as_array()?.iter().find(|item| {
                json_path(item, key).is_some_and(|found| match found {
                    Value::String(text) => text == value,
                    // Numbers and booleans compare by their JSON text (`@.replicas==3`).
                    other => serde_json::from_str::<Value>(value).is_ok_and(|v| v == *other),
                })
            })?,
        };
    }
    Some(current)
}

/// One step of a printer-column JSON path.
#[derive(Debug, PartialEq)]
enum Segment<'a> {
    Field(&'a str),
    Index(usize),
    /// `[?(@.key=="value")]`: the first element whose `key` equals `value`.
    Filter {
        key: &'a str,
        value: &'a str,
    },
}

/// Splits `.a.b[0].c[?(@.type=="Ready")].d` into segments; `.` inside brackets (the
/// filter's `@.type`) does not split. `None` for what it does not support (`[*]`, ranges).
fn path_segments(path: &str) -> Option<Vec<Segment<'_>>> {
    let mut segments = Vec::new();
    let mut rest = path.trim_start_matches('$');
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix('.') {
            let end = after.find(['.', '[']).unwrap_or(after.len());
            if end > 0 {
                segments.push(Segment::Field(&after[..end]));
            }
            rest = &after[end..];
        } else if let Some(after) = rest.strip_prefix('[') {
            let close = after.find(']')?;
            let inside = &after[..close];
            rest = &after[close + 1..];
            if let Ok(index) = inside.parse() {
                segments.push(Segment::Index(index));
            } else if let Some(filter) = inside
                .strip_prefix("?(@.")
                .and_then(|f| f.strip_suffix(')'))
                .and_then(|f| f.split_once("=="))
            {
                let value = filter.1.trim().trim_matches(['"', '\'']);
                segments.push(Segment::Filter {
                    key: filter.0.trim(),
                    value,
                });
            } else {
                return None;
            }
        } else {
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            segments.push(Segment::Field(&rest[..end]));
            rest = &rest[end..];
        }
    }
    Some(segments)
}

/// A Table for `objects` of `info`. `printer_columns` are a CRD version's
/// `additionalPrinterColumns` (empty for built-ins). `include_object` is the query value.
pub fn render(
    info: &ResourceInfo,
    printer_columns: &[Value],
    objects: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
    include_object: Option<&str>,
) -> Value {
    let now = jiff::Timestamp::now();
    let mut columns = vec![Column {
        kind: "string",
        ..col("Name", 0)
    }];
    if info.custom {
        // A CRD prints exactly its printer columns; without any, apiextensions defaults
        // them to one `Age` column.
        let default_age =
            [json!({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})];
        let printer_columns = if printer_columns.is_empty() {
            &default_age[..]
        } else {
            printer_columns
        };
        let custom: Vec<Column> = printer_columns
            .iter()
            .map(|c| Column {
                name: s(c.get("name")),
                kind: match c.get("type").and_then(Value::as_str) {
                    Some("integer") => "integer",
                    Some("number") => "number",
                    Some("boolean") => "boolean",
                    Some("date") => "date",
                    _ => "string",
                },
                priority: u8::try_from(int(c.get("priority"))).unwrap_or(0).min(1),
                json_path: c.get("jsonPath").and_then(Value::as_str).map(str::to_owned),
            })
            .collect();
        columns.extend(custom.iter().cloned());
        let cells_of = move |o: &Value| -> Vec<Value> {
            custom
                .iter()
                .map(|c| {
                    let v = c.json_path.as_deref().and_then(|p| json_path(o, p));
                    match (c.kind, v) {
                        ("date", Some(Value::String(t))) => {
                            t.parse::<jiff::Timestamp>().map_or(json!(t), |t| {
                                json!(human_duration(now.as_second() - t.as_second()))
                            })
                        }
                        (_, Some(v @ (Value::Number(_) | Value::Bool(_)))) => v.clone(),
                        (_, v) => json!(s(v)),
                    }
                })
                .collect()
        };
        return table(
            columns,
            objects,
            |o| {
                let mut cells = vec![json!(name(o))];
                cells.extend(cells_of(o));
                cells
            },
            resource_version,
            continue_token,
            include_object,
        );
    }
    if info.resource == "customresourcedefinitions"
        || info.resource == "roles"
        || info.resource == "clusterroles"
    {
        columns.push(Column {
            kind: "date",
            ..col("Created At", 0)
        });
        return table(
            columns,
            objects,
            |o| {
                vec![
                    json!(name(o)),
                    json!(s(o.pointer("/metadata/creationTimestamp"))),
                ]
            },
            resource_version,
            continue_token,
            include_object,
        );
    }
    if info.resource == "events" && info.group.is_empty() {
        let columns = vec![
            col("Last Seen", 0),
            col("Type", 0),
            col("Reason", 0),
            col("Object", 0),
            col("Message", 0),
        ];
        return table(
            columns,
            objects,
            |e| {
                let when = e
                    .get("lastTimestamp")
                    .or_else(|| e.get("eventTime"))
                    .and_then(Value::as_str)
                    .and_then(|t| t.parse::<jiff::Timestamp>().ok());
                vec![
                    json!(when.map_or_else(
                        || "<unknown>".to_owned(),
                        |t| human_duration(now.as_second() - t.as_second())
                    )),
                    json!(s(e.get("type"))),
                    json!(s(e.get("reason"))),
                    json!(format!(
                        "{}/{}",
                        s(e.pointer("/involvedObject/kind")).to_lowercase(),
                        s(e.pointer("/involvedObject/name"))
                    )),
                    json!(s(e.get("message"))),
                ]
            },
            resource_version,
            continue_token,
            include_object,
        );
    }
    match builtin_columns(info) {
        Some((extra, cells, _)) => {
            // Age sits after the default (priority 0) columns, before the wide ones.
            let (default, wide): (Vec<Column>, Vec<Column>) =
                extra.into_iter().partition(|c| c.priority == 0);
            let n_default = default.len();
            columns.extend(default);
            columns.push(col("Age", 0));
            columns.extend(wide);
            table(
                columns,
                objects,
                |o| {
                    let all = cells(o);
                    let mut row = vec![json!(name(o))];
                    row.extend(all.iter().take(n_default).cloned());
                    row.push(json!(age(o, now)));
                    row.extend(all.iter().skip(n_default).cloned());
                    row
                },
                resource_version,
                continue_token,
                include_object,
            )
        }
        None => {
            columns.push(col("Age", 0));
            table(
                columns,
                objects,
                |o| vec![json!(name(o)), json!(age(o, now))],
                resource_version,
                continue_token,
                include_object,
            )
        }
    }
}

fn name(o: &Value) -> String {
    s(o.pointer("/metadata/name"))
}

fn partial_metadata(o: &Value) -> Value {
    json!({
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": o.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}

/// A `PartialObjectMetadataList` of `objects`.
pub fn metadata_list(
    objects: &[&Value],
    resource_version: &str,
    continue_token: Option<&str>,
) -> Value {
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        meta["continue"] = json!(token);
    }
    json!({
        "kind": "PartialObjectMetadataList",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "items": objects.iter().map(|o| partial_metadata(o)).collect::<Vec<_>>(),
    })
}

pub fn partial_object(o: &Value) -> Value {
    partial_metadata(o)
}

fn table(
    columns: Vec<Column>,
    objects: &[&Value],
    cells: impl Fn(&Value) -> Vec<Value>,
    resource_version: &str,
    continue_token: Option<&str>,
    include_object: Option<&str>,
) -> Value {
    let definitions: Vec<Value> = columns
        .iter()
        .map(|c| {
            json!({
                "name": c.name,
                "type": c.kind,
                "format": if c.name == "Name" { "name" } else { "" },
                "description": "",
                "priority": c.priority,
            })
        })
        .collect();
    let rows: Vec<Value> = objects
        .iter()
        .map(|o| {
            let mut row = json!({"cells": cells(o)});
            match include_object {
                Some("None") => {}
                Some("Object") => row["object"] = (*o).clone(),
                _ => row["object"] = partial_metadata(o),
            }
            row
        })
        .collect();
    let mut meta = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        meta["continue"] = json!(token);
    }
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": meta,
        "columnDefinitions": definitions,
        "rows": rows,
    })
}

#[cfg(test)]
mod json_path_tests {
    use super::*;

    #[test]
    fn printer_column_paths_with_filters() {
        let object = json!({"spec": {"replicas": 3}, "status": {"conditions": [
            {"type": "Progressing", "status": "False"},
            {"type": "Ready", "status": "True", "observedGeneration": 2}
        ]}});
        assert_eq!(json_path(&object, ".spec.replicas"), Some(&json!(3)));
        assert_eq!(
            json_path(&object, ".status.conditions[0].type"),
            Some(&json!("Progressing"))
        );
        assert_eq!(
            json_path(&object, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(&json!("True"))
        );
        assert_eq!(
            json_path(
                &object,
                ".status.conditions[?(@.type=='Ready')].observedGeneration"
            ),
            Some(&json!(2))
        );
        assert_eq!(
            json_path(&object, ".status.conditions[?(@.type==\"Gone\")].status"),
            None
        );
        assert_eq!(json_path(&object, ".status.conditions[*].type"), None);
        assert_eq!(json_path(&object, ".spec.missing"), None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::registry::Registry;

    #[test]
    fn human_durations_match_kubernetes() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(3 * 3600 + 300), "3h5m");
        assert_eq!(human_duration(10 * 3600), "10h");
        assert_eq!(human_duration(3 * 86_400 + 3600), "3d1h");
        assert_eq!(human_duration(100 * 86_400), "100d");
        assert_eq!(human_duration(800 * 86_400), "2y70d");
    }

    #[test]
    fn pod_table_has_kubectl_columns() {
        let info = Registry::new().lookup("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "p", "creationTimestamp": "2020-01-01T00:00:00Z"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "127.64.0.2", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 2}, {"name": "b", "ready": false, "restartCount": 1}]}});
        let table = render(&info, &[], &[&pod], "5", None, None);
        let names: Vec<&str> = table["columnDefinitions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names,
            [
                "Name",
                "Ready",
                "Status",
                "Restarts",
                "Age",
                "IP",
                "Node",
                "Nominated Node",
                "Readiness Gates"
            ]
        );
        let cells = &table["rows"][0]["cells"];
        assert_eq!(cells[0], "p");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "Running");
        assert_eq!(cells[3], 3);
        assert_eq!(cells[5], "127.64.0.2");
        assert_eq!(table["rows"][0]["object"]["kind"], "PartialObjectMetadata");
    }

    #[test]
    fn crd_printer_columns() {
        let mut info = (*Registry::new().lookup("apps", "v1", "deployments").unwrap()).clone();
        info.custom = true;
        let columns = [
            json!({"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"}),
            json!({"name": "Phase", "type": "string", "jsonPath": ".status.conditions[0].type", "priority": 1}),
        ];
        let object = json!({"metadata": {"name": "x"}, "spec": {"replicas": 3}, "status": {"conditions": [{"type": "Ready"}]}});
        let table = render(&info, &columns, &[&object], "1", None, Some("Object"));
        assert_eq!(table["rows"][0]["cells"], json!(["x", 3, "Ready"]));
        let plain = render(&info, &[], &[&object], "1", None, None);
        assert_eq!(plain["columnDefinitions"][1]["name"], "Age");
        assert_eq!(table["columnDefinitions"][2]["priority"], 1);
        assert_eq!(table["rows"][0]["object"]["spec"]["replicas"], 3);
    }

    #[test]
    fn accept_parsing() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
        assert!(wants_metadata(
            "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
        ));
    }
}
