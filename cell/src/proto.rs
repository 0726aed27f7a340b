//! The gRPC protocol (`proto/mub.proto`, package `microservice`), generated at build time, and
//! conversions between its trace tree and [`crate::trace::TraceNode`].

#![allow(missing_docs, unreachable_pub, clippy::all, clippy::pedantic)]

tonic::include_proto!("microservice");

impl From<&crate::trace::TraceNode> for TraceNode {
    fn from(node: &crate::trace::TraceNode) -> Self {
        Self {
            key: node.key.clone(),
            groups: node
                .groups
                .iter()
                .map(|calls| TraceGroup {
                    calls: calls.iter().map(Self::from).collect(),
                })
                .collect(),
        }
    }
}

impl From<TraceNode> for crate::trace::TraceNode {
    fn from(node: TraceNode) -> Self {
        Self {
            key: node.key,
            groups: node
                .groups
                .into_iter()
                .map(|group| group.calls.into_iter().map(Self::from).collect())
                .collect(),
        }
    }
}
