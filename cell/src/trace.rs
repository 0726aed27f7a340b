//! µBench's trace-driven requests: the POST body `{"<svc>__<suffix>": [groups…]}`.
//!
//! A trace node is a key `<service>__<suffix>` (the suffix only makes JSON keys unique) and a
//! list of groups; each group is a JSON object whose keys are calls, made **in document
//! order**, each with its own subtree. Groups run in parallel. Parsing keeps the document
//! order (serde_json's map would sort keys), refuses anything but this shape with a message
//! naming the problem, and relies on serde_json's recursion limit against deep nesting.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// Separates a service name from the unique suffix in a trace key.
pub const ESCAPE: &str = "__";

/// One call of a trace and the calls it makes in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceNode {
    /// The key as written: `<service>__<suffix>` or just `<service>`.
    pub key: String,
    /// Groups of calls this service makes: in parallel across groups, in order within one.
    pub groups: Vec<Vec<TraceNode>>,
}

impl TraceNode {
    /// The service this node calls: the key up to the first `__`.
    pub fn service(&self) -> &str {
        service_of(&self.key)
    }

    /// Number of calls in the whole tree below this node (this node excluded).
    pub fn descendants(&self) -> usize {
        self.groups
            .iter()
            .flatten()
            .map(|child| 1 + child.descendants())
            .sum()
    }

    /// The POST body that asks `self.service()` to run this subtree: `{"key": [groups…]}`.
    pub fn to_body(&self) -> Vec<u8> {
        // Serializing plain strings, vectors and maps into a Vec cannot fail.
        serde_json::to_vec(&Root(self)).unwrap_or_default()
    }
}

/// The service named by a trace key.
pub fn service_of(key: &str) -> &str {
    key.split_once(ESCAPE).map_or(key, |(service, _)| service)
}

/// Why a POST body is not a trace for this service.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// Not JSON of the trace shape.
    #[error("POST body is not a trace `{{\"<service>__<id>\": [{{…}}, …]}}`: {0}")]
    Malformed(String),
    /// A well-formed trace addressed to another service.
    #[error("the trace is for service `{found}` but this is `{me}`")]
    WrongService {
        /// Service named by the trace's top key.
        found: String,
        /// This cell's service.
        me: String,
    },
}

/// Parses a POST body into the trace node for service `me`.
pub fn parse(body: &[u8], me: &str) -> Result<TraceNode, TraceError> {
    let Root(node) = serde_json::from_slice::<RootOwned>(body)
        .map(|r| Root(r.0))
        .map_err(|e| TraceError::Malformed(e.to_string()))?;
    check_service(node, me)
}

/// Checks that `node` is addressed to `me`.
pub fn check_service(node: TraceNode, me: &str) -> Result<TraceNode, TraceError> {
    if node.service() == me {
        Ok(node)
    } else {
        Err(TraceError::WrongService {
            found: node.service().to_owned(),
            me: me.to_owned(),
        })
    }
}

struct Root<T>(T);
type RootOwned = Root<TraceNode>;

impl<'de> Deserialize<'de> for Root<TraceNode> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RootVisitor;
        impl<'de> Visitor<'de> for RootVisitor {
            type Value = TraceNode;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object with exactly one key")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TraceNode, A::Error> {
                let Some((key, Groups(groups))) = map.next_entry::<String, Groups>()? else {
                    return Err(de::Error::custom("the trace object is empty"));
                };
                if let Some(extra) = map.next_key::<String>()? {
                    return Err(de::Error::custom(format!(
                        "the trace has more than one top key (`{key}`, `{extra}`)"
                    )));
                }
                Ok(TraceNode { key, groups })
            }
        }
        deserializer.deserialize_map(RootVisitor).map(Root)
    }
}

/// The value of a trace key: a list of groups.
struct Groups(Vec<Vec<TraceNode>>);

impl<'de> Deserialize<'de> for Groups {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GroupsVisitor;
        impl<'de> Visitor<'de> for GroupsVisitor {
            type Value = Groups;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a list of groups (objects of calls)")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Groups, A::Error> {
                let mut groups = Vec::new();
                while let Some(Group(calls)) = seq.next_element::<Group>()? {
                    groups.push(calls);
                }
                Ok(Groups(groups))
            }
        }
        deserializer.deserialize_seq(GroupsVisitor)
    }
}

/// One group: an object whose keys are calls in document order.
struct Group(Vec<TraceNode>);

impl<'de> Deserialize<'de> for Group {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct GroupVisitor;
        impl<'de> Visitor<'de> for GroupVisitor {
            type Value = Group;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a group: an object of `\"<service>__<id>\": [groups…]` calls")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Group, A::Error> {
                let mut calls = Vec::new();
                while let Some((key, Groups(groups))) = map.next_entry::<String, Groups>()? {
                    if service_of(&key).is_empty() {
                        return Err(de::Error::custom(format!("call `{key}` names no service")));
                    }
                    calls.push(TraceNode { key, groups });
                }
                Ok(Group(calls))
            }
        }
        deserializer.deserialize_map(GroupVisitor)
    }
}

impl Serialize for Root<&TraceNode> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(&self.0.key, &GroupsRef(&self.0.groups))?;
        map.end()
    }
}

struct GroupsRef<'a>(&'a [Vec<TraceNode>]);

impl Serialize for GroupsRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.0.len()))?;
        for group in self.0 {
            seq.serialize_element(&GroupRef(group))?;
        }
        seq.end()
    }
}

struct GroupRef<'a>(&'a [TraceNode]);

impl Serialize for GroupRef<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for call in self.0 {
            map.serialize_entry(&call.key, &GroupsRef(&call.groups))?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_groups_and_keeps_document_order() {
        let body = br#"{"s0__a": [{"s2__1": [], "s1__2": [{"s3__x": []}]}, {"s4": []}]}"#;
        let node = parse(body, "s0").unwrap();
        assert_eq!(node.key, "s0__a");
        let first: Vec<&str> = node.groups[0].iter().map(|c| c.key.as_str()).collect();
        assert_eq!(first, ["s2__1", "s1__2"], "document order, not sorted");
        assert_eq!(node.groups[0][1].groups[0][0].service(), "s3");
        assert_eq!(node.groups[1][0].service(), "s4");
        assert_eq!(node.descendants(), 4);
    }

    #[test]
    fn child_body_round_trips_the_subtree() {
        let body = br#"{"s0__a": [{"s1__2": [{"s3__x": [], "s2__y": []}]}]}"#;
        let node = parse(body, "s0").unwrap();
        let child = &node.groups[0][0];
        assert_eq!(
            String::from_utf8(child.to_body()).unwrap(),
            r#"{"s1__2":[{"s3__x":[],"s2__y":[]}]}"#
        );
        assert_eq!(parse(&child.to_body(), "s1").unwrap(), *child);
    }

    #[test]
    fn wrong_service_is_named() {
        let err = parse(br#"{"s1__0": []}"#, "s0").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the trace is for service `s1` but this is `s0`"
        );
    }

    #[test]
    fn malformed_bodies_say_what_is_wrong() {
        for (body, needle) in [
            (&b""[..], "EOF"),
            (b"[]", "an object with exactly one key"),
            (b"{}", "the trace object is empty"),
            (br#"{"s0": [], "s1": []}"#, "more than one top key"),
            (br#"{"s0": {}}"#, "a list of groups"),
            (br#"{"s0": [[]]}"#, "a group"),
            (br#"{"s0": [{"__x": []}]}"#, "names no service"),
            (br#"{"s0": [{"s1": 3}]}"#, "a list of groups"),
        ] {
            let err = parse(body, "s0").unwrap_err().to_string();
            assert!(
                err.contains(needle),
                "{}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        let depth = 10_000;
        let mut body = String::from(r#"{"s0":["#);
        for _ in 0..depth {
            body.push_str(r#"{"s1":["#);
        }
        for _ in 0..depth {
            body.push_str("]}");
        }
        body.push_str("]}");
        let err = parse(body.as_bytes(), "s0").unwrap_err().to_string();
        assert!(err.contains("recursion limit"), "{err}");
    }
}
