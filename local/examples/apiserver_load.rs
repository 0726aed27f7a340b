//! Load driver of `cargo xtask bench apiserver`: real kube-rs clients against a running
//! `cellmesh-local apiserver` (given by its kubeconfig). Prints one JSON object with the
//! figures on stdout; progress goes to stderr.
//!
//! 1. **Writes**: `--objects` ConfigMaps created in namespace `bench` by `--writers`
//!    concurrent clients (each its own `kube::Client`, so its own connection). Every create
//!    is acknowledged only after the server's durable commit.
//! 2. **Watch delivery**: `--watchers` watches on namespace `bench-watch` (established
//!    before any write), then `--watch-events` ConfigMaps created there by the writers.
//!    Each ConfigMap carries the time its create request was sent; a watcher's latency
//!    sample is the time from that send to receiving the ADDED event, so it includes the
//!    durable commit — an upper bound on delivery latency.
//! 3. **List**: the `bench` namespace listed whole (one request) and in pages of 500
//!    (as kubectl does), best and median of `--list-repetitions`.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use clap::Parser;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;

#[derive(Parser)]
#[command(about = "Load driver of `cargo xtask bench apiserver` (kube-rs clients)")]
struct Args {
    /// The admin kubeconfig the server wrote.
    #[arg(long)]
    kubeconfig: PathBuf,
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    #[arg(long, default_value_t = 16)]
    writers: usize,
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    #[arg(long, default_value_t = 1_000)]
    watch_events: usize,
    #[arg(long, default_value_t = 5)]
    list_repetitions: usize,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let mut writers = Vec::new();
    for _ in 0..args.writers {
        writers.push(cellmesh_local::client::from_kubeconfig(&args.kubeconfig).await?);
    }
    let admin = writers
        .first()
        .context("--writers must be at least 1")?
        .clone();
    for ns in ["bench", "bench-watch"] {
        let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}}))?;
        match Api::<Namespace>::all(admin.clone())
            .create(&PostParams::default(), &namespace)
            .await
        {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e).context("creating the bench namespaces"),
        }
    }

    eprintln!(
        "writes: {} ConfigMaps by {} clients …",
        args.objects, args.writers
    );
    let (write_secs, write_latencies) = create_all(&writers, "bench", args.objects).await?;
    let writes_per_sec = args.objects as f64 / write_secs;
    eprintln!("writes: {writes_per_sec:.0}/s");

    eprintln!(
        "watch: {} watchers, {} events …",
        args.watchers, args.watch_events
    );
    let watch = watch_latencies(&admin, &writers, args.watchers, args.watch_events).await?;

    eprintln!("list: {} objects …", args.objects);
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), "bench");
    let mut whole = Vec::new();
    let mut paged = Vec::new();
    for _ in 0..args.list_repetitions {
        let start = Instant::now();
        let list = api.list(&ListParams::default()).await?;
        whole.push(start.elapsed().as_secs_f64() * 1e3);
        if list.items.len() != args.objects {
            bail!(
                "listed {} objects, expected {}",
                list.items.len(),
                args.objects
            );
        }
        let start = Instant::now();
        let mut params = ListParams::default().limit(500);
        let mut count = 0;
        loop {
            let page = api.list(&params).await?;
            count += page.items.len();
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                Some(token) => params = params.continue_token(&token),
                None => break,
            }
        }
        paged.push(start.elapsed().as_secs_f64() * 1e3);
        if count != args.objects {
            bail!(
                "paged list returned {count} objects, expected {}",
                args.objects
            );
        }
    }

    let report = json!({
        "objects": args.objects,
        "writers": args.writers,
        "writes_per_sec": writes_per_sec,
        "write_seconds": write_secs,
        "write_p50_ms": percentile(&write_latencies, 50.0),
        "write_p99_ms": percentile(&write_latencies, 99.0),
        "watchers": args.watchers,
        "watch_events": args.watch_events,
        "watch_samples": watch.len(),
        "watch_p50_ms": percentile(&watch, 50.0),
        "watch_p99_ms": percentile(&watch, 99.0),
        "watch_max_ms": percentile(&watch, 100.0),
        "list_ms_median": median(&whole),
        "list_ms_best": whole.iter().copied().fold(f64::INFINITY, f64::min),
        "list_paged_ms_median": median(&paged),
    });
    println!("{report}");
    Ok(())
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn config_map(name: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "apiserver"}},
        "data": {"sentAt": now_nanos().to_string(), "payload": "x".repeat(64)},
    }))?)
}

/// Creates `count` ConfigMaps spread over the clients; returns (seconds, per-request ms).
async fn create_all(
    clients: &[kube::Client],
    namespace: &str,
    count: usize,
) -> Result<(f64, Vec<f64>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let next = Arc::clone(&next);
        let namespace = namespace.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(latencies);
                }
                let sent = Instant::now();
                api.create(
                    &PostParams::default(),
                    &config_map(&format!("{namespace}-{i}"))?,
                )
                .await
                .with_context(|| format!("creating ConfigMap {namespace}-{i}"))?;
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
            }
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    Ok((start.elapsed().as_secs_f64(), latencies))
}

/// Latency samples (ms) of every watcher for every ADDED event.
async fn watch_latencies(
    admin: &kube::Client,
    writers: &[kube::Client],
    watchers: usize,
    events: usize,
) -> Result<Vec<f64>> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), "bench-watch");
    let version = api
        .list_metadata(&ListParams::default().limit(1))
        .await?
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let params = WatchParams::default().timeout(290);
        streams.push(api.watch(&params, &version).await?.boxed());
    }
    let mut tasks = Vec::new();
    for mut stream in streams {
        tasks.push(tokio::spawn(async move {
            let mut samples = Vec::with_capacity(events);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while samples.len() < events {
                let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
                let Ok(event) = next else {
                    bail!("watcher got {} of {events} events in 120 s", samples.len());
                };
                if let Some(WatchEvent::Added(cm)) = event? {
                    let sent: u128 = cm
                        .data
                        .as_ref()
                        .and_then(|d| d.get("sentAt"))
                        .and_then(|s| s.parse().ok())
                        .context("event without sentAt")?;
                    samples.push(now_nanos().saturating_sub(sent) as f64 / 1e6);
                }
            }
            Ok(samples)
        }));
    }
    create_all(writers, "bench-watch", events).await?;
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await??);
    }
    Ok(samples)
}

fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}
