//! Request signers: QingCloud signature version 1 and Tencent Cloud TC3-HMAC-SHA256.
//!
//! Both are pure functions of their inputs so that the vendors' published test
//! vectors can be reproduced byte for byte (see `tests` below), and so that the
//! emulator verifies requests with exactly the code the client signs them with.

use base64::Engine as _;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// The request URI every QingCloud-style action is sent to.
pub const QC_URI: &str = "/iaas/";

/// Characters that stay literal: `A-Z a-z 0-9 - _ . ~` (RFC 3986 unreserved).
const QC_ENCODE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Percent-encodes a name or value the way signature v1 requires: unreserved
/// characters literal, everything else `%XX` with upper-case hex, space as `%20`.
pub fn percent_encode(s: &str) -> String {
    utf8_percent_encode(s, QC_ENCODE).to_string()
}

/// HMAC flavour of a v1 signature (`signature_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SignatureMethod {
    /// `HmacSHA256`, the default and the only one the emulator issues keys for by default.
    #[default]
    HmacSha256,
    /// `HmacSHA1`, still accepted by QingCloud.
    HmacSha1,
}

impl SignatureMethod {
    /// The wire name of the method.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha256 => "HmacSHA256",
            SignatureMethod::HmacSha1 => "HmacSHA1",
        }
    }

    /// Parses the wire name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "HmacSHA256" => Some(SignatureMethod::HmacSha256),
            "HmacSHA1" => Some(SignatureMethod::HmacSha1),
            _ => None,
        }
    }
}

/// Builds the canonical query: every parameter except `signature`, sorted by
/// name in byte order, names and values percent-encoded, joined with `&`.
pub fn canonical_query<K: AsRef<str>, V: AsRef<str>>(params: &[(K, V)]) -> String {
    let mut pairs: Vec<(&str, &str)> = params
        .iter()
        .map(|(k, v)| (k.as_ref(), v.as_ref()))
        .filter(|(k, _)| *k != "signature")
        .collect();
    // Stable sort keeps repeated names (never produced by our flattening) in order.
    pairs.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    let mut out = String::with_capacity(pairs.iter().map(|(k, v)| k.len() + v.len() + 2).sum());
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        out.push_str(&percent_encode(k));
        out.push('=');
        out.push_str(&percent_encode(v));
    }
    out
}

/// `METHOD\nURI\nCANONICAL_QUERY`.
pub fn string_to_sign(method: &str, uri: &str, canonical_query: &str) -> String {
    format!("{method}\n{uri}\n{canonical_query}")
}

/// Signs a string with the secret key; returns the base64 signature (not yet URL-encoded).
pub fn sign_v1_string(secret: &str, method: SignatureMethod, string_to_sign: &str) -> String {
    let raw = match method {
        SignatureMethod::HmacSha256 => hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes()),
        SignatureMethod::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
                .expect("HMAC accepts keys of any length");
            mac.update(string_to_sign.as_bytes());
            mac.finalize().into_bytes().to_vec()
        }
    };
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Signs a parameter list for `METHOD /iaas/` and returns the base64 signature.
pub fn sign_v1<K: AsRef<str>, V: AsRef<str>>(
    secret: &str,
    method: SignatureMethod,
    http_method: &str,
    uri: &str,
    params: &[(K, V)],
) -> String {
    let query = canonical_query(params);
    sign_v1_string(secret, method, &string_to_sign(http_method, uri, &query))
}

/// The full query string (or form body) to send: canonical query plus the
/// URL-encoded signature.
pub fn signed_query<K: AsRef<str>, V: AsRef<str>>(
    secret: &str,
    method: SignatureMethod,
    http_method: &str,
    uri: &str,
    params: &[(K, V)],
) -> String {
    let query = canonical_query(params);
    let sig = sign_v1_string(secret, method, &string_to_sign(http_method, uri, &query));
    format!("{query}&signature={}", percent_encode(&sig))
}

/// Constant-time comparison of two signatures (the emulator's verifier uses it).
pub fn signatures_equal(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC accepts keys of any length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Inputs of a TC3-HMAC-SHA256 signature for a POST with a JSON body.
#[derive(Debug, Clone)]
pub struct Tc3Request<'a> {
    /// Service name, the first label of the host (`cvm`).
    pub service: &'a str,
    /// Host header (`cvm.tencentcloudapi.com`).
    pub host: &'a str,
    /// Content type; `application/json; charset=utf-8` for POST JSON.
    pub content_type: &'a str,
    /// Exact body bytes.
    pub payload: &'a [u8],
    /// Unix seconds; also the `X-TC-Timestamp` header.
    pub timestamp: i64,
}

/// The parts of a TC3 signature, exposed for golden tests and debugging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tc3Signature {
    /// The canonical request that was hashed.
    pub canonical_request: String,
    /// The string that was signed.
    pub string_to_sign: String,
    /// Hex HMAC signature.
    pub signature: String,
    /// The complete `Authorization` header value.
    pub authorization: String,
}

/// UTC date (`YYYY-MM-DD`) of a Unix timestamp, as the TC3 credential scope needs.
pub fn tc3_date(timestamp: i64) -> String {
    let date = time::OffsetDateTime::from_unix_timestamp(timestamp)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .date();
    format!(
        "{:04}-{:02}-{:02}",
        date.year(),
        u8::from(date.month()),
        date.day()
    )
}

/// Computes a TC3-HMAC-SHA256 signature for a POST to `/` with signed headers
/// `content-type;host`.
pub fn tc3_sign(secret_id: &str, secret_key: &str, req: &Tc3Request<'_>) -> Tc3Signature {
    let signed_headers = "content-type;host";
    let canonical_headers = format!(
        "content-type:{}\nhost:{}\n",
        req.content_type.trim().to_ascii_lowercase(),
        req.host.trim().to_ascii_lowercase()
    );
    let canonical_request = format!(
        "POST\n/\n\n{canonical_headers}\n{signed_headers}\n{}",
        sha256_hex(req.payload)
    );
    let date = tc3_date(req.timestamp);
    let scope = format!("{date}/{}/tc3_request", req.service);
    let string_to_sign = format!(
        "TC3-HMAC-SHA256\n{}\n{scope}\n{}",
        req.timestamp,
        sha256_hex(canonical_request.as_bytes())
    );
    let k_date = hmac_sha256(format!("TC3{secret_key}").as_bytes(), date.as_bytes());
    let k_service = hmac_sha256(&k_date, req.service.as_bytes());
    let k_signing = hmac_sha256(&k_service, b"tc3_request");
    let signature = hex::encode(hmac_sha256(&k_signing, string_to_sign.as_bytes()));
    let authorization = format!(
        "TC3-HMAC-SHA256 Credential={secret_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
    );
    Tc3Signature {
        canonical_request,
        string_to_sign,
        signature,
        authorization,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn qingcloud_vector_params() -> Vec<(&'static str, &'static str)> {
        // Deliberately unsorted: the signer must sort.
        vec![
            ("count", "1"),
            ("vxnets.1", "vxnet-0"),
            ("zone", "pek3a"),
            ("instance_type", "small_b"),
            ("signature_version", "1"),
            ("signature_method", "HmacSHA256"),
            ("instance_name", "demo"),
            ("image_id", "centos64x86a"),
            ("login_mode", "passwd"),
            ("login_passwd", "QingCloud20130712"),
            ("version", "1"),
            ("access_key_id", "QYACCESSKEYIDEXAMPLE"),
            ("action", "RunInstances"),
            ("time_stamp", "2013-08-27T14:30:10Z"),
        ]
    }

    #[test]
    fn qingcloud_v1_golden_string_to_sign() {
        let q = canonical_query(&qingcloud_vector_params());
        assert_eq!(
            string_to_sign("GET", QC_URI, &q),
            "GET\n/iaas/\naccess_key_id=QYACCESSKEYIDEXAMPLE&action=RunInstances&count=1&image_id=centos64x86a&instance_name=demo&instance_type=small_b&login_mode=passwd&login_passwd=QingCloud20130712&signature_method=HmacSHA256&signature_version=1&time_stamp=2013-08-27T14%3A30%3A10Z&version=1&vxnets.1=vxnet-0&zone=pek3a"
        );
    }

    #[test]
    fn qingcloud_v1_golden_signature() {
        let sig = sign_v1(
            "SECRETACCESSKEY",
            SignatureMethod::HmacSha256,
            "GET",
            QC_URI,
            &qingcloud_vector_params(),
        );
        assert_eq!(sig, "byjccvWIvAftaq+oublemagH3bYAlDWxxLFAzAsyslw=");
        assert_eq!(
            percent_encode(&sig),
            "byjccvWIvAftaq%2BoublemagH3bYAlDWxxLFAzAsyslw%3D"
        );
        let wire = signed_query(
            "SECRETACCESSKEY",
            SignatureMethod::HmacSha256,
            "GET",
            QC_URI,
            &qingcloud_vector_params(),
        );
        assert!(wire.ends_with("&signature=byjccvWIvAftaq%2BoublemagH3bYAlDWxxLFAzAsyslw%3D"));
    }

    #[test]
    fn percent_encoding_rules() {
        assert_eq!(
            percent_encode("a b+c/d=e:f~g-h_i.j"),
            "a%20b%2Bc%2Fd%3De%3Af~g-h_i.j"
        );
        assert_eq!(percent_encode("é"), "%C3%A9");
        assert_eq!(percent_encode("*"), "%2A");
    }

    #[test]
    fn signature_excluded_and_byte_order() {
        let q = canonical_query(&[
            ("b", "1"),
            ("signature", "x"),
            ("B", "2"),
            ("a.10", "3"),
            ("a.2", "4"),
        ]);
        assert_eq!(q, "B=2&a.10=3&a.2=4&b=1");
    }

    #[test]
    fn hmac_sha1_differs_and_is_base64() {
        let p = [("action", "DescribeZones")];
        let a = sign_v1("k", SignatureMethod::HmacSha1, "GET", QC_URI, &p);
        let b = sign_v1("k", SignatureMethod::HmacSha256, "GET", QC_URI, &p);
        assert_ne!(a, b);
        assert_eq!(a.len(), 28); // 20 bytes of SHA-1 in base64
        assert_eq!(b.len(), 44);
    }

    const TC3_PAYLOAD: &str =
        r#"{"Limit": 1, "Filters": [{"Values": ["\u672a\u547d\u540d"], "Name": "instance-name"}]}"#;

    fn tc3_vector() -> Tc3Request<'static> {
        Tc3Request {
            service: "cvm",
            host: "cvm.tencentcloudapi.com",
            content_type: "application/json; charset=utf-8",
            payload: TC3_PAYLOAD.as_bytes(),
            timestamp: 1551113065,
        }
    }

    #[test]
    fn tc3_golden_hashes() {
        assert_eq!(
            sha256_hex(TC3_PAYLOAD.as_bytes()),
            "35e9c5b0e3ae67532d3c9f17ead6c90222632e5b1ff7f6e89887f1398934f064"
        );
        let s = tc3_sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            &tc3_vector(),
        );
        assert_eq!(
            sha256_hex(s.canonical_request.as_bytes()),
            "5ffe6a04c0664d6b969fab9a13bdab201d63ee709638e2749d62a09ca18d7031"
        );
        assert_eq!(tc3_date(1551113065), "2019-02-25");
    }

    #[test]
    fn tc3_golden_signatures() {
        let s = tc3_sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3EXAMPLE",
            &tc3_vector(),
        );
        assert_eq!(
            s.signature,
            "72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        assert_eq!(
            s.authorization,
            "TC3-HMAC-SHA256 Credential=AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE/2019-02-25/cvm/tc3_request, SignedHeaders=content-type;host, Signature=72e494ea809ad7a8c8f7a4507b9bddcbaa8e581f516e8da2f66e2c5a96525168"
        );
        let old = tc3_sign(
            "AKIDz8krbsJ5yKBZQpn74WFkmLPx3EXAMPLE",
            "Gu5t9xGARNpq86cd98joQYCN3*******",
            &tc3_vector(),
        );
        assert_eq!(
            old.signature,
            "2230eefd229f582d8b1b891af7107b91597240707d778ab3738f756258d7652c"
        );
    }

    #[test]
    fn constant_time_eq() {
        assert!(signatures_equal("abc", "abc"));
        assert!(!signatures_equal("abc", "abd"));
        assert!(!signatures_equal("abc", "ab"));
    }
}
