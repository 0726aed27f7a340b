//! Load driver of `cargo xtask bench apiserver`: real kube-rs clients against a running
//! `cellmesh-local apiserver` (given by its kubeconfig). Prints one JSON object with the
//! figures on stdout; progress goes to stderr.
//!
//! 1. **Writes**: `--objects` ConfigMaps created in namespace `bench` by `--writers`
//!    concurrent clients (each its own `kube::Client`, so its own connection). Every create
//!    is acknowledged only after the server's durable commit.
//! 2. **Watch delivery**: `--watchers` watches (established before any write) receive
//!    ConfigMaps created in two phases, each in its own namespace:
//!    - *burst*: `--watch-events` creates by all `--writers` as fast as they go (thousands of
//!      events per second, i.e. 100× that many deliveries: a saturation test);
//!    - *paced*: `--paced-events` creates by one writer at `--paced-rate` per second, the
//!      steady rate of a busy cluster's controllers.
//!
//!    For every (watcher, event) the driver records when the watcher had the decoded
//!    ADDED event, and for every create when its request was sent and when the writer had
//!    the server's answer (the durable-write acknowledgement). It reports both
//!    *send → receipt* (includes the durable commit) and *ack → receipt* (delivery after
//!    the write is acknowledged; an event that reached the watcher before its writer read
//!    the acknowledgement counts as 0). All times come from one monotonic clock.
//! 3. **List**: the `bench` namespace listed whole (one request) and in pages of 500
//!    (as kubectl does), best and median of `--list-repetitions`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

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
    /// Creates of the paced watch phase.
    #[arg(long, default_value_t = 500)]
    paced_events: usize,
    /// Creates per second of the paced watch phase.
    #[arg(long, default_value_t = 100.0)]
    paced_rate: f64,
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
    for ns in ["bench", "bench-watch", "bench-paced"] {
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
    let (write_secs, timings) = create_all(&writers, "bench", args.objects).await?;
    let write_latencies: Vec<f64> = timings
        .values()
        .map(|t| ms(t.acked.saturating_duration_since(t.sent)))
        .collect();
    let writes_per_sec = args.objects as f64 / write_secs;
    eprintln!("writes: {writes_per_sec:.0}/s");

    eprintln!(
        "watch (burst): {} watchers, {} events by {} writers …",
        args.watchers, args.watch_events, args.writers
    );
    let burst = watch_latencies(
        &admin,
        "bench-watch",
        args.watchers,
        Pace::Burst(&writers),
        args.watch_events,
    )
    .await?;
    eprintln!(
        "watch (paced): {} watchers, {} events at {}/s …",
        args.watchers, args.paced_events, args.paced_rate
    );
    let paced = watch_latencies(
        &admin,
        "bench-paced",
        args.watchers,
        Pace::Rate(&admin, args.paced_rate),
        args.paced_events,
    )
    .await?;

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
        "burst": burst.to_json(),
        "paced_events": args.paced_events,
        "paced_rate": args.paced_rate,
        "paced": paced.to_json(),
        "list_ms_median": median(&whole),
        "list_ms_best": whole.iter().copied().fold(f64::INFINITY, f64::min),
        "list_paged_ms_median": median(&paged),
    });
    println!("{report}");
    Ok(())
}

fn config_map(name: &str) -> Result<ConfigMap> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"bench": "apiserver"}},
        "data": {"payload": "x".repeat(64)},
    }))?)
}

/// When one create was sent and when its writer had the answer.
#[derive(Clone, Copy)]
struct Timing {
    sent: Instant,
    acked: Instant,
}

/// Creates `count` ConfigMaps named `<namespace>-<i>` spread over the clients, each
/// client one request at a time; returns (seconds, each create's timing by name).
async fn create_all(
    clients: &[kube::Client],
    namespace: &str,
    count: usize,
) -> Result<(f64, HashMap<String, Timing>)> {
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in clients {
        let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
        let next = Arc::clone(&next);
        let namespace = namespace.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut timings = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= count {
                    return Ok::<_, anyhow::Error>(timings);
                }
                let name = format!("{namespace}-{i}");
                let object = config_map(&name)?;
                let sent = Instant::now();
                api.create(&PostParams::default(), &object)
                    .await
                    .with_context(|| format!("creating ConfigMap {name}"))?;
                timings.push((
                    name,
                    Timing {
                        sent,
                        acked: Instant::now(),
                    },
                ));
            }
        }));
    }
    let mut timings = HashMap::with_capacity(count);
    for task in tasks {
        timings.extend(task.await??);
    }
    Ok((start.elapsed().as_secs_f64(), timings))
}

/// Creates `count` ConfigMaps one at a time, starting one every `1/rate` seconds.
async fn create_paced(
    client: &kube::Client,
    namespace: &str,
    count: usize,
    rate: f64,
) -> Result<HashMap<String, Timing>> {
    if rate.is_nan() || rate <= 0.0 {
        bail!("--paced-rate must be positive, got {rate}");
    }
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    let mut ticks = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut timings = HashMap::with_capacity(count);
    for i in 0..count {
        ticks.tick().await;
        let name = format!("{namespace}-{i}");
        let object = config_map(&name)?;
        let sent = Instant::now();
        api.create(&PostParams::default(), &object)
            .await
            .with_context(|| format!("creating ConfigMap {name}"))?;
        timings.insert(
            name,
            Timing {
                sent,
                acked: Instant::now(),
            },
        );
    }
    Ok(timings)
}

/// How the watch phase's objects are created.
enum Pace<'a> {
    /// By all these clients as fast as they go.
    Burst(&'a [kube::Client]),
    /// By one client at this many creates per second.
    Rate(&'a kube::Client, f64),
}

/// Delivery latencies (ms) of one watch phase, one sample per (watcher, event).
struct WatchFigures {
    send_to_receipt: Vec<f64>,
    ack_to_receipt: Vec<f64>,
    /// Samples whose event reached the watcher before the writer had the acknowledgement.
    before_ack: usize,
}

impl WatchFigures {
    fn to_json(&self) -> serde_json::Value {
        json!({
            "samples": self.send_to_receipt.len(),
            "send_p50_ms": percentile(&self.send_to_receipt, 50.0),
            "send_p99_ms": percentile(&self.send_to_receipt, 99.0),
            "send_max_ms": percentile(&self.send_to_receipt, 100.0),
            "ack_p50_ms": percentile(&self.ack_to_receipt, 50.0),
            "ack_p99_ms": percentile(&self.ack_to_receipt, 99.0),
            "ack_max_ms": percentile(&self.ack_to_receipt, 100.0),
            "before_ack": self.before_ack,
        })
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Starts `watchers` watches on `namespace`, creates `events` ConfigMaps there as `pace`
/// says, and times every watcher's receipt of every ADDED event.
async fn watch_latencies(
    admin: &kube::Client,
    namespace: &str,
    watchers: usize,
    pace: Pace<'_>,
    events: usize,
) -> Result<WatchFigures> {
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), namespace);
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
            let mut received = Vec::with_capacity(events);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
            while received.len() < events {
                let next = tokio::time::timeout_at(deadline, stream.try_next()).await;
                let Ok(event) = next else {
                    bail!("watcher got {} of {events} events in 120 s", received.len());
                };
                if let Some(WatchEvent::Added(cm)) = event? {
                    let at = Instant::now();
                    received.push((cm.metadata.name.context("event without a name")?, at));
                }
            }
            Ok(received)
        }));
    }
    let timings = match pace {
        Pace::Burst(writers) => create_all(writers, namespace, events).await?.1,
        Pace::Rate(client, rate) => create_paced(client, namespace, events, rate).await?,
    };
    let mut figures = WatchFigures {
        send_to_receipt: Vec::with_capacity(events * watchers),
        ack_to_receipt: Vec::with_capacity(events * watchers),
        before_ack: 0,
    };
    for task in tasks {
        for (name, at) in task.await?? {
            let timing = timings
                .get(&name)
                .with_context(|| format!("a watcher received {name}, which was not created"))?;
            figures
                .send_to_receipt
                .push(ms(at.saturating_duration_since(timing.sent)));
            if at < timing.acked {
                figures.before_ack += 1;
            }
            figures
                .ack_to_receipt
                .push(ms(at.saturating_duration_since(timing.acked)));
        }
    }
    Ok(figures)
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
