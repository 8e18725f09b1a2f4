//! Logs never carry the secret, the signature or parameter values.
//!
//! Alone in its test binary: the subscriber is thread-scoped and tracing's
//! per-callsite interest cache is process-wide, so sharing the binary with
//! tests on other threads made the capture flaky.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::{Responder, SECRET, fail, ok};
use iaas_client::HttpMethod;
use iaas_client::actions::*;
use serde_json::json;

/// Collects formatted log output.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogBuf {
    type Writer = LogBuf;
    fn make_writer(&'a self) -> LogBuf {
        self.clone()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn logs_never_carry_secret_or_signature() {
    let logs = LogBuf::default();
    let subscriber = tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(logs.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let r = Responder::start(|n, _| {
        if n == 0 {
            fail(5100, "server busy")
        } else {
            ok(json!({"server_certificate_id": "sc-1"}))
        }
    })
    .await;
    for method in [HttpMethod::Post, HttpMethod::Get] {
        let c = r.client(|cfg| cfg.http_method = method);
        c.create_server_certificate(&CreateServerCertificate {
            server_certificate_name: Some("c".into()),
            certificate_content: "CERTBODY".into(),
            private_key: "PRIVATEKEYBODY".into(),
        })
        .await
        .unwrap();
    }
    let seen = r.seen();
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    assert!(text.contains("CreateServerCertificate"), "{text}");
    assert!(text.contains("request_id"), "{text}");
    assert!(
        text.contains("private_key"),
        "parameter names are logged: {text}"
    );
    for s in &seen {
        let sig = &s.params["signature"];
        assert!(!text.contains(sig.as_str()), "signature leaked: {text}");
    }
    for secret in [SECRET, "PRIVATEKEYBODY", "CERTBODY"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
}
