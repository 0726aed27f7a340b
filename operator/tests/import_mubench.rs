//! `cellmesh-operator import-mubench` on the three µBench files of `examples/mubench/`: the
//! output equals the committed golden WorkModels in `examples/workmodels/`, unknown keys are
//! reported on stderr, and the CLI's help and errors are usable.

// Helpers of this test crate may unwrap like the tests they serve.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FILES: [&str; 3] = [
    "parallel-3services",
    "serial-2services",
    "teastore-emulation",
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn operator(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cellmesh-operator"))
        .args(args)
        .current_dir(root())
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn output_matches_the_golden_workmodels() {
    for name in FILES {
        let source = format!("examples/mubench/workmodel-{name}.json");
        let out = operator(&["import-mubench", &source]);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let golden_path = root().join(format!("examples/workmodels/mubench-{name}.yaml"));
        let golden = std::fs::read_to_string(&golden_path).unwrap();
        assert_eq!(
            text(&out.stdout),
            golden,
            "{name}: output differs from {}; regenerate with `cellmesh-operator import-mubench \
             {source} -o {}` if the change is intended",
            golden_path.display(),
            golden_path.display()
        );
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains("note: ignored") && stderr.contains("image"),
            "{stderr}"
        );
    }
}

#[test]
fn teastore_reports_its_extra_keys_and_dropped_addresses() {
    let out = operator(&[
        "import-mubench",
        "examples/mubench/workmodel-teastore-emulation.json",
    ]);
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("teastore_ref (6×, first at s0.teastore_ref)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("dropped µBench deployer addresses of 6 service(s)"),
        "{stderr}"
    );
    let stdout = text(&out.stdout);
    assert!(stdout.contains("name: teastore-emulation"), "{stdout}");
    assert!(
        stdout.contains("s1: 0.4"),
        "probabilities survive: {stdout}"
    );
    assert!(!stdout.contains("teastore_ref") && !stdout.contains("svc.cluster.local"));
}

#[test]
fn name_namespace_and_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("wm.yaml");
    let out = operator(&[
        "import-mubench",
        "examples/mubench/workmodel-serial-2services.json",
        "--name",
        "shop",
        "--namespace",
        "demo",
        "-o",
        target.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "with -o nothing goes to stdout");
    let written = std::fs::read_to_string(&target).unwrap();
    assert!(
        written.contains("name: shop\n  namespace: demo\n"),
        "{written}"
    );
}

#[test]
fn errors_name_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("workmodel-bad.json");
    std::fs::write(
        &bad,
        r#"{"s0": {"internal_service": {"compute_pi": {"range_complexity": [1, "x"]}}}}"#,
    )
    .unwrap();
    let out = operator(&["import-mubench", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("s0.internal_service.compute_pi.range_complexity[1]"),
        "{stderr}"
    );
    let out = operator(&["import-mubench", "no/such/file.json"]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("cannot read no/such/file.json"));
    let out = operator(&[
        "import-mubench",
        "examples/mubench/workmodel-serial-2services.json",
        "--name",
        "Shop!",
    ]);
    assert!(text(&out.stderr).contains("--name \"Shop!\" is not a valid Kubernetes name"));
}

#[test]
fn help_lists_the_commands_that_exist() {
    let out = operator(&["--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    assert!(help.contains("import-mubench"), "{help}");
    assert!(help.contains("crds"), "{help}");
    assert!(help.contains("\n  run "), "{help}");
    let out = operator(&["run", "--help"]);
    assert!(out.status.success());
    let help = text(&out.stdout);
    for flag in [
        "--namespace",
        "--cell-image",
        "--prometheus-url",
        "--metrics-addr",
        "--leader-election",
        "--log-format",
    ] {
        assert!(help.contains(flag), "{flag} in {help}");
    }
    let out = operator(&["run", "--lease-duration", "5", "--lease-grace", "5"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr)
            .contains("--lease-grace (5) must be at least 1 and less than --lease-duration (5)")
    );
    let out = operator(&["crds"]);
    assert!(out.status.success());
    assert_eq!(
        text(&out.stdout)
            .matches("kind: CustomResourceDefinition")
            .count(),
        4
    );
}
