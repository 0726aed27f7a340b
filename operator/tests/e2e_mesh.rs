//! End to end with real pods: `cellmesh-local up` (API server, controllers, node agent running
//! cells as processes, ClusterIP proxy, DNS) with the operator deployed as a pod under the
//! chart's RBAC, driven by kubectl as a user would.
//!
//! - The TeaStore-emulation WorkModel from `examples/`: every service becomes Ready, GETs at
//!   the entry service's ClusterIP run the whole call graph (each service's own
//!   `cellmesh_requests_total`, read from its pod's admin port, grows), replicas / resources /
//!   calls changes converge with the pods following, a service removed from the spec loses
//!   its objects, and deleting the WorkModel garbage-collects everything.
//! - The App example `examples/apps/enricher.yaml`: its pods answer a pipeline request
//!   through the App's Service, and a change to its Profile is hot-reloaded by the running
//!   cell (the ConfigMap changes; the pod's uid and restartCount do not).
//!
//! Both tests start a whole cluster and wait for real processes, so each takes tens of
//! seconds (up to ~90 s under CI's parallel load): that is the point of them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use cellmesh_testkit::http_get;
use common::up::{UpCluster, UpOptions};
use common::{condition, eventually, example};
use serde_json::{Value, json};

const NS: &str = "shop";
const MESH: &str = "teastore-emulation";
/// Generous: pods are real processes, and CI runs several such tests on 2 cores.
const WAIT: Duration = Duration::from_secs(180);
/// The cell's admin port (`/metrics`, `/info`), bound on the pod IP.
const ADMIN_PORT: u16 = 8081;

fn start() -> UpCluster {
    let cluster = UpCluster::start(&UpOptions {
        operator: true,
        ..UpOptions::default()
    });
    cluster.kubectl(&["create", "namespace", NS], None);
    cluster
}

fn apply(cluster: &UpCluster, object: &Value) {
    cluster.kubectl(
        &["-n", NS, "apply", "--server-side", "-f", "-"],
        Some(&object.to_string()),
    );
}

/// Replaces the WorkModel's spec with `wm`'s (a PUT at the current resourceVersion, retried
/// on a conflict with the operator's status writes): unlike an apply, a PUT states the whole
/// spec, so a service left out is gone whatever the server's apply merging does.
fn replace(cluster: &UpCluster, wm: &Value) {
    for _ in 0..10 {
        let mut object = wm.clone();
        let live = cluster.get(NS, &format!("workmodel/{MESH}")).unwrap();
        object["metadata"]["resourceVersion"] = live["metadata"]["resourceVersion"].clone();
        let out =
            cluster.kubectl_output(&["-n", NS, "replace", "-f", "-"], Some(&object.to_string()));
        if out.status.success() {
            return;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("Conflict") || stderr.contains("modified"),
            "{stderr}"
        );
    }
    panic!("the WorkModel kept changing under kubectl replace");
}

fn list(cluster: &UpCluster, resource: &str, selector: &str) -> Vec<Value> {
    let text = cluster.kubectl(
        &["-n", NS, "get", resource, "-l", selector, "-o", "json"],
        None,
    );
    let list: Value = serde_json::from_str(&text).unwrap();
    list["items"].as_array().unwrap().clone()
}

fn names(objects: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objects
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    names
}

fn is_true(object: &Value, type_: &str) -> bool {
    condition(object, type_).is_some_and(|c| c["status"] == "True")
}

/// The pods of a selector that are Ready and not being deleted.
fn ready_pods(cluster: &UpCluster, selector: &str) -> Vec<Value> {
    list(cluster, "pods", selector)
        .into_iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null() && is_true(p, "Ready"))
        .collect()
}

fn pod_admin(pod: &Value) -> SocketAddr {
    let ip: IpAddr = pod["status"]["podIP"].as_str().unwrap().parse().unwrap();
    SocketAddr::new(ip, ADMIN_PORT)
}

/// Sum of a counter's samples in a Prometheus text exposition; panics when the counter is
/// absent (a renamed metric must fail the test, not read as zero).
fn counter_sum(exposition: &str, family: &str) -> f64 {
    assert!(
        exposition.contains(&format!("\n{family}")),
        "no {family} in:\n{exposition}"
    );
    exposition
        .lines()
        .filter(|line| {
            line.strip_prefix(family)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The WorkModel once its status describes its current generation and it is Ready.
fn wait_ready(cluster: &UpCluster, services: usize) -> Value {
    let expected = format!("{services}/{services}");
    eventually("the WorkModel Ready at its generation", WAIT, || {
        let wm = cluster.get(NS, &format!("workmodel/{MESH}"))?;
        (is_true(&wm, "Ready")
            && wm["status"]["observedGeneration"] == wm["metadata"]["generation"]
            && wm["status"]["servicesReady"] == expected.as_str())
        .then_some(wm)
    })
}

/// The TeaStore-emulation example as JSON, lightened for CI: µBench's file gives each of the
/// six services 9 workers × 128 threads, i.e. 54 worker processes for one replica each,
/// far more than a shared 2-core CI machine can start promptly next to other tests. One
/// worker with 8 threads per service keeps the call graph (the point here) intact.
fn teastore() -> Value {
    let mut wm: Value =
        serde_yaml::from_str(&example("workmodels/mubench-teastore-emulation.yaml")).unwrap();
    for service in wm["spec"]["services"].as_object_mut().unwrap().values_mut() {
        service["workers"] = json!(1);
        service["threads"] = json!(8);
    }
    wm
}

fn service_selector(service: &str) -> String {
    format!("cellmesh.io/workmodel={MESH},cellmesh.io/service={service}")
}

#[test]
fn the_teastore_mesh_runs_its_call_graph_converges_on_changes_and_is_collected() {
    let cluster = start();
    let mut wm = teastore();
    let services: Vec<String> = wm["spec"]["services"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    assert_eq!(services, ["s0", "s1", "s2", "s3", "s4", "s5"]);
    apply(&cluster, &wm);

    let status = wait_ready(&cluster, services.len());
    for service in &services {
        assert_eq!(
            status["status"]["services"][service]["readyReplicas"], 1,
            "{service}: {status}"
        );
        assert_eq!(ready_pods(&cluster, &service_selector(service)).len(), 1);
    }

    // GETs at the entry service's ClusterIP. Callees are chosen with µBench's probabilities
    // (s5 by about 3% of requests), so keep asking until every service has answered some;
    // each answer must be a 200.
    let cluster_ip: IpAddr = cluster
        .kubectl(
            &[
                "-n",
                NS,
                "get",
                "service",
                "s0",
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
            None,
        )
        .parse()
        .unwrap();
    let entry = SocketAddr::new(cluster_ip, 80);
    let admins: Vec<(String, SocketAddr)> = services
        .iter()
        .map(|s| {
            let pods = ready_pods(&cluster, &service_selector(s));
            (s.clone(), pod_admin(&pods[0]))
        })
        .collect();
    let mut sent = 0;
    eventually("every service to count requests", WAIT, || {
        for _ in 0..20 {
            let answer = http_get(entry, "/api/v1");
            assert!(answer.is_some(), "no answer from s0 at {entry}");
            sent += 1;
        }
        let idle: Vec<&str> = admins
            .iter()
            .filter(|(_, admin)| {
                let metrics = http_get(*admin, "/metrics").unwrap_or_default();
                !metrics.contains("\ncellmesh_requests_total")
                    || counter_sum(&metrics, "cellmesh_requests_total") < 1.0
            })
            .map(|(s, _)| s.as_str())
            .collect();
        idle.is_empty().then_some(())
    });
    // The entry counted every request it answered, all of them 200s.
    let s0_metrics = http_get(admins[0].1, "/metrics").unwrap();
    let ok = s0_metrics
        .lines()
        .filter(|l| l.starts_with("cellmesh_requests_total{") && l.contains("code=\"200\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>();
    assert_eq!(
        ok, sent as f64,
        "s0 answered {sent} GETs; its counters: {s0_metrics}"
    );

    // Replicas, resources and calls change together; the pods follow.
    let spec = &mut wm["spec"]["services"];
    spec["s1"]["replicas"] = json!(2);
    spec["s2"]["resources"] = json!({
        "requests": {"cpu": "50m", "memory": "32Mi"},
        "limits": {"cpu": "300m", "memory": "96Mi"},
    });
    // s4 now always calls s5 (it called nothing before).
    spec["s4"]["externalServices"] =
        json!([{"seqLen": 1, "services": ["s5"], "probabilities": {"s5": 1.0}}]);
    replace(&cluster, &wm);
    wait_ready(&cluster, services.len());
    eventually("s1 at two ready pods", WAIT, || {
        (ready_pods(&cluster, &service_selector("s1")).len() == 2).then_some(())
    });
    eventually("s2's pod at its new resources", WAIT, || {
        let pods = ready_pods(&cluster, &service_selector("s2"));
        let all_pods = list(&cluster, "pods", &service_selector("s2"));
        (pods.len() == 1
            && all_pods.len() == 1
            && pods[0]["spec"]["containers"][0]["resources"]["limits"]
                == json!({"cpu": "300m", "memory": "96Mi"}))
        .then_some(())
    });
    let s4 = cluster.get(NS, "deployment/s4").unwrap();
    let s4_hash = s4["spec"]["template"]["metadata"]["annotations"]["cellmesh.io/spec-hash"]
        .as_str()
        .unwrap()
        .to_owned();
    eventually("s4's pods rolled to its new calls", WAIT, || {
        let all_pods = list(&cluster, "pods", &service_selector("s4"));
        let ready = ready_pods(&cluster, &service_selector("s4"));
        (all_pods.len() == 1
            && ready.len() == 1
            && ready[0]["metadata"]["annotations"]["cellmesh.io/spec-hash"] == s4_hash.as_str())
        .then_some(())
    });
    let config: Value = serde_json::from_str(
        cluster
            .get(NS, &format!("configmap/{MESH}-workmodel"))
            .unwrap()["data"]["workmodel.json"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        config["s4"]["externalServices"][0]["services"],
        json!(["s5"]),
        "{config}"
    );

    // s5 leaves the spec (and every caller's list): its Deployment, Service and pods go.
    let spec = wm["spec"]["services"].as_object_mut().unwrap();
    spec.remove("s5");
    for service in spec.values_mut() {
        for group in service["externalServices"].as_array_mut().unwrap() {
            group["services"]
                .as_array_mut()
                .unwrap()
                .retain(|s| s != "s5");
            if let Some(p) = group["probabilities"].as_object_mut() {
                p.remove("s5");
            }
        }
    }
    replace(&cluster, &wm);
    wait_ready(&cluster, services.len() - 1);
    eventually("s5's objects deleted", WAIT, || {
        let selector = service_selector("s5");
        (cluster.get(NS, "deployment/s5").is_none()
            && cluster.get(NS, "service/s5").is_none()
            && list(&cluster, "pods", &selector).is_empty())
        .then_some(())
    });
    let selector = format!("cellmesh.io/workmodel={MESH}");
    assert_eq!(
        names(&list(&cluster, "deployments", &selector)),
        ["s0", "s1", "s2", "s3", "s4"]
    );

    // Deleting the WorkModel garbage-collects everything it owned, down to the pods.
    cluster.kubectl(
        &["-n", NS, "delete", "workmodel", MESH, "--wait=false"],
        None,
    );
    eventually("the mesh garbage-collected", WAIT, || {
        let left: Vec<String> = [
            "deployments",
            "replicasets",
            "pods",
            "services",
            "configmaps",
        ]
        .iter()
        .flat_map(|r| {
            names(&list(&cluster, r, &selector))
                .into_iter()
                .map(move |n| format!("{r}/{n}"))
        })
        .collect();
        left.is_empty().then_some(())
    });
}

#[test]
fn an_app_answers_its_pipeline_and_hot_reloads_its_profile() {
    let cluster = start();
    let mut profile: Value = serde_yaml::from_str(&example("profiles/fast.yaml")).unwrap();
    apply(&cluster, &profile);
    let app: Value = serde_yaml::from_str(&example("apps/enricher.yaml")).unwrap();
    let name = app["metadata"]["name"].as_str().unwrap().to_owned();
    apply(&cluster, &app);
    let selector = format!("cellmesh.io/app={name}");

    eventually("the App Ready", WAIT, || {
        let app = cluster.get(NS, &format!("app/{name}"))?;
        (is_true(&app, "Ready")
            && app["status"]["observedGeneration"] == app["metadata"]["generation"])
            .then_some(())
    });
    let pods = ready_pods(&cluster, &selector);
    assert_eq!(pods.len(), 1, "{pods:?}");
    let pod = &pods[0];
    let args = pod["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("--app="), "{args}");

    // A pipeline request through the App's Service.
    let cluster_ip: IpAddr = cluster
        .kubectl(
            &[
                "-n",
                NS,
                "get",
                "service",
                &name,
                "-o",
                "jsonpath={.spec.clusterIP}",
            ],
            None,
        )
        .parse()
        .unwrap();
    let answer = eventually("a pipeline answer", WAIT, || {
        http_post(SocketAddr::new(cluster_ip, 80), "/", r#"{"order": 42}"#)
    });
    assert_eq!(answer.0, 200, "{answer:?}");
    assert!(
        answer.1.contains("42"),
        "the echo stage passes the request on: {answer:?}"
    );

    // The Profile changes: the ConfigMap follows and the running cell reloads it.
    let admin = pod_admin(pod);
    let uid = pod["metadata"]["uid"].clone();
    let restarts = pod["status"]["containerStatuses"][0]["restartCount"].clone();
    let reloads_before = counter_sum(
        &http_get(admin, "/metrics").unwrap(),
        "cellmesh_engine_profile_reloads_total",
    );
    let queue_limit = profile["spec"]["queueLimit"].as_u64().unwrap_or(64) + 7;
    profile["spec"]["queueLimit"] = json!(queue_limit);
    apply(&cluster, &profile);
    let config_map = format!("configmap/{name}-app");
    eventually("the ConfigMap to carry the new Profile", WAIT, || {
        let cm = cluster.get(NS, &config_map)?;
        let data = cm["data"].as_object()?;
        data.iter()
            .any(|(k, v)| {
                k.starts_with("profile-")
                    && v.as_str()
                        .is_some_and(|v| v.contains(&format!("queueLimit: {queue_limit}")))
            })
            .then_some(())
    });
    eventually("the cell to reload its profile", WAIT, || {
        let info: Value = serde_json::from_str(&http_get(admin, "/info")?).ok()?;
        (info["engine"]["profile"]["queueLimit"] == queue_limit).then_some(())
    });
    let reloads_after = counter_sum(
        &http_get(admin, "/metrics").unwrap(),
        "cellmesh_engine_profile_reloads_total",
    );
    assert!(
        reloads_after > reloads_before,
        "{reloads_before} → {reloads_after}"
    );
    let pods = list(&cluster, "pods", &selector);
    assert_eq!(pods.len(), 1, "no new pod: {pods:?}");
    assert_eq!(pods[0]["metadata"]["uid"], uid);
    assert_eq!(
        pods[0]["status"]["containerStatuses"][0]["restartCount"],
        restarts
    );
    // And it still answers.
    let answer = http_post(SocketAddr::new(cluster_ip, 80), "/", r#"{"order": 43}"#).unwrap();
    assert_eq!(answer.0, 200, "{answer:?}");
}

/// A JSON POST over HTTP/1.0: status code and body, or `None` when nothing answered.
fn http_post(addr: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let code = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, body.to_owned()))
}
