//! Cluster networking against the real `cellmesh-local apiserver --network`: ClusterIP
//! allocation (driven by kubectl), the ClusterIP proxy forwarding to ready endpoints of
//! EndpointSlices, and the DNS server answering Service names (queried over UDP and TCP
//! with hickory-proto messages). Loopback only; every test picks its own addresses.

// Test helpers: a panic is a test failure with its message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use common::{Server, eventually};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};

/// A random 127.x.y.0 base (x in 128..=191, away from the server's and the defaults').
fn random_net() -> [u8; 3] {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ (std::process::id() << 12);
    let [a, b, ..] = seed.wrapping_mul(2_654_435_761).to_le_bytes();
    [127, 128 + (a % 64), b]
}

/// A server with the network component on: services from `<net>.0/24`, DNS on `<net>.253`.
fn start_network() -> (Server, [u8; 3], SocketAddr) {
    let net = random_net();
    let cidr = format!("{}.{}.{}.0/24", net[0], net[1], net[2]);
    let dns = SocketAddr::from(([net[0], net[1], net[2], 253], 10053));
    let sd = SocketAddr::from(([net[0], net[1], net[2], 253], 10080));
    let server = Server::start_with(&[
        "--service-cidr",
        &cidr,
        "--network",
        "--dns-addr",
        &dns.to_string(),
        "--prometheus-sd-addr",
        &sd.to_string(),
    ]);
    (server, net, dns)
}

fn cluster_ip(server: &Server, ns: &str, name: &str) -> String {
    server.kubectl(&[
        "get",
        "service",
        name,
        "-n",
        ns,
        "-o",
        "jsonpath={.spec.clusterIP}",
    ])
}

#[test]
fn cluster_ips_are_allocated_checked_and_survive_a_restart() {
    let net = random_net();
    let cidr = format!("{}.{}.{}.0/24", net[0], net[1], net[2]);
    let mut server = Server::start_with(&["--service-cidr", &cidr]);
    let prefix = format!("{}.{}.{}.", net[0], net[1], net[2]);

    server.kubectl(&["create", "service", "clusterip", "web", "--tcp=80:8080"]);
    let web = cluster_ip(&server, "default", "web");
    assert!(web.starts_with(&prefix), "{web} not from {cidr}");
    let yaml = server.kubectl(&["get", "service", "web", "-o", "json"]);
    let svc: serde_json::Value = serde_json::from_str(&yaml).unwrap();
    assert_eq!(svc["spec"]["clusterIPs"], serde_json::json!([web]));
    assert_eq!(svc["spec"]["ipFamilies"], serde_json::json!(["IPv4"]));
    assert_eq!(svc["spec"]["ipFamilyPolicy"], "SingleStack");
    assert_eq!(svc["spec"]["type"], "ClusterIP");
    assert_eq!(svc["spec"]["sessionAffinity"], "None");
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], 8080);
    assert_eq!(svc["spec"]["ports"][0]["protocol"], "TCP");

    // A requested address must be in range and free.
    let outside = server.kubectl_fails(
        &[
            "create",
            "service",
            "clusterip",
            "far",
            "--tcp=80",
            "--clusterip=10.0.0.1",
        ],
        None,
    );
    assert!(
        outside.contains(&format!(
            r#"Service "far" is invalid: spec.clusterIPs: Invalid value: []string{{"10.0.0.1"}}: failed to allocate IP 10.0.0.1: the provided IP (10.0.0.1) is not in the valid range. The range of valid IPs is {cidr}"#
        )),
        "{outside}"
    );
    let taken = server.kubectl_fails(
        &[
            "create",
            "service",
            "clusterip",
            "twin",
            "--tcp=80",
            &format!("--clusterip={web}"),
        ],
        None,
    );
    assert!(
        taken.contains(&format!(
            "failed to allocate IP {web}: provided IP is already allocated"
        )),
        "{taken}"
    );
    // A free one in range is granted; headless stays headless.
    let wanted = if web.ends_with(".77") {
        format!("{prefix}78")
    } else {
        format!("{prefix}77")
    };
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "pinned",
        "--tcp=80",
        &format!("--clusterip={wanted}"),
    ]);
    assert_eq!(cluster_ip(&server, "default", "pinned"), wanted);
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "headless",
        "--tcp=80",
        "--clusterip=None",
    ]);
    assert_eq!(cluster_ip(&server, "default", "headless"), "None");

    // Updates keep the address; changing it is refused.
    server.kubectl(&["label", "service", "web", "tier=front"]);
    assert_eq!(cluster_ip(&server, "default", "web"), web);
    let changed = server.kubectl_fails(
        &[
            "patch",
            "service",
            "web",
            "--type=merge",
            "-p",
            &format!(r#"{{"spec":{{"clusterIP":"{prefix}99","clusterIPs":["{prefix}99"]}}}}"#),
        ],
        None,
    );
    assert!(changed.contains("may not change once set"), "{changed}");

    // After a restart the stored Services are the allocation table.
    server.restart(&["--service-cidr", &cidr]);
    assert_eq!(cluster_ip(&server, "default", "web"), web);
    let again = server.kubectl_fails(
        &[
            "create",
            "service",
            "clusterip",
            "twin",
            "--tcp=80",
            &format!("--clusterip={wanted}"),
        ],
        None,
    );
    assert!(
        again.contains("provided IP is already allocated"),
        "{again}"
    );
    server.kubectl(&["create", "service", "clusterip", "other", "--tcp=80"]);
    let other = cluster_ip(&server, "default", "other");
    assert!(other.starts_with(&prefix));
    assert!(other != web && other != wanted, "{other} reused");

    // Deleting a Service frees its address.
    server.kubectl(&["delete", "service", "pinned"]);
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "twin",
        "--tcp=80",
        &format!("--clusterip={wanted}"),
    ]);
}

/// Connects to `addr`, sends `ping`, returns the reply (None when refused or closed).
fn ask(addr: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"ping").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    (!reply.is_empty()).then_some(reply)
}

fn endpoint_slice(name: &str, service: &str, port: u16, endpoints: &[(IpAddr, bool)]) -> String {
    let endpoints: Vec<String> = endpoints
        .iter()
        .map(|(ip, ready)| {
            format!(r#"{{"addresses": ["{ip}"], "conditions": {{"ready": {ready}}}}}"#)
        })
        .collect();
    format!(
        r#"{{"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {{"name": "{name}", "labels": {{"kubernetes.io/service-name": "{service}"}}}},
            "addressType": "IPv4",
            "ports": [{{"name": "http", "port": {port}, "protocol": "TCP"}}],
            "endpoints": [{}]}}"#,
        endpoints.join(", ")
    )
}

#[test]
fn the_proxy_forwards_to_ready_endpoints_round_robin() {
    let (server, net, _dns) = start_network();
    // Two live backends on one address (so one EndpointSlice port fits both), plus a
    // ready endpoint that refuses and a not-ready one that would answer.
    let backend_ip = Ipv4Addr::new(net[0], net[1], net[2], 250);
    let a = backend(SocketAddr::from((backend_ip, 0)), "a");
    let port = a.port();
    let b_ip = Ipv4Addr::new(net[0], net[1], net[2], 251);
    let b = backend(SocketAddr::from((b_ip, port)), "b");
    let refusing = IpAddr::from([net[0], net[1], net[2], 249]);
    let not_ready_ip = Ipv4Addr::new(net[0], net[1], net[2], 248);
    let _not_ready = backend(SocketAddr::from((not_ready_ip, port)), "not-ready");

    server.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(
            r#"{"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}"#,
        ),
    );
    server.kubectl_stdin(
        &["apply", "-f", "-"],
        Some(&endpoint_slice(
            "web-1",
            "web",
            port,
            &[
                (a.ip(), true),
                (b.ip(), true),
                (refusing, true),
                (IpAddr::V4(not_ready_ip), false),
            ],
        )),
    );
    let ip = cluster_ip(&server, "default", "web");
    let front = format!("{ip}:80");
    let first = eventually(
        "the proxy to answer on the ClusterIP",
        Duration::from_secs(20),
        || ask(&front),
    );
    let mut seen = HashSet::from([first]);
    for _ in 0..8 {
        seen.insert(ask(&front).expect("every connection reaches a live endpoint"));
    }
    assert_eq!(
        seen,
        HashSet::from(["a:ping".to_owned(), "b:ping".to_owned()]),
        "round robin over the ready, reachable endpoints only"
    );

    // Removing the Service removes its listener.
    server.kubectl(&["delete", "service", "web"]);
    eventually("the listener to go", Duration::from_secs(20), || {
        TcpStream::connect(&front).is_err().then_some(())
    });
}

/// A TCP server on `addr` answering every connection with `<name>:<what it read>`.
fn backend(addr: SocketAddr, name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().map_while(Result::ok) {
            let mut buf = [0u8; 16];
            let n = stream.read(&mut buf).unwrap_or(0);
            let _ = stream
                .write_all(format!("{name}:{}", String::from_utf8_lossy(&buf[..n])).as_bytes());
        }
    });
    addr
}

fn dns_query(dns: SocketAddr, name: &str, kind: RecordType, tcp: bool) -> Option<Message> {
    let mut request = Message::query();
    request.metadata.recursion_desired = true;
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), kind));
    let bytes = request.to_vec().unwrap();
    let reply = if tcp {
        let mut stream = TcpStream::connect(dns).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
        stream.write_all(&len).ok()?;
        stream.write_all(&bytes).ok()?;
        let mut len = [0u8; 2];
        stream.read_exact(&mut len).ok()?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream.read_exact(&mut reply).ok()?;
        reply
    } else {
        let socket = UdpSocket::bind("127.0.0.1:0").ok()?;
        socket.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        socket.send_to(&bytes, dns).ok()?;
        let mut buf = [0u8; 4096];
        let (n, _) = socket.recv_from(&mut buf).ok()?;
        buf[..n].to_vec()
    };
    let reply = Message::from_vec(&reply).ok()?;
    assert_eq!(reply.metadata.id, request.metadata.id);
    Some(reply)
}

fn a_records(reply: &Message) -> Vec<String> {
    let mut ips: Vec<String> = reply
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect();
    ips.sort();
    ips
}

#[test]
fn dns_answers_service_names_over_udp_and_tcp() {
    let (server, net, dns) = start_network();
    server.kubectl(&["create", "namespace", "shop"]);
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "shop",
        "--tcp=80",
    ]);
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "db",
        "-n",
        "shop",
        "--tcp=5432",
        "--clusterip=None",
    ]);
    let pod_a = IpAddr::from([net[0], net[1], net[2], 240]);
    let pod_b = IpAddr::from([net[0], net[1], net[2], 241]);
    let pod_down = IpAddr::from([net[0], net[1], net[2], 242]);
    server.kubectl_stdin(
        &["apply", "-n", "shop", "-f", "-"],
        Some(&endpoint_slice(
            "db-1",
            "db",
            5432,
            &[(pod_a, true), (pod_b, true), (pod_down, false)],
        )),
    );
    let web = cluster_ip(&server, "shop", "web");

    let reply = eventually("DNS to answer for web", Duration::from_secs(20), || {
        dns_query(dns, "web.shop.svc.cluster.local.", RecordType::A, false)
            .filter(|r| !r.answers.is_empty())
    });
    assert_eq!(a_records(&reply), std::slice::from_ref(&web));
    assert!(reply.metadata.authoritative);
    for (name, tcp) in [
        ("web.shop.svc.", false),
        ("web.shop.", true),
        ("WEB.shop.svc.cluster.local.", true),
    ] {
        let reply = dns_query(dns, name, RecordType::A, tcp).unwrap();
        assert_eq!(
            a_records(&reply),
            std::slice::from_ref(&web),
            "{name} over tcp={tcp}"
        );
    }
    let headless = eventually("headless endpoints in DNS", Duration::from_secs(20), || {
        dns_query(dns, "db.shop.svc.cluster.local.", RecordType::A, false)
            .filter(|r| r.answers.len() == 2)
    });
    assert_eq!(a_records(&headless), [pod_a.to_string(), pod_b.to_string()]);

    let aaaa = dns_query(dns, "web.shop.svc.cluster.local.", RecordType::AAAA, false).unwrap();
    assert_eq!(aaaa.metadata.response_code, ResponseCode::NoError);
    assert!(aaaa.answers.is_empty());
    let missing = dns_query(dns, "nope.shop.svc.cluster.local.", RecordType::A, true).unwrap();
    assert_eq!(missing.metadata.response_code, ResponseCode::NXDomain);
    let foreign = dns_query(dns, "example.com.", RecordType::A, false).unwrap();
    assert_eq!(foreign.metadata.response_code, ResponseCode::Refused);

    // A new Service is answered once the watch delivers it.
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "late",
        "-n",
        "shop",
        "--tcp=81",
    ]);
    let late = cluster_ip(&server, "shop", "late");
    let reply = eventually(
        "DNS to learn the new Service",
        Duration::from_secs(20),
        || {
            dns_query(dns, "late.shop.svc.cluster.local.", RecordType::A, false)
                .filter(|r| r.metadata.response_code == ResponseCode::NoError)
        },
    );
    assert_eq!(a_records(&reply), [late]);
}

/// What a pod sees: glibc's resolver (`getent`) with the resolv.conf the node writes,
/// bind-mounted over /etc/resolv.conf in a private mount namespace. Needs root (mount
/// namespaces, DNS on port 53); skipped with the reason otherwise.
#[test]
fn glibc_resolves_short_names_through_the_pod_search_path() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED: needs root (a mount namespace and DNS on port 53)");
        return;
    }
    let net = random_net();
    let dns_ip = Ipv4Addr::new(net[0], net[1], net[2], 252);
    let server = Server::start_with(&[
        "--service-cidr",
        &format!("{}.{}.{}.0/25", net[0], net[1], net[2]),
        "--network",
        "--dns-addr",
        &format!("{dns_ip}:53"),
        "--prometheus-sd-addr",
        &format!("{dns_ip}:10080"),
    ]);
    server.kubectl(&["create", "namespace", "shop"]);
    server.kubectl(&[
        "create",
        "service",
        "clusterip",
        "web",
        "-n",
        "shop",
        "--tcp=80",
    ]);
    let web = cluster_ip(&server, "shop", "web");
    let resolv = server.state.path().join("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "nameserver {dns_ip}\nsearch shop.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n"
        ),
    )
    .unwrap();
    let lookup = |name: &str| -> Option<String> {
        let out = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "mount --bind {} /etc/resolv.conf && getent ahostsv4 {name}",
                resolv.display()
            ))
            .output()
            .ok()?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        out.status.success().then_some(text)
    };
    eventually("glibc to resolve web", Duration::from_secs(20), || {
        lookup("web").filter(|t| t.contains(&web))
    });
    for name in ["web.shop", "web.shop.svc", "web.shop.svc.cluster.local"] {
        let answer = lookup(name).unwrap_or_default();
        assert!(answer.contains(&web), "{name}: {answer:?}");
    }
    assert!(lookup("nope").is_none(), "an unknown short name resolved");
}
