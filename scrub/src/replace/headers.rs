//! Scrubbing a header map (response headers, trailers) with a [`Replacer`].

use http::HeaderMap;

use super::Replacer;

impl Replacer {
    /// Scrubs a header map (response headers or trailers): replaces matches in every value,
    /// and drops every header whose *name* contains a pattern (names cannot take a
    /// replacement: it need not be a valid token, and a renamed header means nothing to the
    /// client). Returns how many headers were dropped. Values stay valid: replacements are
    /// header-safe; a value that would not be is dropped rather than kept unscrubbed.
    pub fn replace_in_headers(&self, headers: &mut HeaderMap) -> usize {
        if self.is_empty() {
            return 0;
        }
        let dirty = headers.iter().any(|(n, v)| {
            self.contains_any(n.as_str().as_bytes()) || self.contains_any(v.as_bytes())
        });
        if !dirty {
            return 0;
        }
        let mut dropped = 0;
        let mut name = None;
        let mut scrubbed = HeaderMap::with_capacity(headers.len());
        for (next_name, value) in std::mem::take(headers) {
            // `into_iter` names only the first value of each header.
            if next_name.is_some() {
                name = next_name;
            }
            let Some(name) = name.as_ref() else { continue };
            if self.contains_any(name.as_str().as_bytes()) {
                dropped += 1;
                continue;
            }
            let value = match self.replace_all(value.as_bytes()) {
                None => value,
                Some(replaced) => match http::HeaderValue::from_bytes(&replaced) {
                    Ok(mut new_value) => {
                        new_value.set_sensitive(value.is_sensitive());
                        new_value
                    }
                    Err(_) => {
                        dropped += 1;
                        continue;
                    }
                },
            };
            scrubbed.append(name.clone(), value);
        }
        *headers = scrubbed;
        dropped
    }
}
