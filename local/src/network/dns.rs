//! The cluster DNS server (CoreDNS' `kubernetes` plugin, the part pods rely on).
//!
//! Contract (UDP and TCP on one address; messages encoded with `hickory-proto`):
//! - `<svc>.<ns>.svc.cluster.local`, `<svc>.<ns>.svc` and `<svc>.<ns>` answer A records:
//!   the Service's ClusterIP, or for a headless Service (`clusterIP: None`) the addresses
//!   of its ready endpoints. Short names (`<svc>`) resolve through the search path the node
//!   writes into each pod's resolv.conf (`<ns>.svc.cluster.local svc.cluster.local
//!   cluster.local`): the resolver expands them, this server sees full names.
//! - A known name asked for another type (AAAA, SRV, …) gets an empty NOERROR answer
//!   (NODATA), so resolvers asking A and AAAA together still succeed. ExternalName
//!   Services are not resolved (no CNAME yet): NODATA.
//! - Other names under `cluster.local` get NXDOMAIN (we are authoritative there); any other
//!   name gets REFUSED: there is no upstream forwarding (pods that need the internet use
//!   the host's resolver; cellmesh workloads only talk to Services).
//! - Answers carry TTL [`TTL`] seconds, like CoreDNS' default for Services.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context as _;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use super::{CLUSTER_DOMAIN, Cluster};

/// Seconds resolvers may cache an answer.
pub const TTL: u32 = 5;

/// The largest UDP answer without EDNS (RFC 1035).
const UDP_MAX_PLAIN: usize = 512;

/// What a name resolves to.
#[derive(Debug, PartialEq)]
pub enum Resolution {
    /// A known name: its IPv4 addresses (possibly none: NODATA).
    Addresses(Vec<Ipv4Addr>),
    /// A name under the cluster domain that does not exist.
    NxDomain,
    /// Not ours to answer.
    Refused,
}

/// Looks up Services by namespace and name.
pub trait Names {
    /// The addresses of a Service (ClusterIP, or ready endpoints when headless); `None`
    /// when there is no such Service.
    fn service_addresses(&self, namespace: &str, name: &str) -> Option<Vec<IpAddr>>;
}

impl Names for Cluster {
    fn service_addresses(&self, namespace: &str, name: &str) -> Option<Vec<IpAddr>> {
        let svc = self.service(namespace, name)?;
        let spec = svc.spec.as_ref()?;
        if spec.type_.as_deref() == Some("ExternalName") {
            return Some(Vec::new());
        }
        match spec.cluster_ip.as_deref() {
            Some("None") => Some(self.ready_addresses(namespace, name)),
            Some(ip) => Some(ip.parse().ok().into_iter().collect()),
            None => Some(Vec::new()),
        }
    }
}

/// Resolves `name` (any case, with or without the trailing dot).
pub fn resolve(names: &impl Names, name: &str) -> Resolution {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let domain_suffix = format!(".{CLUSTER_DOMAIN}");
    let (within_domain, local) = match name.strip_suffix(&domain_suffix) {
        Some(local) => (true, local),
        None if name == CLUSTER_DOMAIN => return Resolution::NxDomain,
        None => (false, name.as_str()),
    };
    let labels: Vec<&str> = local.split('.').collect();
    let service = match labels.as_slice() {
        [svc, ns, "svc"] => Some((*svc, *ns)),
        [svc, ns] if !within_domain => Some((*svc, *ns)),
        _ => None,
    };
    let found = service.and_then(|(svc, ns)| names.service_addresses(ns, svc));
    match found {
        Some(addresses) => Resolution::Addresses(
            addresses
                .into_iter()
                .filter_map(|ip| match ip {
                    IpAddr::V4(v4) => Some(v4),
                    IpAddr::V6(_) => None,
                })
                .collect(),
        ),
        None if within_domain || labels.last() == Some(&"svc") => Resolution::NxDomain,
        None => Resolution::Refused,
    }
}

/// The answer to one query message.
pub fn answer(names: &impl Names, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_queries(request.queries.iter().cloned());
    if request.edns.is_some() {
        response.edns = Some(Edns::new());
    }
    let query = match (request.metadata.op_code, request.queries.as_slice()) {
        (OpCode::Query, [query]) => query,
        (OpCode::Query, _) => {
            response.metadata.response_code = ResponseCode::FormErr;
            return response;
        }
        _ => {
            response.metadata.response_code = ResponseCode::NotImp;
            return response;
        }
    };
    match resolve(names, &query.name().to_ascii()) {
        Resolution::Addresses(addresses) => {
            response.metadata.authoritative = true;
            if matches!(query.query_type(), RecordType::A | RecordType::ANY) {
                for ip in addresses {
                    response.add_answer(Record::from_rdata(
                        query.name().clone(),
                        TTL,
                        RData::A(A(ip)),
                    ));
                }
            }
        }
        Resolution::NxDomain => {
            response.metadata.authoritative = true;
            response.metadata.response_code = ResponseCode::NXDomain;
        }
        Resolution::Refused => response.metadata.response_code = ResponseCode::Refused,
    }
    response
}

/// Decodes a request and encodes its answer; `None` for garbage (dropped, as servers do).
fn handle(names: &impl Names, bytes: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = match Message::from_vec(bytes) {
        Ok(message) if message.metadata.message_type == MessageType::Query => message,
        Ok(_) => return None,
        Err(err) => {
            tracing::debug!("dns: undecodable message: {err}");
            return None;
        }
    };
    let response = answer(names, &request);
    let encoded = response.to_vec().ok()?;
    let limit = request.edns.as_ref().map_or(UDP_MAX_PLAIN, |e| {
        usize::from(e.max_payload()).max(UDP_MAX_PLAIN)
    });
    if udp && encoded.len() > limit {
        return response.truncate().to_vec().ok();
    }
    Some(encoded)
}

/// The bound sockets of the DNS server.
pub struct Server {
    udp: UdpSocket,
    tcp: TcpListener,
}

impl Server {
    /// Binds UDP and TCP on `addr` (port 53 needs root or CAP_NET_BIND_SERVICE).
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<Self> {
        let udp = UdpSocket::bind(addr).await.with_context(|| {
            format!("the DNS server cannot listen on udp {addr} (use --dns-addr)")
        })?;
        let tcp = TcpListener::bind(addr).await.with_context(|| {
            format!("the DNS server cannot listen on tcp {addr} (use --dns-addr)")
        })?;
        Ok(Self { udp, tcp })
    }

    /// Answers queries until `shutdown`.
    pub async fn serve(
        self,
        names: impl Names + Clone + Send + Sync + 'static,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let names = Arc::new(names);
        let tcp = tokio::spawn(serve_tcp(self.tcp, Arc::clone(&names), shutdown.clone()));
        let mut buf = vec![0u8; 4096];
        loop {
            let (len, peer) = tokio::select! {
                received = self.udp.recv_from(&mut buf) => match received {
                    Ok(pair) => pair,
                    Err(err) => {
                        // ICMP errors from earlier replies surface here on Linux; keep going.
                        tracing::debug!("dns: udp receive failed: {err}");
                        continue;
                    }
                },
                () = shutdown.cancelled() => break,
            };
            if let Some(reply) = handle(names.as_ref(), &buf[..len], true)
                && let Err(err) = self.udp.send_to(&reply, peer).await
            {
                tracing::debug!(%peer, "dns: udp reply failed: {err}");
            }
        }
        tcp.abort();
        Ok(())
    }
}

async fn serve_tcp<N: Names + Send + Sync + 'static>(
    listener: TcpListener,
    names: Arc<N>,
    shutdown: CancellationToken,
) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::debug!("dns: tcp accept failed: {err}");
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let names = Arc::clone(&names);
        tokio::spawn(async move {
            let _ = serve_tcp_connection(stream, names.as_ref()).await;
        });
    }
}

/// DNS over TCP: each message is preceded by its 2-byte length (RFC 1035 4.2.2).
async fn serve_tcp_connection(mut stream: TcpStream, names: &impl Names) -> std::io::Result<()> {
    loop {
        let len = match stream.read_u16().await {
            Ok(len) => usize::from(len),
            Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(err) => return Err(err),
        };
        let mut message = vec![0u8; len];
        stream.read_exact(&mut message).await?;
        let Some(reply) = handle(names, &message, false) else {
            return Ok(());
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        stream.write_u16(reply_len).await?;
        stream.write_all(&reply).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;
    use std::collections::HashMap;

    #[derive(Clone, Default)]
    struct Fixed(HashMap<(String, String), Vec<IpAddr>>);

    impl Names for Fixed {
        fn service_addresses(&self, namespace: &str, name: &str) -> Option<Vec<IpAddr>> {
            self.0.get(&(namespace.into(), name.into())).cloned()
        }
    }

    fn names() -> Fixed {
        let mut map = HashMap::new();
        map.insert(
            ("shop".into(), "web".into()),
            vec!["127.96.0.7".parse().unwrap()],
        );
        map.insert(
            ("shop".into(), "db".into()),
            vec!["127.64.0.2".parse().unwrap(), "127.64.0.3".parse().unwrap()],
        );
        map.insert(("shop".into(), "empty".into()), vec![]);
        Fixed(map)
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn service_names_in_every_form() {
        let n = names();
        let web = Resolution::Addresses(vec![ip("127.96.0.7")]);
        assert_eq!(resolve(&n, "web.shop.svc.cluster.local."), web);
        assert_eq!(resolve(&n, "WEB.Shop.svc.cluster.local"), web);
        assert_eq!(resolve(&n, "web.shop.svc"), web);
        assert_eq!(resolve(&n, "web.shop"), web);
        assert_eq!(
            resolve(&n, "db.shop.svc.cluster.local"),
            Resolution::Addresses(vec![ip("127.64.0.2"), ip("127.64.0.3")])
        );
        assert_eq!(
            resolve(&n, "empty.shop.svc.cluster.local"),
            Resolution::Addresses(vec![])
        );
    }

    #[test]
    fn unknown_names_inside_and_outside_the_domain() {
        let n = names();
        assert_eq!(
            resolve(&n, "nope.shop.svc.cluster.local"),
            Resolution::NxDomain
        );
        // What a resolver tries when expanding `web` with the wrong search entry.
        assert_eq!(resolve(&n, "web.svc.cluster.local"), Resolution::NxDomain);
        assert_eq!(resolve(&n, "web.cluster.local"), Resolution::NxDomain);
        assert_eq!(resolve(&n, "cluster.local"), Resolution::NxDomain);
        assert_eq!(resolve(&n, "nope.shop.svc"), Resolution::NxDomain);
        assert_eq!(resolve(&n, "example.com"), Resolution::Refused);
        assert_eq!(resolve(&n, "www.example.com"), Resolution::Refused);
    }

    fn query(name: &str, kind: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
        m
    }

    #[test]
    fn messages_round_trip_with_the_right_codes() {
        let n = names();
        let request = query("web.shop.svc.cluster.local.", RecordType::A);
        let bytes = handle(&n, &request.to_vec().unwrap(), true).unwrap();
        let reply = Message::from_vec(&bytes).unwrap();
        assert_eq!(reply.metadata.id, request.metadata.id);
        assert_eq!(reply.metadata.message_type, MessageType::Response);
        assert!(reply.metadata.authoritative);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.queries, request.queries);
        let answers: Vec<_> = reply.answers.iter().map(|r| r.data.clone()).collect();
        assert_eq!(answers, vec![RData::A(A(ip("127.96.0.7")))]);
        assert_eq!(reply.answers[0].ttl, TTL);

        let aaaa = answer(&n, &query("web.shop.svc.cluster.local.", RecordType::AAAA));
        assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
        assert!(aaaa.answers.is_empty());

        let missing = answer(&n, &query("nope.shop.svc.cluster.local.", RecordType::A));
        assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
        let foreign = answer(&n, &query("example.com.", RecordType::A));
        assert_eq!(foreign.metadata.response_code, ResponseCode::Refused);
        assert!(handle(&n, b"\x01\x02garbage", true).is_none());
    }
}
