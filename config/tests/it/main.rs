//! The integration tests of this crate, one module per file, linked into one binary
//! (each binary links hyper, rustls and tokio again, and a link is most of a build).

mod approval;
mod aws;
mod fairness;
mod fixtures;
mod lifecycle;
mod load;
mod matching;
mod properties;
mod sandbox;
mod schema;
mod transparent;

/// The crate directory, which the fixtures' relative paths (`from_file`, `extra_roots`,
/// `tasks_dir`) start from, as the config's do from the process's working directory. Cargo
/// runs integration tests there; this checks it and never changes it (the tests share one
/// process, so a `set_current_dir` would move every other test too).
fn in_crate_dir() -> std::path::PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let cwd = std::env::current_dir().expect("the working directory");
    assert_eq!(
        cwd.canonicalize().ok(),
        dir.canonicalize().ok(),
        "run these tests from the crate directory (cargo test does)"
    );
    dir
}
