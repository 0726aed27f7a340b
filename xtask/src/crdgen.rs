//! `cargo xtask crdgen [--check]`: the CRD manifests in `crds/` from the Rust types.
//!
//! The manifests are rendered by `cellmesh-operator crds --out DIR` into a scratch
//! directory (so xtask itself needs no kube dependency), then copied to `crds/` or, with
//! `--check`, compared with it: CI fails when a committed manifest differs, is missing or is
//! left over, and says how to fix it. Not a build script: generated files change only when
//! someone runs this.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::util;

/// Arguments of `cargo xtask crdgen`.
#[derive(clap::Args)]
pub struct Crdgen {
    /// Only compare `crds/` with the Rust types; fail (listing the files) when they differ.
    #[arg(long)]
    pub check: bool,
}

pub fn run(args: &Crdgen) -> Result<()> {
    let generated = generate()?;
    let dir = util::workspace_root().join("crds");
    let committed = read_manifests(&dir)?;
    let stale = differences(&generated, &committed);
    if args.check {
        if stale.is_empty() {
            eprintln!("crds/ matches the Rust types ({} CRDs)", generated.len());
            return Ok(());
        }
        bail!(
            "crds/ is out of date with the Rust types in api/src/crd:\n  {}\n\
             Run `cargo xtask crdgen` and commit the result.",
            stale.join("\n  ")
        );
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    for name in committed.keys().filter(|n| !generated.contains_key(*n)) {
        fs::remove_file(dir.join(name)).with_context(|| format!("cannot remove crds/{name}"))?;
    }
    for (name, text) in &generated {
        fs::write(dir.join(name), text).with_context(|| format!("cannot write crds/{name}"))?;
    }
    eprintln!(
        "wrote {} CRDs to crds/ ({} changed)",
        generated.len(),
        stale.len()
    );
    Ok(())
}

/// `cargo xtask ci`'s step.
pub fn check() -> Result<()> {
    util::step("crdgen --check (crds/ matches the Rust types)");
    run(&Crdgen { check: true })
}

fn generate() -> Result<BTreeMap<String, String>> {
    let scratch = std::env::temp_dir().join(format!("cellmesh-crdgen-{}", std::process::id()));
    let _cleanup = RemoveOnDrop(scratch.clone());
    let out = scratch.to_string_lossy().into_owned();
    util::cargo(&[
        "run",
        "--quiet",
        "--package",
        "cellmesh-operator",
        "--",
        "crds",
        "--out",
        &out,
    ])?;
    let generated = read_manifests(&scratch)?;
    if generated.is_empty() {
        bail!("cellmesh-operator crds wrote no manifest into {out}");
    }
    Ok(generated)
}

/// The `*.yaml` files of `dir` by name (none when `dir` does not exist).
fn read_manifests(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut files = BTreeMap::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return Ok(files);
    };
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
            let text = fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            files.insert(name.unwrap_or_default(), text);
        }
    }
    Ok(files)
}

/// One line per file that differs, is missing from `committed`, or is extra in it.
fn differences(
    generated: &BTreeMap<String, String>,
    committed: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, text) in generated {
        match committed.get(name) {
            None => out.push(format!("crds/{name}: missing")),
            Some(old) if old != text => out.push(format!("crds/{name}: differs")),
            Some(_) => {}
        }
    }
    for name in committed.keys().filter(|n| !generated.contains_key(*n)) {
        out.push(format!("crds/{name}: no longer generated"));
    }
    out
}

struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_name_changed_missing_and_extra_files() {
        let generated = BTreeMap::from([
            ("a.yaml".to_owned(), "A".to_owned()),
            ("b.yaml".to_owned(), "B".to_owned()),
            ("c.yaml".to_owned(), "C".to_owned()),
        ]);
        let committed = BTreeMap::from([
            ("a.yaml".to_owned(), "A".to_owned()),
            ("b.yaml".to_owned(), "old".to_owned()),
            ("z.yaml".to_owned(), "Z".to_owned()),
        ]);
        assert_eq!(
            differences(&generated, &committed),
            [
                "crds/b.yaml: differs",
                "crds/c.yaml: missing",
                "crds/z.yaml: no longer generated"
            ]
        );
        assert!(differences(&generated, &generated).is_empty());
    }
}
