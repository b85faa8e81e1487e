//! Usage limits on a rule: a request `budget:` over a task's lifetime and a `rate:` (token
//! bucket), and the rule *key* that names a rule across config reloads so that a running
//! task's counts survive a reload.
//!
//! Pure values: the counting itself is the proxy's. A key is built from what a rule matches
//! (scheme, host, port, methods, paths) or from its explicit `id:`, never from a secret.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use crate::host::HostPattern;
use crate::model::Scheme;
use crate::path::PathPatterns;

/// `budget:` of a rule: at most this many requests per task, over the task's lifetime.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Budget {
    pub requests: u64,
}

/// The unit of a [`Rate`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RatePer {
    Second,
    Minute,
    Hour,
}

impl RatePer {
    pub fn duration(self) -> Duration {
        match self {
            RatePer::Second => Duration::from_secs(1),
            RatePer::Minute => Duration::from_secs(60),
            RatePer::Hour => Duration::from_secs(3600),
        }
    }

    fn suffix(self) -> &'static str {
        match self {
            RatePer::Second => "s",
            RatePer::Minute => "m",
            RatePer::Hour => "h",
        }
    }
}

/// `rate:` of a rule (`5/s`, `100/m`, `1000/h`): a token bucket per task and rule that
/// refills at `count` per `per` and holds one second's worth (at least one request).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: RatePer,
}

/// Why a `rate:` text was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    /// Not `N/s`, `N/m` or `N/h`.
    Form,
    /// `0/s`: would refuse every request.
    Zero,
}

impl Rate {
    /// Parses `N/s`, `N/m` or `N/h` (N a whole number from 1 to 4294967295; spaces around
    /// the parts are allowed).
    pub fn parse(text: &str) -> Result<Rate, RateError> {
        let (count, unit) = text.split_once('/').ok_or(RateError::Form)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(RateError::Form);
        }
        let count: u32 = count.parse().map_err(|_| RateError::Form)?;
        let per = match unit.trim() {
            "s" => RatePer::Second,
            "m" => RatePer::Minute,
            "h" => RatePer::Hour,
            _ => return Err(RateError::Form),
        };
        let count = NonZeroU32::new(count).ok_or(RateError::Zero)?;
        Ok(Rate { count, per })
    }

    /// Time for one request's worth of the bucket to refill.
    pub fn replenish_one_per(self) -> Duration {
        self.per.duration() / self.count.get()
    }

    /// The bucket's size: one second's worth of requests, at least one.
    pub fn burst(self) -> NonZeroU32 {
        let per_second = self.count.get() / self.per.duration().as_secs() as u32;
        NonZeroU32::new(per_second).unwrap_or(NonZeroU32::MIN)
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.per.suffix())
    }
}

/// The key of a rule without `id:`: `scheme://host:port METHODS PATHS`, methods sorted
/// (`*` = any), paths sorted (`/**` = any). Two rules that match exactly the same requests
/// get the same key; a change to what a rule matches gives it a new one.
pub fn derived_rule_key(
    scheme: Scheme,
    host: &HostPattern,
    port: Option<u16>,
    methods: Option<&[String]>,
    paths: Option<&PathPatterns>,
) -> Arc<str> {
    let port = port.unwrap_or(scheme.default_port());
    let methods = match methods {
        Some(list) => {
            let mut list = list.to_vec();
            list.sort();
            list.dedup();
            list.join(",")
        }
        None => "*".to_string(),
    };
    let paths = match paths {
        Some(p) => {
            let mut list = p.sources().to_vec();
            list.sort();
            list.dedup();
            list.join(",")
        }
        None => "/**".to_string(),
    };
    Arc::from(format!(
        "{}://{host}:{port} {methods} {paths}",
        scheme.as_str()
    ))
}

/// Whether `id` may be a rule's `id:`: 1 to 64 characters of A-Z, a-z, 0-9, `.`, `_`, `-`
/// (it is shown in listings and used as a metrics label).
pub fn valid_rule_id(id: &str) -> bool {
    crate::model::valid_task_id(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_in_three_units() {
        let r = Rate::parse("5/s").unwrap();
        assert_eq!((r.count.get(), r.per), (5, RatePer::Second));
        assert_eq!(r.to_string(), "5/s");
        assert_eq!(r.burst().get(), 5);
        assert_eq!(r.replenish_one_per(), Duration::from_millis(200));
        let m = Rate::parse(" 120 / m ").unwrap();
        assert_eq!(
            (m.count.get(), m.per, m.burst().get()),
            (120, RatePer::Minute, 2)
        );
        let h = Rate::parse("10/h").unwrap();
        assert_eq!((h.per, h.burst().get()), (RatePer::Hour, 1));
        assert_eq!(h.replenish_one_per(), Duration::from_secs(360));
    }

    #[test]
    fn bad_rates_are_refused() {
        for bad in [
            "5",
            "5/d",
            "/s",
            "five/s",
            "-1/s",
            "1.5/s",
            "5/sec",
            "99999999999/s",
            "",
        ] {
            assert_eq!(Rate::parse(bad), Err(RateError::Form), "{bad}");
        }
        assert_eq!(Rate::parse("0/s"), Err(RateError::Zero));
    }

    #[test]
    fn derived_keys_ignore_order_and_name_defaults() {
        let host = HostPattern::parse("api.example.com").unwrap();
        let a = derived_rule_key(
            Scheme::Https,
            &host,
            None,
            Some(&["POST".into(), "GET".into()]),
            Some(&PathPatterns::new(&["/b/**", "/a"]).unwrap()),
        );
        let b = derived_rule_key(
            Scheme::Https,
            &host,
            Some(443),
            Some(&["GET".into(), "POST".into()]),
            Some(&PathPatterns::new(&["/a", "/b/**"]).unwrap()),
        );
        assert_eq!(a, b);
        assert_eq!(&*a, "https://api.example.com:443 GET,POST /a,/b/**");
        let any = derived_rule_key(Scheme::Http, &host, None, None, None);
        assert_eq!(&*any, "http://api.example.com:80 * /**");
    }
}
