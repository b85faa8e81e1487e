//! What an AWS Signature Version 4 request says about itself: the `Authorization` header's
//! algorithm, key id, credential scope and signed headers, the payload hash the client
//! declared in `x-amz-content-sha256`, a presigned URL's credential, and whether a host name
//! agrees with a credential scope. Pure parsing: no keys, no signing (that is
//! [`crate::pipeline::sign_aws`]'s).

use percent_encoding::percent_decode_str;

/// The algorithms of an AWS `Authorization` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// `AWS4-HMAC-SHA256`: SigV4, scoped to one region.
    HmacSha256,
    /// `AWS4-ECDSA-P256-SHA256`: SigV4A, scoped to a set of regions.
    EcdsaP256,
}

/// An `Authorization: AWS4-… Credential=KEY/DATE/REGION/SERVICE/aws4_request,
/// SignedHeaders=a;b, Signature=…` header, as sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    pub algorithm: Algorithm,
    pub key_id: String,
    /// SigV4 only (SigV4A's scope has no region).
    pub region: String,
    pub service: String,
    /// Lower-case header names, as listed.
    pub signed_headers: Vec<String>,
}

/// Parses an AWS SigV4 or SigV4A `Authorization` value; `None` if it is neither, or is
/// malformed (then it is no signature keyswap knows, and passes as any header would).
pub fn parse_authorization(value: &str) -> Option<Authorization> {
    let (scheme, rest) = value.trim().split_once(' ')?;
    let algorithm = match scheme {
        "AWS4-HMAC-SHA256" => Algorithm::HmacSha256,
        "AWS4-ECDSA-P256-SHA256" => Algorithm::EcdsaP256,
        _ => return None,
    };
    let mut credential = None;
    let mut signed = None;
    for field in rest.split(',') {
        let (key, value) = field.trim().split_once('=')?;
        match key.trim() {
            "Credential" => credential = Some(value.trim()),
            "SignedHeaders" => signed = Some(value.trim()),
            _ => {}
        }
    }
    let scope: Vec<&str> = credential?.split('/').collect();
    let (key_id, region, service) = match (algorithm, scope.as_slice()) {
        (Algorithm::HmacSha256, [key, _date, region, service, "aws4_request"]) => {
            (*key, *region, *service)
        }
        (Algorithm::EcdsaP256, [key, _date, service, "aws4_request"]) => (*key, "", *service),
        _ => return None,
    };
    Some(Authorization {
        algorithm,
        key_id: key_id.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed?
            .split(';')
            .filter(|h| !h.is_empty())
            .map(str::to_ascii_lowercase)
            .collect(),
    })
}

/// The payload hash a client declared in `x-amz-content-sha256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// A hex SHA-256 of the body (or the header's other accepted forms): signed as declared,
    /// the body streams as it is.
    Declared(String),
    /// No header (most services but S3): the body's hash is computed before signing.
    Absent,
}

/// Why a declared payload hash is not re-signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PayloadRefused {
    /// `STREAMING-AWS4-HMAC-SHA256-PAYLOAD[-TRAILER]` and the SigV4A forms: every chunk
    /// carries a signature chained from the header's, which keyswap would have to redo.
    ChunkSigned,
    /// Anything else that is not a hex digest.
    Unknown,
}

/// Reads `x-amz-content-sha256`: a hex SHA-256, `UNSIGNED-PAYLOAD` or
/// `STREAMING-UNSIGNED-PAYLOAD-TRAILER` (aws-chunked with unsigned chunks and a checksum
/// trailer, as current SDKs upload) are signed as declared.
pub fn payload(value: Option<&str>) -> Result<Payload, PayloadRefused> {
    let Some(value) = value else {
        return Ok(Payload::Absent);
    };
    let value = value.trim();
    let hex = value.len() == 64 && value.bytes().all(|b| b.is_ascii_hexdigit());
    if hex || value == "UNSIGNED-PAYLOAD" || value == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" {
        // Kept as sent: the upstream compares the header with the signed hash as they are.
        Ok(Payload::Declared(value.to_string()))
    } else if value.starts_with("STREAMING-") {
        Err(PayloadRefused::ChunkSigned)
    } else {
        Err(PayloadRefused::Unknown)
    }
}

/// The key id of a presigned URL's `X-Amz-Credential` query parameter (name matched
/// regardless of case, value percent-decoded), if the query has one.
pub fn presigned_key_id(query: &str) -> Option<String> {
    query.split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        if !name.eq_ignore_ascii_case("X-Amz-Credential") {
            return None;
        }
        let decoded = percent_decode_str(value).decode_utf8_lossy();
        Some(decoded.split('/').next().unwrap_or("").to_string())
    })
}

/// Whether `host` is an AWS endpoint of `service` in `region`: under `amazonaws.com` (or
/// `amazonaws.com.cn`), one label naming the service (`s3`, `bedrock-runtime` for `bedrock`,
/// legacy `s3-us-west-2`), and the region named by a label, or no region in the name at all
/// for a global endpoint signed for us-east-1 (`s3.amazonaws.com`, `sts.amazonaws.com`,
/// `iam.amazonaws.com`) or for cn-north-1 (`*.amazonaws.com.cn`).
pub fn host_agrees(host: &str, region: &str, service: &str) -> bool {
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    let (labels, china) = if let Some(rest) = host.strip_suffix(".amazonaws.com") {
        (rest, false)
    } else if let Some(rest) = host.strip_suffix(".amazonaws.com.cn") {
        (rest, true)
    } else {
        return false;
    };
    if service.is_empty() || region.is_empty() {
        return false;
    }
    let labels: Vec<&str> = labels.split('.').collect();
    let names_service = |label: &str| {
        label == service
            || label
                .strip_prefix(service)
                .is_some_and(|rest| rest.starts_with('-'))
    };
    if !labels.iter().any(|l| names_service(l)) {
        return false;
    }
    let names_region = |label: &str| {
        label == region
            || label
                .strip_suffix(region)
                .is_some_and(|rest| rest.ends_with('-') && names_service(&rest[..rest.len() - 1]))
    };
    if labels.iter().any(|l| names_region(l)) {
        return true;
    }
    let global = if china { "cn-north-1" } else { "us-east-1" };
    region == global && !labels.iter().any(|l| looks_like_region(l))
}

/// `us-east-1`, `eu-central-2`, `us-gov-west-1`, also inside `s3-us-west-2`.
fn looks_like_region(label: &str) -> bool {
    let parts: Vec<&str> = label.split('-').collect();
    parts.len() >= 3
        && parts
            .last()
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
        && parts
            .iter()
            .any(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_sigv4_and_sigv4a() {
        let v4 = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=AKIAEXAMPLE/20260101/us-east-1/s3/aws4_request, \
             SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=abcd",
        )
        .unwrap();
        assert_eq!(v4.algorithm, Algorithm::HmacSha256);
        assert_eq!(v4.key_id, "AKIAEXAMPLE");
        assert_eq!(
            (v4.region.as_str(), v4.service.as_str()),
            ("us-east-1", "s3")
        );
        assert_eq!(
            v4.signed_headers,
            ["host", "x-amz-content-sha256", "x-amz-date"]
        );
        let v4a = parse_authorization(
            "AWS4-ECDSA-P256-SHA256 Credential=AKIAEXAMPLE/20260101/s3/aws4_request,SignedHeaders=host,Signature=ab",
        )
        .unwrap();
        assert_eq!(v4a.algorithm, Algorithm::EcdsaP256);
        assert!(parse_authorization("Bearer x").is_none());
        assert!(parse_authorization("AWS4-HMAC-SHA256 Credential=A/B").is_none());
    }

    #[test]
    fn payload_forms() {
        let hex = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(payload(Some(hex)), Ok(Payload::Declared(hex.into())));
        assert!(payload(Some("UNSIGNED-PAYLOAD")).is_ok());
        assert!(payload(Some("STREAMING-UNSIGNED-PAYLOAD-TRAILER")).is_ok());
        assert_eq!(
            payload(Some("STREAMING-AWS4-HMAC-SHA256-PAYLOAD")),
            Err(PayloadRefused::ChunkSigned)
        );
        assert_eq!(payload(Some("nope")), Err(PayloadRefused::Unknown));
        assert_eq!(payload(None), Ok(Payload::Absent));
    }

    #[test]
    fn presigned() {
        let q = "X-Amz-Algorithm=AWS4-HMAC-SHA256&x-amz-credential=AKIAX%2F20260101%2Fus-east-1%2Fs3%2Faws4_request";
        assert_eq!(presigned_key_id(q).as_deref(), Some("AKIAX"));
        assert_eq!(presigned_key_id("a=b"), None);
    }

    #[test]
    fn hosts_and_scopes() {
        assert!(host_agrees("s3.amazonaws.com", "us-east-1", "s3"));
        assert!(host_agrees("bucket.s3.amazonaws.com", "us-east-1", "s3"));
        assert!(host_agrees(
            "bucket.s3.eu-west-1.amazonaws.com",
            "eu-west-1",
            "s3"
        ));
        assert!(host_agrees("s3-us-west-2.amazonaws.com", "us-west-2", "s3"));
        assert!(host_agrees("sts.amazonaws.com", "us-east-1", "sts"));
        assert!(host_agrees(
            "bedrock-runtime.us-west-2.amazonaws.com",
            "us-west-2",
            "bedrock"
        ));
        assert!(!host_agrees(
            "s3.eu-west-1.amazonaws.com",
            "us-east-1",
            "s3"
        ));
        assert!(!host_agrees("s3.amazonaws.com", "eu-west-1", "s3"));
        assert!(!host_agrees("s3.amazonaws.com", "us-east-1", "sts"));
        assert!(!host_agrees("example.com", "us-east-1", "s3"));
        assert!(!host_agrees(
            "s3.amazonaws.com.evil.test",
            "us-east-1",
            "s3"
        ));
    }
}
