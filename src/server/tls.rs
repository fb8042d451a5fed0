//! TLS for the client listener: rustls with the aws-lc-rs provider, TLS 1.2
//! and 1.3 only, ALPN `h2` then `http/1.1`, no 0-RTT, and optional client
//! certificates (mTLS) verified against `client_ca`.

use crate::config::{Config, Tls};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::sync::Arc;

pub fn acceptor(config: &Config, tls: &Tls) -> Result<tokio_rustls::TlsAcceptor, String> {
    let cert_path = config.resolve(&tls.cert);
    let key_path = config.resolve(&tls.key);
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
        .map_err(|e| {
            format!(
                "listen.tls.cert: cannot read `{}`: {e}",
                cert_path.display()
            )
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("listen.tls.cert: `{}`: {e}", cert_path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "listen.tls.cert: `{}` holds no certificate",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(&key_path)
        .map_err(|e| format!("listen.tls.key: `{}`: {e}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("listen.tls: {e}"))?;
    let client_ca = tls.client_ca.as_ref().or(config.listen.client_ca.as_ref());
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let path = config.resolve(path);
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("listen.client_ca: cannot read `{}`: {e}", path.display()))?
            {
                let cert = cert.map_err(|e| format!("listen.client_ca: {e}"))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("listen.client_ca: {e}"))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| format!("listen.client_ca: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|e| format!("listen.tls: certificate and key do not match: {e}"))?;
    server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    server.max_early_data_size = 0;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server)))
}
