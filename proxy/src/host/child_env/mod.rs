//! The environment of a child process that `keyswap exec` / `keyswap env` points at the proxy:
//! proxy URLs every common runtime reads, and trust files that make those runtimes accept
//! keyswap's CA ([`write_trust_files`], [`task_env`], [`shell_exports`]).
//!
//! This module owns the variable names; [`trust_files`] owns the trust directory's files
//! (keyswap's CA, the bundle with the platform roots, the Java trust store). It never reads or
//! formats a real secret: the only credential it handles is the task token, which goes into the
//! proxy URL's userinfo and nowhere else (not into `JAVA_TOOL_OPTIONS`, which the JVM echoes to
//! stderr on start).
//!
//! # What Java needs — verified with OpenJDK 17.0.15 (and Temurin 25) by `tests/tests/it/java_client.rs`
//! - The JVM ignores `HTTPS_PROXY`; it reads the `https.proxyHost`/`https.proxyPort` (and
//!   `http.`) system properties, which `JAVA_TOOL_OPTIONS` sets. `java.net.http.HttpClient`
//!   uses them through `ProxySelector.getDefault()`, also when the program never calls
//!   `HttpClient.Builder.proxy(..)`. Through the proxy it sends `CONNECT host:443` by name, so
//!   the JVM never resolves an upstream name itself.
//! - Java has no property for proxy credentials: the program must supply them.
//!   - What works: setting `Proxy-Authorization: Basic base64(task:token)` on the
//!     `HttpRequest`, with no `Authenticator`. HttpClient sends it preemptively on the CONNECT
//!     and keeps `Proxy-*` headers off the tunnelled requests; the application's
//!     `Authorization` header (the placeholder) goes to the origin and keyswap swaps it.
//!   - What does not, on JDK 17: an `Authenticator` answering `RequestorType.PROXY`. It does
//!     answer keyswap's `407` (`Proxy-Authenticate: Basic`) and open the tunnel, but while a
//!     client has an `Authenticator`, JDK 17 drops every user-set `Authorization` and
//!     `Proxy-Authorization` header (`jdk.internal.net.http.common.Utils.CONTEXT_RESTRICTED`),
//!     whatever it returns for `RequestorType.SERVER`: the request reaches the origin without
//!     the placeholder. JDK 25 keeps the header.
//!   - With no credentials the program receives keyswap's `407` as its response.
//! - Basic proxy authentication for tunnels is disabled by default since 8u111
//!   (`jdk.http.auth.tunneling.disabledSchemes=Basic` in `net.properties`): HttpClient then
//!   strips a user-set Basic `Proxy-Authorization` from the CONNECT and the program gets the
//!   `407`. `JAVA_TOOL_OPTIONS` sets that property empty (and
//!   `jdk.http.auth.proxying.disabledSchemes`, already empty by default, for plain-HTTP proxying).
//! - `javax.net.ssl.trustStore` *replaces* the JDK's `cacerts`, hence the platform roots in the
//!   store. `keytool -list -storetype PKCS12` shows every entry as `trustedCertEntry`.
//! - `JAVA_TOOL_OPTIONS` is split on whitespace, but HotSpot honours single and double quotes in
//!   it (`-Dp='a b'`; `-Dp=x"y z"` gives `xy z`; quoted runs concatenate; no backslash escapes),
//!   so a trust store path with spaces or quotes is quoted rather than refused. Other JVMs'
//!   handling of quotes is not verified.
//! - The JVM prints `Picked up JAVA_TOOL_OPTIONS: ...` on stderr, which is why no credential
//!   is put there.
//! - Not verified: `HttpURLConnection` and third-party clients (OkHttp, Apache HttpClient),
//!   which each take proxy credentials their own way.

mod trust_files;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use trust_files::{
    write_trust_files, TrustFiles, BUNDLE_FILE, CA_FILE, JAVA_TRUST_STORE_FILE,
    TRUST_STORE_PASSWORD,
};

/// Hosts a child reaches directly, in the `NO_PROXY` syntax most runtimes share.
/// The variables that carry the proxy URL: both cases where clients differ in which they
/// read, and `ALL_PROXY`.
const PROXY_VARIABLES: [&str; 5] = [
    "HTTPS_PROXY",
    "HTTP_PROXY",
    "https_proxy",
    "http_proxy",
    "ALL_PROXY",
];

pub const NO_PROXY: &str = "localhost,127.0.0.1,::1";
/// The same hosts in Java's `http.nonProxyHosts` syntax.
const JAVA_NON_PROXY_HOSTS: &str = "localhost|127.0.0.1|[::1]";

/// Variables that take a PEM bundle which replaces the runtime's own roots.
const BUNDLE_VARS: &[&str] = &[
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "AWS_CA_BUNDLE",
    "DENO_CERT",
    "CARGO_HTTP_CAINFO",
];

/// Where the child finds the proxy, and as whom it speaks.
#[derive(Clone, Copy, Debug)]
pub struct ProxyEndpoint<'a> {
    pub task: &'a str,
    pub token: Option<&'a str>,
    /// The proxy's listening address; an unspecified IP (`0.0.0.0`, `::`) means loopback.
    pub addr: SocketAddr,
}

/// The variables that point a child's runtimes at the proxy and make them trust keyswap's CA,
/// plus each `(variable, placeholder)` pair as given.
pub fn task_env(
    proxy: ProxyEndpoint<'_>,
    trust: &TrustFiles,
    placeholders: &[(String, String)],
) -> BTreeMap<String, String> {
    let ip = match proxy.addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let port = proxy.addr.port();
    let url_host = match ip {
        IpAddr::V4(ip) => ip.to_string(),
        IpAddr::V6(ip) => format!("[{ip}]"),
    };
    let mut userinfo = percent_encode_userinfo(proxy.task);
    if let Some(token) = proxy.token {
        userinfo.push(':');
        userinfo.push_str(&percent_encode_userinfo(token));
    }
    let proxy_url = format!("http://{userinfo}@{url_host}:{port}");

    let mut env = BTreeMap::new();
    for name in PROXY_VARIABLES {
        env.insert(name.to_string(), proxy_url.clone());
    }
    env.insert("NO_PROXY".to_string(), NO_PROXY.to_string());
    env.insert("no_proxy".to_string(), NO_PROXY.to_string());
    let bundle = trust.bundle_pem.display().to_string();
    for name in BUNDLE_VARS {
        env.insert(name.to_string(), bundle.clone());
    }
    env.insert(
        "NODE_EXTRA_CA_CERTS".to_string(),
        trust.ca_pem.display().to_string(),
    );
    // Node 24+ reads HTTP(S)_PROXY for its built-in fetch and http(s) agents only with this.
    env.insert("NODE_USE_ENV_PROXY".to_string(), "1".to_string());
    env.insert(
        "JAVA_TOOL_OPTIONS".to_string(),
        java_tool_options(&ip.to_string(), port, trust),
    );
    for (name, placeholder) in placeholders {
        env.insert(name.clone(), placeholder.clone());
    }
    env
}

fn java_tool_options(host: &str, port: u16, trust: &TrustFiles) -> String {
    let store = java_quote(&trust.java_truststore.display().to_string());
    let password = java_quote(&trust.java_truststore_password);
    [
        format!("-Dhttps.proxyHost={host}"),
        format!("-Dhttps.proxyPort={port}"),
        format!("-Dhttp.proxyHost={host}"),
        format!("-Dhttp.proxyPort={port}"),
        format!("-Dhttp.nonProxyHosts={JAVA_NON_PROXY_HOSTS}"),
        format!("-Djavax.net.ssl.trustStore={store}"),
        "-Djavax.net.ssl.trustStoreType=PKCS12".to_string(),
        format!("-Djavax.net.ssl.trustStorePassword={password}"),
        // The JDK refuses Basic for proxy tunnels unless these are emptied (see module docs).
        "-Djdk.http.auth.tunneling.disabledSchemes=".to_string(),
        "-Djdk.http.auth.proxying.disabledSchemes=".to_string(),
    ]
    .join(" ")
}

/// Quotes `value` for `JAVA_TOOL_OPTIONS` when it holds whitespace or quotes. HotSpot splits
/// the variable on whitespace outside quotes, strips the quotes and joins adjacent quoted runs,
/// with no backslash escapes: a `'` is written as `"'"` between single-quoted runs.
fn java_quote(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '"');
    if plain {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', "'\"'\"'"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters: clients decode userinfo
/// before building `Proxy-Authorization`, and `:`/`@` in a task or token must not split it.
fn percent_encode_userinfo(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// `export NAME='value'` lines for a POSIX shell (`eval "$(keyswap env ...)"`). A name that is
/// not a portable variable name (`[A-Za-z_][A-Za-z0-9_]*`) is left out: it could not be exported
/// and could break out of the line.
pub fn shell_exports(env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    for (name, value) in env {
        if !is_env_name(name) {
            continue;
        }
        out.push_str("export ");
        out.push_str(name);
        out.push_str("='");
        out.push_str(&value.replace('\'', "'\\''"));
        out.push_str("'\n");
    }
    out
}

/// Whether `name` is a portable environment variable name.
pub fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn trust(dir: &str) -> TrustFiles {
        TrustFiles {
            ca_pem: PathBuf::from(dir).join(CA_FILE),
            bundle_pem: PathBuf::from(dir).join(BUNDLE_FILE),
            java_truststore: PathBuf::from(dir).join(JAVA_TRUST_STORE_FILE),
            java_truststore_password: TRUST_STORE_PASSWORD.to_string(),
            warnings: Vec::new(),
        }
    }

    fn endpoint(addr: &str, token: Option<&'static str>) -> ProxyEndpoint<'static> {
        ProxyEndpoint {
            task: "fix-42",
            token,
            addr: addr.parse().expect("addr"),
        }
    }

    #[test]
    fn proxy_variables_carry_task_and_token() {
        let env = task_env(
            endpoint("127.0.0.1:8080", Some("tok")),
            &trust("/run/ks"),
            &[],
        );
        for name in ["HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy"] {
            assert_eq!(env[name], "http://fix-42:tok@127.0.0.1:8080", "{name}");
        }
        assert_eq!(env["ALL_PROXY"], "http://fix-42:tok@127.0.0.1:8080");
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1");
        assert_eq!(env["no_proxy"], "localhost,127.0.0.1,::1");
        assert_eq!(env["NODE_USE_ENV_PROXY"], "1");
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], "/run/ks/keyswap-ca.pem");
        for name in BUNDLE_VARS {
            assert_eq!(env[*name], "/run/ks/bundle.pem", "{name}");
        }
    }

    #[test]
    fn exactly_the_documented_variables() {
        let env = task_env(
            endpoint("127.0.0.1:8080", None),
            &trust("/run/ks"),
            &[("GITHUB_TOKEN".to_string(), "ghp_placeholder".to_string())],
        );
        let mut expected: Vec<&str> = vec![
            "HTTPS_PROXY",
            "HTTP_PROXY",
            "https_proxy",
            "http_proxy",
            "ALL_PROXY",
            "NO_PROXY",
            "no_proxy",
            "NODE_EXTRA_CA_CERTS",
            "NODE_USE_ENV_PROXY",
            "JAVA_TOOL_OPTIONS",
            "GITHUB_TOKEN",
        ];
        expected.extend(BUNDLE_VARS);
        expected.sort_unstable();
        let names: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(names, expected);
        assert_eq!(env["GITHUB_TOKEN"], "ghp_placeholder");
        assert_eq!(env["HTTPS_PROXY"], "http://fix-42@127.0.0.1:8080");
    }

    #[test]
    fn unspecified_and_ipv6_addresses_become_loopback_urls() {
        let t = trust("/t");
        let v4 = task_env(endpoint("0.0.0.0:3128", None), &t, &[]);
        assert_eq!(v4["HTTPS_PROXY"], "http://fix-42@127.0.0.1:3128");
        let v6 = task_env(endpoint("[::]:3128", Some("k")), &t, &[]);
        assert_eq!(v6["HTTPS_PROXY"], "http://fix-42:k@[::1]:3128");
        assert!(
            v6["JAVA_TOOL_OPTIONS"].starts_with("-Dhttps.proxyHost=::1 -Dhttps.proxyPort=3128 ")
        );
        let v6 = task_env(endpoint("[fd00::5]:9", None), &t, &[]);
        assert_eq!(v6["HTTPS_PROXY"], "http://fix-42@[fd00::5]:9");
    }

    #[test]
    fn userinfo_is_percent_encoded() {
        let env = task_env(
            ProxyEndpoint {
                task: "a b@c",
                token: Some("x:y/z%~"),
                addr: "127.0.0.1:1".parse().expect("addr"),
            },
            &trust("/t"),
            &[],
        );
        assert_eq!(
            env["HTTPS_PROXY"],
            "http://a%20b%40c:x%3Ay%2Fz%25~@127.0.0.1:1"
        );
    }

    #[test]
    fn java_tool_options_point_at_proxy_and_store() {
        let env = task_env(
            endpoint("127.0.0.1:8080", Some("secret-token")),
            &trust("/run/ks"),
            &[],
        );
        assert_eq!(
            env["JAVA_TOOL_OPTIONS"],
            "-Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort=8080 \
             -Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort=8080 \
             -Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1] \
             -Djavax.net.ssl.trustStore=/run/ks/java-truststore.p12 \
             -Djavax.net.ssl.trustStoreType=PKCS12 \
             -Djavax.net.ssl.trustStorePassword=keyswap-public \
             -Djdk.http.auth.tunneling.disabledSchemes= \
             -Djdk.http.auth.proxying.disabledSchemes="
        );
        // The JVM echoes JAVA_TOOL_OPTIONS on stderr: no credential goes there.
        assert!(!env["JAVA_TOOL_OPTIONS"].contains("secret-token"));
    }

    #[test]
    fn java_paths_with_spaces_and_quotes_are_quoted() {
        assert_eq!(java_quote("/a/b.p12"), "/a/b.p12");
        assert_eq!(java_quote("/a b/c.p12"), "'/a b/c.p12'");
        assert_eq!(java_quote("/it's/x"), "'/it'\"'\"'s/x'");
        assert_eq!(java_quote("say \"hi\""), "'say \"hi\"'");
        assert_eq!(java_quote(""), "''");
    }

    #[test]
    fn shell_exports_quote_single_quotes() {
        let env = BTreeMap::from([
            ("A".to_string(), "plain".to_string()),
            ("B".to_string(), "it's $HOME `x` \"q\"\nnext".to_string()),
            ("bad name".to_string(), "x".to_string()),
            ("1X".to_string(), "x".to_string()),
            ("X;rm".to_string(), "x".to_string()),
        ]);
        assert_eq!(
            shell_exports(&env),
            "export A='plain'\nexport B='it'\\''s $HOME `x` \"q\"\nnext'\n"
        );
    }

    #[test]
    fn shell_exports_round_trip_through_sh() {
        let value = "it's $HOME `echo no` \"q\" \\ \n end";
        let env = BTreeMap::from([("KS_T".to_string(), value.to_string())]);
        let script = format!("{}printf %s \"$KS_T\"", shell_exports(&env));
        let Ok(out) = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .output()
        else {
            eprintln!("NOTICE: no sh on this machine; round trip not checked");
            return;
        };
        assert_eq!(String::from_utf8_lossy(&out.stdout), value);
    }
}
