//! Loading `limits:`: the defaults, every key, and the errors for 0, absurd and mistyped
//! values (each naming the file, line, field and a fix).

use std::path::Path;

use keyswap_config::model::{DEFAULT_H2_STREAMS, DEFAULT_IN_FLIGHT, DEFAULT_UPSTREAM_CONNECTIONS};
use keyswap_config::{load_str, Config, ConfigErrors};

const TASK: &str = "tasks:\n  t:\n    allow:\n      - host: a.example\n";

fn load(limits: &str) -> Result<Config, ConfigErrors> {
    let yaml = format!("version: 1\n{TASK}{limits}");
    load_str(
        &yaml,
        Path::new("k.yaml"),
        &std::collections::HashMap::new(),
    )
}

#[test]
fn defaults_apply_without_limits() {
    let config = load("").expect("loads");
    assert_eq!(config.limits.per_task.in_flight, DEFAULT_IN_FLIGHT);
    assert_eq!(
        config.limits.per_task.upstream_connections,
        DEFAULT_UPSTREAM_CONNECTIONS
    );
    assert_eq!(config.limits.per_connection.h2_streams, DEFAULT_H2_STREAMS);
    assert_eq!(
        (
            DEFAULT_IN_FLIGHT,
            DEFAULT_UPSTREAM_CONNECTIONS,
            DEFAULT_H2_STREAMS
        ),
        (64, 32, 100)
    );
}

#[test]
fn every_key_is_read_and_an_absent_one_keeps_its_default() {
    let config = load(
        "limits:\n  per_task:\n    upstream_connections: 4\n    in_flight: 8\n  per_connection:\n    h2_streams: 16\n",
    )
    .expect("loads");
    assert_eq!(config.limits.per_task.upstream_connections, 4);
    assert_eq!(config.limits.per_task.in_flight, 8);
    assert_eq!(config.limits.per_connection.h2_streams, 16);
    assert!(
        !config.warnings.iter().any(|w| w.contains("limits")),
        "{:?}",
        config.warnings
    );

    let partial = load("limits:\n  per_task:\n    in_flight: 200\n").expect("loads");
    assert_eq!(partial.limits.per_task.in_flight, 200);
    assert_eq!(
        partial.limits.per_task.upstream_connections,
        DEFAULT_UPSTREAM_CONNECTIONS
    );
    assert_eq!(partial.limits.per_connection.h2_streams, DEFAULT_H2_STREAMS);
}

#[test]
fn zero_and_absurd_values_are_errors_with_their_place_and_fix() {
    let errors = load(
        "limits:\n  per_task:\n    upstream_connections: 0\n    in_flight: 1000000\n  per_connection:\n    h2_streams: 0\n",
    )
    .expect_err("must not load")
    .to_string();
    let lines: Vec<&str> = errors.lines().collect();
    assert_eq!(lines.len(), 3, "{errors}");
    assert!(
        lines[0].starts_with("k.yaml:8:27 limits.per_task.upstream_connections: 0 would refuse every request; write a number from 1 to 4096"),
        "{errors}"
    );
    assert!(
        lines[1].starts_with("k.yaml:9:16 limits.per_task.in_flight: 1000000 is more than keyswap can honour; write a number from 1 to 10000"),
        "{errors}"
    );
    assert!(
        lines[2].starts_with("k.yaml:11:17 limits.per_connection.h2_streams: 0 would refuse every request; write a number from 1 to 1000"),
        "{errors}"
    );
}

#[test]
fn unknown_keys_and_wrong_types_are_refused() {
    let unknown = load("limits:\n  per_task:\n    connections: 4\n")
        .expect_err("unknown key")
        .to_string();
    assert!(unknown.contains("connections"), "{unknown}");
    let negative = load("limits:\n  per_connection:\n    h2_streams: -1\n")
        .expect_err("negative")
        .to_string();
    assert!(
        negative.contains("limits.per_connection.h2_streams"),
        "{negative}"
    );
}

#[test]
fn more_connections_than_requests_is_a_warning() {
    let config = load("limits:\n  per_task:\n    upstream_connections: 10\n    in_flight: 5\n")
        .expect("loads");
    let about_limits: Vec<&String> = config
        .warnings
        .iter()
        .filter(|w| w.contains("limits"))
        .collect();
    assert_eq!(about_limits.len(), 1, "{:?}", config.warnings);
    assert!(
        about_limits[0].starts_with(
            "k.yaml:8:5 limits.per_task: upstream_connections (10) is more than in_flight (5)"
        ),
        "{about_limits:?}"
    );
}
