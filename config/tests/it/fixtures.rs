//! Runs every `tests/fixtures/invalid/<case>.yaml` through `load_with` and checks that each
//! line of `<case>.expected` (with `FILE` standing for the path passed to the loader) appears
//! in the errors, and that no text of a line starting with `! ` appears in them (one mistake,
//! one message); and every `tests/fixtures/warnings/<case>.yaml`, which must load with
//! exactly the warnings its `<case>.expected` lists. No secret value and no task token ever
//! appears in the output.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use keyswap_config::{load_with, ConfigErrors};

const SECRET_VALUE: &str = "fixture-real-value-0123456789";
const TOKEN_VALUE: &str = "fixture-token-0123456789";
/// 15 bytes: one short of what a task token and the admin token need.
const SHORT_TOKEN_VALUE: &str = "fixture-token-1";

fn env() -> HashMap<String, String> {
    HashMap::from([
        (
            "KEYSWAP_FIXTURE_SECRET".to_string(),
            SECRET_VALUE.to_string(),
        ),
        ("KEYSWAP_FIXTURE_TOKEN".to_string(), TOKEN_VALUE.to_string()),
        (
            "KEYSWAP_FIXTURE_SHORT_TOKEN".to_string(),
            SHORT_TOKEN_VALUE.to_string(),
        ),
    ])
}

/// The value of a secret or a token, if `output` holds one.
fn leaked(output: &str) -> Option<&'static str> {
    [SECRET_VALUE, TOKEN_VALUE, SHORT_TOKEN_VALUE]
        .into_iter()
        .find(|value| output.contains(value))
}

use crate::in_crate_dir;

fn cases() -> Vec<PathBuf> {
    cases_in("tests/fixtures/invalid")
}

fn cases_in(dir: &str) -> Vec<PathBuf> {
    let dir = Path::new(dir);
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
    if leaked(&output).is_some() || leaked(&format!("{:?}", load_with(case, &env()))).is_some() {
        return Err(format!(
            "{}: the output contains a secret value or a token",
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

/// A warnings fixture: the config loads, and its warnings are exactly the expected lines
/// (so a fixture also proves what is *not* warned about).
fn run_warnings(case: &Path) -> Result<(), String> {
    let expected_path = case.with_extension("expected");
    let expected = std::fs::read_to_string(&expected_path)
        .map_err(|e| format!("{}: {e}", expected_path.display()))?;
    let config = load_with(case, &env())
        .map_err(|errors| format!("{} does not load:\n{errors}", case.display()))?;
    let output = config.warnings.join("\n");
    if leaked(&output).is_some() || leaked(&format!("{config:?}")).is_some() {
        return Err(format!(
            "{}: the warnings contain a secret value or a token",
            case.display()
        ));
    }
    let file = case.display().to_string();
    let missing: Vec<String> = expected
        .lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| line.replace("FILE", &file))
        .filter(|line| !config.warnings.iter().any(|w| w == line))
        .collect();
    let expected_count = expected.lines().filter(|l| !l.trim().is_empty()).count();
    if missing.is_empty() && config.warnings.len() == expected_count {
        Ok(())
    } else {
        Err(format!(
            "{}: missing expected warnings:\n  {}\nactual warnings ({} expected):\n{output}\n",
            case.display(),
            missing.join("\n  "),
            expected_count
        ))
    }
}

#[test]
fn every_warnings_fixture_loads_with_the_expected_warnings() {
    in_crate_dir();
    let cases = cases_in("tests/fixtures/warnings");
    assert!(cases.len() >= 4, "only {} fixtures", cases.len());
    let failures: Vec<String> = cases
        .iter()
        .filter_map(|case| run_warnings(case).err())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} warnings fixtures failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}
