//! Loading µBench `workmodel.json` files (and the same map written as YAML).
//!
//! Contract:
//! - keys the spec does not know (µBench's deployer keys such as `image`, per-file extras such
//!   as `teastore_ref`, `function_id` inside function parameters) are **ignored** and
//!   returned in [`Loaded::ignored`], so the caller can print one warning listing them;
//! - a missing required key or a value of the wrong type is a [`LoadError::Parse`] naming the
//!   JSON path as written in the file (`s0.internal_service.compute_pi.range_complexity`);
//! - the parsed services are then [`validate`]d (bounds, references, probabilities) and
//!   [normalized](ServiceSpec::normalize) (flat resource keys folded into `resources`).

use std::fmt;

use serde::de::DeserializeOwned;

use crate::service::{ServiceSpec, Services, SpecErrors, validate};

/// A successfully loaded workmodel.
#[derive(Clone, Debug, PartialEq)]
pub struct Loaded {
    /// The services, validated and normalized.
    pub services: Services,
    /// Keys that were present in the file but mean nothing to cellmesh.
    pub ignored: IgnoredKeys,
}

/// Paths of the keys a load ignored, in file order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IgnoredKeys(pub Vec<String>);

impl IgnoredKeys {
    /// True when nothing was ignored.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// One line for a warning: each distinct key name once, with how often it occurred and its
/// first path, so a 20-service file with `image` everywhere stays readable.
impl fmt::Display for IgnoredKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<(&str, usize, &str)> = Vec::new();
        for path in &self.0 {
            let name = path.rsplit('.').next().unwrap_or(path);
            match names.iter_mut().find(|(n, _, _)| *n == name) {
                Some((_, count, _)) => *count += 1,
                None => names.push((name, 1, path)),
            }
        }
        write!(f, "ignored {} unknown key(s): ", self.0.len())?;
        for (i, (name, count, first)) in names.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            if *count == 1 {
                write!(f, "{first}")?;
            } else {
                write!(f, "{name} ({count}×, first at {first})")?;
            }
        }
        Ok(())
    }
}

/// Why a workmodel could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The document is not a map of services, or a key is missing or has the wrong type.
    #[error("at `{path}`: {message}")]
    Parse {
        /// Path of the offending key as written in the file; `.` for the document itself.
        path: String,
        /// The parser's description, with line and column where it has them.
        message: String,
    },
    /// The document parsed but breaks a rule of the spec.
    #[error(transparent)]
    Invalid(#[from] SpecErrors),
}

/// Loads a workmodel from JSON text.
pub fn from_json_str(text: &str) -> Result<Loaded, LoadError> {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let (services, ignored) = deserialize_tracked::<Services, _>(&mut deserializer)?;
    deserializer.end().map_err(|error| LoadError::Parse {
        path: ".".to_owned(),
        message: error.to_string(),
    })?;
    finish(services, ignored)
}

/// Loads a workmodel from YAML text (JSON is YAML too, but [`from_json_str`] gives better
/// positions for JSON).
pub fn from_yaml_str(text: &str) -> Result<Loaded, LoadError> {
    let deserializer = serde_yaml::Deserializer::from_str(text);
    let (services, ignored) = deserialize_tracked::<Services, _>(deserializer)?;
    finish(services, ignored)
}

/// Loads JSON when the text starts with `{` (after whitespace), YAML otherwise.
pub fn from_str(text: &str) -> Result<Loaded, LoadError> {
    if text.trim_start().starts_with('{') {
        from_json_str(text)
    } else {
        from_yaml_str(text)
    }
}

fn finish(mut services: Services, ignored: IgnoredKeys) -> Result<Loaded, LoadError> {
    validate(&services)?;
    services.values_mut().for_each(ServiceSpec::normalize);
    Ok(Loaded { services, ignored })
}

/// Deserializes `T`, collecting the paths of ignored keys and naming the path of the first
/// error.
fn deserialize_tracked<'de, T, D>(deserializer: D) -> Result<(T, IgnoredKeys), LoadError>
where
    T: DeserializeOwned,
    D: serde::Deserializer<'de>,
{
    let mut ignored = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| ignored.push(render_path(&path));
    let tracked = serde_ignored::Deserializer::new(deserializer, &mut record);
    let value = serde_path_to_error::deserialize(tracked).map_err(|error| LoadError::Parse {
        path: error.path().to_string(),
        message: error.into_inner().to_string(),
    })?;
    Ok((value, IgnoredKeys(ignored)))
}

/// `a.b[2].c`, skipping serde's invisible wrapper levels (options, newtypes).
fn render_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", render_path(parent)),
        Path::Map { parent, key } => {
            let parent = render_path(parent);
            if parent.is_empty() {
                key.clone()
            } else {
                format!("{parent}.{key}")
            }
        }
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => render_path(parent),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::service::{Function, Quantity, RequestMethod};

    const PARALLEL: &str = include_str!("../../examples/mubench/workmodel-parallel-3services.json");
    const SERIAL: &str = include_str!("../../examples/mubench/workmodel-serial-2services.json");
    const TEASTORE: &str = include_str!("../../examples/mubench/workmodel-teastore-emulation.json");

    #[test]
    fn every_bundled_mubench_file_loads() {
        for (name, text, count) in [
            ("parallel", PARALLEL, 3),
            ("serial", SERIAL, 2),
            ("teastore", TEASTORE, 0),
        ] {
            let loaded = from_json_str(text).unwrap_or_else(|e| panic!("{name}: {e}"));
            if count > 0 {
                assert_eq!(loaded.services.len(), count, "{name}");
            }
            assert!(loaded.services.contains_key("s0"), "{name}");
        }
    }

    #[test]
    fn parallel_file_has_two_parallel_groups_and_loader_cpu_stress() {
        let loaded = from_json_str(PARALLEL).unwrap();
        let s0 = &loaded.services["s0"];
        let groups: Vec<&[String]> = s0
            .external_services
            .iter()
            .map(|g| g.services.as_slice())
            .collect();
        assert_eq!(groups, [["s1".to_owned()], ["s2".to_owned()]]);
        assert_eq!(s0.external_services[0].seq_len, Some(100));
        assert_eq!(s0.request_method, RequestMethod::Rest);
        assert_eq!((s0.workers(), s0.threads()), (4, 16));
        assert_eq!(s0.url.as_deref(), Some("s0.default.svc.cluster.local"));
        let Some(Function::Loader(loader)) = s0.internal_service.function() else {
            panic!("s0 runs loader")
        };
        assert!(loader.cpu_stress.run);
        assert_eq!(loader.cpu_stress.trials, 33);
        assert!(
            !loader.sleep_stress.run,
            "the file turns µBench's default sleep off"
        );
        assert_eq!(loader.mean_body_kb(), 100.0);
        // s1's single group is empty: allowed, does nothing.
        assert!(
            loaded.services["s1"].external_services[0]
                .services
                .is_empty()
        );
    }

    #[test]
    fn teastore_probabilities_and_extra_keys() {
        let loaded = from_json_str(TEASTORE).unwrap();
        let group = &loaded.services["s0"].external_services[0];
        assert_eq!(group.probability("s1"), 0.4);
        assert_eq!(group.probability("s5"), 0.03);
        assert_eq!(loaded.services["s0"].threads(), 128);
        let warning = loaded.ignored.to_string();
        assert!(warning.contains("teastore_ref"), "{warning}");
        assert!(warning.contains("function_id"), "{warning}");
        assert!(warning.contains("first at s0.teastore_ref"), "{warning}");
    }

    #[test]
    fn unknown_keys_are_listed_with_their_paths() {
        let loaded = from_json_str(PARALLEL).unwrap();
        let ignored = &loaded.ignored.0;
        for path in [
            "s0.image",
            "s0.namespace",
            "s0.internal_service.loader.function_id",
            "s2.image",
        ] {
            assert!(
                ignored.iter().any(|p| p == path),
                "{path} not in {ignored:?}"
            );
        }
        // Known keys, including the aliases, are not reported.
        assert!(
            !ignored
                .iter()
                .any(|p| p.ends_with("seq_len") || p.ends_with(".url"))
        );
        assert_eq!(ignored.len(), 9, "{ignored:?}");
    }

    #[test]
    fn ill_typed_key_names_its_path() {
        let err = from_json_str(
            r#"{"s0": {"internal_service": {"compute_pi": {"range_complexity": [1, "two"]}}}}"#,
        )
        .unwrap_err();
        let LoadError::Parse { path, message } = &err else {
            panic!("parse error expected, got {err}")
        };
        assert_eq!(path, "s0.internal_service.compute_pi.range_complexity[1]");
        assert!(message.contains("invalid type"), "{message}");
    }

    #[test]
    fn missing_key_names_its_parent_path() {
        let err = from_json_str(r#"{"s0": {"external_services": []}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "at `s0`: missing field `internalService` at line 1 column 32"
        );
        let err = from_json_str(
            r#"{"s0": {"internal_service": {"loader": {}}, "external_services": [{"seq_len": 1}]}}"#,
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("at `s0.external_services[0]`: missing field `services`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_function_is_an_error_naming_the_field() {
        let err = from_json_str(r#"{"s0": {"internal_service": {"colosseum": {}}}}"#).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains(
                "s0.internalService: needs exactly one function: `computePi` or `loader`"
            ),
            "{text}"
        );
        let err =
            from_json_str(r#"{"s0": {"internal_service": {"compute_pi": {}, "loader": {}}}}"#)
                .unwrap_err();
        assert!(
            err.to_string()
                .contains("s0.internalService: needs exactly one"),
            "{err}"
        );
    }

    #[test]
    fn trailing_garbage_and_non_maps_are_parse_errors() {
        assert!(matches!(
            from_json_str("{} x"),
            Err(LoadError::Parse { .. })
        ));
        assert!(matches!(from_json_str("[1]"), Err(LoadError::Parse { .. })));
    }

    #[test]
    fn invalid_references_fail_validation() {
        let err = from_json_str(
            r#"{"s0": {"internal_service": {"compute_pi": {}}, "external_services": [{"seq_len": 1, "services": ["s9"]}]}}"#,
        )
        .unwrap_err();
        let LoadError::Invalid(errors) = err else {
            panic!("validation error expected")
        };
        assert_eq!(errors.0[0].path, "s0.externalServices[0].services[0]");
    }

    #[test]
    fn yaml_with_camel_case_and_kubernetes_resources() {
        let loaded = from_str(
            "s0:\n  internalService: {computePi: {rangeComplexity: [1, 1], meanResponseSize: 0.01}}\n  \
             requestMethod: REST\n  resources: {requests: {cpu: 250m}, limits: {cpu: 1}}\n  \
             cpu-requests: 100m\n  unknownThing: 3\n",
        )
        .unwrap();
        let s0 = &loaded.services["s0"];
        let resources = s0.resources.as_ref().unwrap();
        assert_eq!(resources.requests["cpu"], Quantity("250m".into()));
        assert_eq!(resources.limits["cpu"], Quantity("1".into()));
        assert_eq!(loaded.ignored.0, ["s0.unknownThing"]);
    }

    #[test]
    fn yaml_errors_name_the_path_too() {
        let err = from_yaml_str(
            "s0:\n  internalService: {computePi: {trials: x, meanResponseSize: big}}\n",
        )
        .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("at `s0.internalService.computePi.meanResponseSize`"),
            "{err}"
        );
    }
}
