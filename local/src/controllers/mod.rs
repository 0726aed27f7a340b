//! The controllers of `cellmesh-local` (Kubernetes' kube-controller-manager, the parts a
//! one-node cluster needs), run in-process against the API server's real HTTPS endpoint:
//!
//! - [`gc`]: the garbage collector (ownerReferences; background, foreground and orphan
//!   propagation) for every served resource, custom resources included;
//! - [`namespace`]: namespace lifecycle (empties a `Terminating` namespace, then finalizes it);
//! - [`deployment`]: Deployment → ReplicaSets (RollingUpdate, Recreate, revisions, status);
//! - [`replicaset`]: ReplicaSet → Pods (and the ReplicaSet status);
//! - [`endpoints`]: Service → Endpoints and EndpointSlices from the selected pods;
//! - [`rootca`]: the `kube-root-ca.crt` ConfigMap in every namespace, which the projected
//!   ServiceAccount-token volume of every pod reads.
//!
//! Each controller splits into pure decision functions (unit-tested) and a thin loop doing
//! the I/O. All of them stop when the shutdown token is cancelled.

pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod namespace;
pub mod replicaset;
pub mod rootca;
mod util;

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use tokio_util::sync::CancellationToken;

/// One controller that can be switched on or off with `--controllers`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Controller {
    GarbageCollector,
    Namespace,
    Deployment,
    ReplicaSet,
    Endpoints,
    RootCa,
}

impl Controller {
    pub const ALL: [Controller; 6] = [
        Controller::GarbageCollector,
        Controller::Namespace,
        Controller::Deployment,
        Controller::ReplicaSet,
        Controller::Endpoints,
        Controller::RootCa,
    ];

    /// The name used by `--controllers`.
    pub fn name(self) -> &'static str {
        match self {
            Controller::GarbageCollector => "gc",
            Controller::Namespace => "namespace",
            Controller::Deployment => "deployment",
            Controller::ReplicaSet => "replicaset",
            Controller::Endpoints => "endpoints",
            Controller::RootCa => "rootca",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which controllers run: `all`, `none`, or a comma-separated list of names where
/// `-name` switches one off (`all,-gc`), as kube-controller-manager's `--controllers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selection(pub BTreeSet<Controller>);

impl Selection {
    pub fn all() -> Self {
        Self(Controller::ALL.into_iter().collect())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn contains(&self, c: Controller) -> bool {
        self.0.contains(&c)
    }
}

impl FromStr for Selection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let mut chosen = BTreeSet::new();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (off, name) = match item.strip_prefix('-') {
                Some(name) => (true, name),
                None => (false, item),
            };
            let named: Vec<Controller> = match name {
                "all" | "*" => Controller::ALL.to_vec(),
                "none" => {
                    chosen.clear();
                    continue;
                }
                "garbagecollector" => vec![Controller::GarbageCollector],
                "endpointslice" => vec![Controller::Endpoints],
                other => match Controller::ALL.into_iter().find(|c| c.name() == other) {
                    Some(c) => vec![c],
                    None => {
                        let known: Vec<&str> = Controller::ALL.iter().map(|c| c.name()).collect();
                        return Err(format!(
                            "unknown controller {other:?} (known: all, none, {})",
                            known.join(", ")
                        ));
                    }
                },
            };
            for c in named {
                if off {
                    chosen.remove(&c);
                } else {
                    chosen.insert(c);
                }
            }
        }
        Ok(Self(chosen))
    }
}

/// How the controllers run.
#[derive(Debug, Clone)]
pub struct Config {
    pub controllers: Selection,
    /// The cluster CA (PEM) published as `kube-root-ca.crt` in every namespace.
    pub root_ca_pem: String,
}

/// Runs the selected controllers until `shutdown` is cancelled or one fails.
pub async fn run(
    client: kube::Client,
    config: Config,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for controller in &config.controllers.0 {
        let client = client.clone();
        let shutdown = shutdown.clone();
        let controller = *controller;
        let root_ca = config.root_ca_pem.clone();
        tasks.spawn(async move {
            let result = match controller {
                Controller::GarbageCollector => gc::run(client, shutdown).await,
                Controller::Namespace => namespace::run(client, shutdown).await,
                Controller::Deployment => deployment::run(client, shutdown).await,
                Controller::ReplicaSet => replicaset::run(client, shutdown).await,
                Controller::Endpoints => endpoints::run(client, shutdown).await,
                Controller::RootCa => rootca::run(client, root_ca, shutdown).await,
            };
            (controller, result)
        });
        tracing::info!(%controller, "controller started");
    }
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((controller, Err(err))) => {
                shutdown.cancel();
                return Err(err.context(format!("controller {controller} failed")));
            }
            Ok((controller, Ok(()))) => tracing::info!(%controller, "controller stopped"),
            Err(err) => {
                shutdown.cancel();
                return Err(anyhow::anyhow!("a controller panicked: {err}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selections_parse_like_kube_controller_manager() {
        assert_eq!("all".parse::<Selection>().unwrap(), Selection::all());
        assert!("none".parse::<Selection>().unwrap().is_empty());
        let some: Selection = "gc,namespace".parse().unwrap();
        assert!(
            some.contains(Controller::GarbageCollector) && some.contains(Controller::Namespace)
        );
        assert!(!some.contains(Controller::Deployment));
        let most: Selection = "all,-gc".parse().unwrap();
        assert!(!most.contains(Controller::GarbageCollector) && most.contains(Controller::RootCa));
        let err = "gc,kubelet".parse::<Selection>().unwrap_err();
        assert!(
            err.contains("\"kubelet\"") && err.contains("known:"),
            "{err}"
        );
    }
}
