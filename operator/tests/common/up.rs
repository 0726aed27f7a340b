//! Whole-cluster harness: `cellmesh-local up` as a user runs it — API server, controllers,
//! node agent (pods are real processes in cgroups), ClusterIP proxy and DNS, optionally
//! Prometheus and the operator as a pod — on a private loopback network (see
//! [`cellmesh_testkit::LocalCluster`], whose methods an [`UpCluster`] offers too). `down`
//! runs when the value is dropped.
//!
//! Use it for tests that need pods to run; tests of the operator's API writes alone use the
//! lighter [`super::Cluster`] (API server only).
//!
//! `cellmesh-local` and `cellmesh-cell` are found in the target directory (`cargo nextest
//! run --workspace` builds them all).

use std::ops::Deref;

use cellmesh_testkit::LocalCluster;

use super::example;

/// What to start besides the API server and its components.
#[derive(Clone, Debug, Default)]
pub struct UpOptions {
    /// Start Debian's Prometheus (scraping pods and the node's cAdvisor).
    pub prometheus: bool,
    /// Deploy the operator as a pod (`up`'s default); off for tests that install it
    /// themselves (Helm) or run it as a local process.
    pub operator: bool,
    /// Manifests (paths under the repository) applied once the cluster runs.
    pub examples: Vec<String>,
}

/// A cluster started with `cellmesh-local up`; stopped with `down` on drop.
pub struct UpCluster {
    cluster: LocalCluster,
    /// What `up` printed.
    pub output: String,
}

impl UpCluster {
    /// Runs `cellmesh-local up` and waits for it to finish (it returns once every part is
    /// ready). Panics with `up`'s output if it fails.
    pub fn start(options: &UpOptions) -> Self {
        let cluster = LocalCluster::new();
        let mut flags = Vec::new();
        if !options.prometheus {
            flags.push("--no-prometheus".to_owned());
        }
        if !options.operator {
            flags.push("--no-operator".to_owned());
        }
        if options.examples.is_empty() {
            flags.push("--no-example".to_owned());
        }
        for path in &options.examples {
            flags.push(format!(
                "--example={}",
                super::repo_root().join(path).display()
            ));
        }
        let out = cluster.up(&flags);
        let output = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success(),
            "`cellmesh-local up` failed:\n{output}"
        );
        Self { cluster, output }
    }

    /// `kubectl apply -f -` of an example file under the repository.
    pub fn apply_example(&self, path: &str) -> String {
        self.kubectl(&["apply", "-f", "-"], Some(&example(path)))
    }
}

impl Deref for UpCluster {
    type Target = LocalCluster;

    fn deref(&self) -> &LocalCluster {
        &self.cluster
    }
}
