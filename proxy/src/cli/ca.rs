//! `keyswap ca export`: print or write the local CA's certificate, creating the CA first if
//! needed. Reads only the config's `ca_dir`; never touches the CA key beyond creating it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use keyswap_certs::CertificateAuthority;

pub(super) fn ca_export(
    config: &Path,
    ca_dir: Option<PathBuf>,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let dir = match ca_dir {
        Some(dir) => dir,
        // Only `ca_dir` is read: exporting the certificate needs no secret's variable.
        None => keyswap_config::ca_dir_of(config)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| {
                format!("reading {} for ca_dir (or pass --ca-dir)", config.display())
            })?,
    };
    let ca = CertificateAuthority::load_or_create(&dir)?;
    match out {
        Some(path) => std::fs::write(path, ca.cert_pem())
            .with_context(|| format!("writing {}", path.display()))?,
        None => print!("{}", ca.cert_pem()),
    }
    Ok(())
}
