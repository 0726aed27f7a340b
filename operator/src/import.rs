//! `import-mubench`: a µBench `workmodel.json` (or the same map in YAML) → a `WorkModel`.
//!
//! Contract:
//! - the file is loaded with [`cellmesh_api::mubench`], so parse errors name the JSON path
//!   and the spec is validated (references, probabilities, bounds) before anything is written;
//! - keys cellmesh does not know (µBench deployer keys such as `image` and `namespace`,
//!   extras such as `teastore_ref`) are not an error: they are listed in
//!   [`Imported::notes`] for the caller to print;
//! - µBench's deployer writes each service's in-cluster address (`url:
//!   s0.default.svc.cluster.local`) into the file. In a WorkModel the operator owns
//!   addressing (a service is reached by its Service name in the WorkModel's namespace), so
//!   such URLs are dropped, with a note; any other URL is kept. A `path` equal to the default
//!   `/api/v1` is dropped silently (it changes nothing);
//! - the result is checked against the CRD's CEL rules, so what is printed is accepted by the
//!   API server.
//!
//! No I/O: text in, resource and notes out. The CLI reads and writes the files.

use std::collections::BTreeMap;

use cellmesh_api::crd::workmodel::{MeshService, ServiceDefaults, WorkModel, WorkModelSpec};
use cellmesh_api::mubench::{self, LoadError};
use cellmesh_api::service::DEFAULT_PATH;

/// What to call the imported WorkModel and where it goes.
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// `metadata.name`; default: derived from the file name.
    pub name: Option<String>,
    /// `metadata.namespace`; default: none (kubectl's current namespace).
    pub namespace: Option<String>,
}

/// A converted workmodel.
#[derive(Clone, Debug)]
pub struct Imported {
    /// The resource.
    pub workmodel: WorkModel,
    /// Things a person should know: ignored keys, dropped deployer addresses.
    pub notes: Vec<String>,
}

/// Why a file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// The file is not a valid µBench workmodel.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// `--name` or `--namespace` is not a valid Kubernetes name.
    #[error("{field} {value:?} is not a valid Kubernetes name: {reason}")]
    BadName {
        /// `--name` or `--namespace`.
        field: &'static str,
        /// The value given.
        value: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No name was given and none can be derived from the file name.
    #[error("cannot derive a WorkModel name from {0:?}; pass --name")]
    NoName(String),
    /// The converted resource breaks an admission rule of the WorkModel CRD.
    #[error("the converted WorkModel would be rejected by the API server: {0}")]
    Rejected(String),
}

/// Converts the text of a µBench workmodel file called `file_name` (used for the default
/// name only).
pub fn import_mubench(
    text: &str,
    file_name: &str,
    options: &ImportOptions,
) -> Result<Imported, ImportError> {
    let name = match &options.name {
        Some(name) => checked_name("--name", name, 253)?,
        None => name_from_file(file_name).ok_or_else(|| ImportError::NoName(file_name.into()))?,
    };
    let namespace = options
        .namespace
        .as_deref()
        .map(|ns| checked_name("--namespace", ns, 63))
        .transpose()?;

    let loaded = mubench::from_str(text)?;
    let mut notes = Vec::new();
    if !loaded.ignored.is_empty() {
        notes.push(loaded.ignored.to_string());
    }
    let mut dropped_urls = Vec::new();
    let services: BTreeMap<String, MeshService> = loaded
        .services
        .into_iter()
        .map(|(service, mut spec)| {
            if spec
                .url
                .as_deref()
                .is_some_and(|url| is_deployer_url(&service, url))
            {
                dropped_urls.push(format!(
                    "{service} ({})",
                    spec.url.take().unwrap_or_default()
                ));
            }
            if spec.path.as_deref() == Some(DEFAULT_PATH) {
                spec.path = None;
            }
            (service, MeshService::from(spec))
        })
        .collect();
    if !dropped_urls.is_empty() {
        notes.push(format!(
            "dropped µBench deployer addresses of {} service(s), the operator addresses each \
             service by its Service name in the WorkModel's namespace: {}",
            dropped_urls.len(),
            dropped_urls.join(", ")
        ));
    }

    let mut workmodel = WorkModel::new(
        &name,
        WorkModelSpec {
            defaults: ServiceDefaults::default(),
            gateway: None,
            services,
        },
    );
    workmodel.metadata.namespace = namespace;
    workmodel
        .validate_cel()
        .map_err(|errors| ImportError::Rejected(errors.to_string()))?;
    Ok(Imported { workmodel, notes })
}

/// The WorkModel as YAML, with a comment naming its source.
pub fn to_yaml(workmodel: &WorkModel, source: &str) -> Result<String, serde_yaml::Error> {
    let body = serde_yaml::to_string(workmodel)?;
    Ok(format!(
        "# Imported from the µBench workmodel {source} by `cellmesh-operator import-mubench`.\n\
         {body}"
    ))
}

/// `s0.default.svc.cluster.local`, `s0.ns.svc`: the address µBench's deployer writes for
/// service `name`.
fn is_deployer_url(name: &str, url: &str) -> bool {
    let Some(rest) = url.strip_prefix(name).and_then(|r| r.strip_prefix('.')) else {
        return false;
    };
    let Some((namespace, domain)) = rest.split_once('.') else {
        return false;
    };
    !namespace.is_empty() && (domain == "svc" || domain.starts_with("svc."))
}

/// A DNS-1123 name from a file name: `workmodel-teastore-emulation.json` →
/// `teastore-emulation` (µBench's `workmodel-` prefix says nothing).
fn name_from_file(file_name: &str) -> Option<String> {
    let stem = std::path::Path::new(file_name)
        .file_stem()?
        .to_string_lossy()
        .to_ascii_lowercase();
    let stem = stem
        .strip_prefix("workmodel-")
        .or_else(|| stem.strip_prefix("workmodel_"))
        .filter(|s| !s.is_empty())
        .unwrap_or(&stem);
    let mut name: String = stem
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    name.truncate(63);
    let name = name.trim_matches('-').to_owned();
    (!name.is_empty()).then_some(name)
}

/// A DNS-1123 subdomain of at most `max` characters (a label when `max` is 63).
fn checked_name(field: &'static str, value: &str, max: usize) -> Result<String, ImportError> {
    let bad = |reason| ImportError::BadName {
        field,
        value: value.to_owned(),
        reason,
    };
    if value.is_empty() || value.len() > max {
        return Err(bad(if max == 63 {
            "must be 1 to 63 characters"
        } else {
            "must be 1 to 253 characters"
        }));
    }
    let allowed = |c: char| {
        c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (max > 63 && c == '.')
    };
    if !value.chars().all(allowed) {
        return Err(bad("use lower-case letters, digits and '-' only"));
    }
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !alnum(value.chars().next()) || !alnum(value.chars().last()) {
        return Err(bad("must start and end with a letter or digit"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = r#"{
      "s0": {"internal_service": {"compute_pi": {"range_complexity": [1, 2]}},
             "external_services": [{"seq_len": 1, "services": ["s1"]}],
             "url": "s0.default.svc.cluster.local", "path": "/api/v1", "image": "x"},
      "s1": {"internal_service": {"loader": {}}, "url": "db.example.com:8080"}
    }"#;

    #[test]
    fn converts_names_namespaces_and_drops_deployer_addresses() {
        let options = ImportOptions {
            name: None,
            namespace: Some("shop".into()),
        };
        let imported = import_mubench(CHAIN, "dir/workmodel-chain.json", &options).unwrap();
        let wm = &imported.workmodel;
        assert_eq!(wm.metadata.name.as_deref(), Some("chain"));
        assert_eq!(wm.metadata.namespace.as_deref(), Some("shop"));
        assert_eq!(wm.spec.services["s0"].spec.url, None);
        assert_eq!(wm.spec.services["s0"].spec.path, None);
        // A URL that is not the deployer's own stays: it points outside the mesh.
        assert_eq!(
            wm.spec.services["s1"].spec.url.as_deref(),
            Some("db.example.com:8080")
        );
        assert_eq!(imported.notes.len(), 2, "{:?}", imported.notes);
        assert!(
            imported.notes[0].contains("s0.image"),
            "{:?}",
            imported.notes
        );
        assert!(imported.notes[1].contains("s0 (s0.default.svc.cluster.local)"));
        let yaml = to_yaml(wm, "workmodel-chain.json").unwrap();
        assert!(yaml.starts_with("# Imported from the µBench workmodel workmodel-chain.json"));
        assert!(
            yaml.contains("kind: WorkModel") && yaml.contains("computePi:"),
            "{yaml}"
        );
        assert!(!yaml.contains("status"), "{yaml}");
    }

    #[test]
    fn invalid_workmodels_and_names_are_clear_errors() {
        let err = import_mubench(
            r#"{"s0": {"internal_service": {"compute_pi": {}}, "external_services": [{"services": ["s9"]}]}}"#,
            "w.json",
            &ImportOptions::default(),
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("`s9` is not a service of this mesh"),
            "{err}"
        );
        for (name, reason) in [
            ("Shop", "lower-case"),
            ("-x", "start and end"),
            ("", "1 to 253"),
        ] {
            let options = ImportOptions {
                name: Some(name.into()),
                namespace: None,
            };
            let err = import_mubench(CHAIN, "w.json", &options)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with("--name") && err.contains(reason), "{err}");
        }
        let err = import_mubench(CHAIN, "---.json", &ImportOptions::default()).unwrap_err();
        assert!(err.to_string().contains("pass --name"), "{err}");
    }

    #[test]
    fn names_come_from_file_names() {
        assert_eq!(
            name_from_file("workmodel.json").as_deref(),
            Some("workmodel")
        );
        assert_eq!(
            name_from_file("/a/workmodel-serial-2services.json").as_deref(),
            Some("serial-2services")
        );
        assert_eq!(name_from_file("My_Mesh.yaml").as_deref(), Some("my-mesh"));
        assert!(is_deployer_url("s0", "s0.ns.svc"));
        assert!(!is_deployer_url("s0", "s01.ns.svc.cluster.local"));
        assert!(!is_deployer_url("s0", "s0.example.com"));
    }
}
