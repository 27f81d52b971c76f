//! `kind = "https"`: the http check over TLS (rustls with the ring
//! provider). SNI is the configured `host`. Certificates are not verified
//! unless `verify = true` (then against the webpki roots), as ldirectord
//! does not verify them either: a check asks "does the site answer", and an
//! office backend usually has a self-signed or internal certificate.
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::connect;
use super::http::{exchange, http_request_bytes, Conn, HttpRequest};
use crate::health::Failure;

impl Conn for StreamOwned<ClientConnection, std::net::TcpStream> {
    fn tcp(&self) -> &std::net::TcpStream {
        &self.sock
    }
}

pub(super) fn get(
    req: &HttpRequest,
    verify: bool,
    target: SocketAddr,
    deadline: Instant,
) -> Result<(), Failure> {
    let request = http_request_bytes(req, target)?;
    let server_name = match req.host {
        Some(h) => ServerName::try_from(h.to_string())
            .map_err(|e| Failure::Io(format!("bad host {h:?} for SNI: {e}")))?,
        None => ServerName::IpAddress(target.ip().into()),
    };
    let conn = ClientConnection::new(config(verify)?, server_name)
        .map_err(|e| Failure::Io(format!("TLS: {e}")))?;
    let tcp = connect(target, deadline)?;
    // The handshake runs inside the first write and read, under the same
    // socket timeouts as the request.
    exchange(req, &request, StreamOwned::new(conn, tcp), deadline)
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Built once per process: loading the roots is not free.
fn config(verify: bool) -> Result<Arc<ClientConfig>, Failure> {
    static VERIFIED: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    static UNVERIFIED: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    let cell = if verify { &VERIFIED } else { &UNVERIFIED };
    cell.get_or_init(|| build(verify).map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Failure::Io(format!("TLS setup: {e}")))
}

fn build(verify: bool) -> Result<Arc<ClientConfig>, rustls::Error> {
    let builder =
        ClientConfig::builder_with_provider(provider()).with_safe_default_protocol_versions()?;
    let cfg = if verify {
        let roots =
            rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCert(provider())))
            .with_no_client_auth()
    };
    Ok(Arc::new(cfg))
}

/// Accepts any certificate, but still checks the handshake signatures so
/// the TLS session itself is sound.
#[derive(Debug)]
struct AnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_configs_build() {
        assert!(config(false).is_ok());
        assert!(config(true).is_ok());
    }
}
