//! Clients of the local API server for the in-process components (controllers, node agent,
//! network): they talk to the API server over its real HTTPS endpoint with the admin
//! kubeconfig, exactly as an external kube-rs client would, so they exercise the same paths
//! (authentication, watch, server-side apply) that users rely on.

use std::path::Path;

use anyhow::Context as _;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// A kube-rs client built from the kubeconfig the API server wrote.
pub async fn from_kubeconfig(path: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .with_context(|| format!("invalid kubeconfig {}", path.display()))?;
    kube::Client::try_from(config).context("cannot build a Kubernetes client")
}
