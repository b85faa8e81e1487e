//! The JSON Schema of the config (`keyswap schema`, committed as `config/keyswap.schema.json`
//! for editors): it is what the raw types generate, the shipped configs validate against it,
//! and it refuses what the loader refuses for its shape (an unknown field, a wrong type).

use std::path::{Path, PathBuf};

fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn schema() -> serde_json::Value {
    serde_json::from_str(&keyswap_config::json_schema()).expect("the schema is JSON")
}

fn yaml(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn errors(validator: &jsonschema::Validator, value: &serde_json::Value) -> Vec<String> {
    validator
        .iter_errors(value)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn committed_schema_is_the_generated_one() {
    let committed = std::fs::read_to_string(crate_dir().join("keyswap.schema.json"))
        .expect("config/keyswap.schema.json");
    assert!(
        committed == keyswap_config::json_schema(),
        "config/keyswap.schema.json is stale: run\n  \
         cargo run -p keyswap -- schema > config/keyswap.schema.json"
    );
}

#[test]
fn shipped_configs_validate_against_the_schema() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    let configs: Vec<PathBuf> = vec![
        crate_dir().join("examples/keyswap.yaml"),
        crate_dir().join("tests/fixtures/valid/full.yaml"),
    ];
    for path in &configs {
        let found = errors(&validator, &yaml(path));
        assert!(found.is_empty(), "{}: {found:#?}", path.display());
    }
}

#[test]
fn task_files_validate_against_the_task_definition() {
    let mut schema = schema();
    // A tasks_dir file is the body of one task entry.
    let defs = schema["definitions"].clone();
    schema = serde_json::json!({"definitions": defs, "$ref": "#/definitions/RawTask"});
    let validator = jsonschema::validator_for(&schema).expect("a valid JSON Schema");
    let dir = crate_dir().join("tests/fixtures/valid/tasks");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("tasks dir").flatten() {
        let is_yaml = entry
            .path()
            .extension()
            .is_some_and(|e| e == "yaml" || e == "yml");
        if !is_yaml {
            continue;
        }
        let found = errors(&validator, &yaml(&entry.path()));
        assert!(found.is_empty(), "{}: {found:#?}", entry.path().display());
        checked += 1;
    }
    assert!(checked > 0, "no task files in {}", dir.display());
}

#[test]
fn schema_refuses_unknown_fields_and_wrong_types() {
    let validator = jsonschema::validator_for(&schema()).expect("a valid JSON Schema");
    for (text, at) in [
        ("version: 1\nlistne: 127.0.0.1:8080\n", ""),
        (
            "version: 1\ntasks:\n  t:\n    allow:\n      - hots: a.example\n",
            "/tasks/t/allow/0",
        ),
        (
            "version: 1\ntasks:\n  t:\n    allow:\n      - host: a.example\n        tunnel: yes\n",
            "/tasks/t/allow/0/tunnel",
        ),
        (
            "version: 1\ntasks:\n  t:\n    allow:\n      - host: a.example\n        swap_in: [cookies]\n",
            "/tasks/t/allow/0/swap_in/0",
        ),
    ] {
        let value: serde_json::Value = serde_yaml::from_str(text).expect("yaml");
        let found = errors(&validator, &value);
        assert!(
            found.iter().any(|e| e.starts_with(&format!("{at}:"))),
            "{text:?}: expected an error at {at:?}, got {found:#?}"
        );
    }
}
