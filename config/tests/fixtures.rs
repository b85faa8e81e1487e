//! Runs every `tests/fixtures/invalid/<case>.yaml` through `load_with` and checks that each
//! line of `<case>.expected` (with `FILE` standing for the path passed to the loader) appears
//! in the errors, that no text of a line starting with `! ` appears in them (one mistake,
//! one message), and that no secret value ever appears in the output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use keyswap_config::{load_with, ConfigErrors};

const SECRET_VALUE: &str = "fixture-real-value-0123456789";
const TOKEN_VALUE: &str = "fixture-token-1";

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "KEYSWAP_FIXTURE_SECRET".to_string(),
            SECRET_VALUE.to_string(),
        ),
        ("KEYSWAP_FIXTURE_TOKEN".to_string(), TOKEN_VALUE.to_string()),
    ])
}

/// Fixture paths inside the configs are relative to the crate directory, which is where
/// cargo runs integration tests; set it anyway so the tests do not depend on the runner.
fn in_crate_dir() {
    std::env::set_current_dir(env!("CARGO_MANIFEST_DIR")).expect("cd to the crate directory");
}

fn cases() -> Vec<PathBuf> {
    let dir = Path::new("tests/fixtures/invalid");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("fixtures directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && p.is_file())
        .collect();
    cases.sort();
    cases
}

fn run(case: &Path) -> Result<Vec<String>, String> {
    let expected_path = case.with_extension("expected");
    let expected = std::fs::read_to_string(&expected_path)
        .map_err(|e| format!("{}: {e}", expected_path.display()))?;
    let output = match load_with(case, &env()) {
        Ok(config) => {
            return Err(format!(
                "{} loaded without errors: {config:?}",
                case.display()
            ))
        }
        Err(ConfigErrors(errors)) if errors.is_empty() => {
            return Err(format!("{}: empty error list", case.display()))
        }
        Err(errors) => errors.to_string(),
    };
    if output.contains(SECRET_VALUE)
        || format!("{:?}", load_with(case, &env())).contains(SECRET_VALUE)
    {
        return Err(format!(
            "{}: the output contains the secret value:\n{output}",
            case.display()
        ));
    }
    let file = case.display().to_string();
    let lines = expected
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.replace("FILE", &file));
    let (absent, present): (Vec<String>, Vec<String>) =
        lines.partition(|line| line.starts_with("! "));
    let unwanted: Vec<&str> = absent
        .iter()
        .map(|line| &line[2..])
        .filter(|text| output.contains(text))
        .collect();
    if !unwanted.is_empty() {
        return Err(format!(
            "{}: unwanted lines:\n  {}\nactual output:\n{output}\n",
            case.display(),
            unwanted.join("\n  ")
        ));
    }
    let missing: Vec<String> = present
        .into_iter()
        .filter(|line| !output.contains(line.as_str()))
        .collect();
    if missing.is_empty() {
        Ok(output.lines().map(String::from).collect())
    } else {
        Err(format!(
            "{}: missing expected lines:\n  {}\nactual output:\n{output}\n",
            case.display(),
            missing.join("\n  ")
        ))
    }
}

#[test]
fn every_invalid_fixture_reports_the_expected_errors() {
    in_crate_dir();
    let cases = cases();
    assert!(cases.len() >= 12, "only {} fixtures", cases.len());
    let failures: Vec<String> = cases.iter().filter_map(|case| run(case).err()).collect();
    assert!(
        failures.is_empty(),
        "{} of {} fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn several_errors_are_reported_in_one_load() {
    in_crate_dir();
    let lines =
        run(Path::new("tests/fixtures/invalid/several_errors.yaml")).expect("fixture passes");
    assert!(lines.len() >= 10, "{lines:#?}");
}
