//! The server's TLS identity: a CA made with rcgen at start and a `localhost` /
//! `127.0.0.1` certificate it signs. Kept for the server's life so a restart serves the
//! same certificate to clients that trust the same CA.

use std::sync::Arc;

/// An acceptor and the CA certificate (PEM) a kubeconfig must trust.
pub(crate) fn localhost() -> Result<(tokio_rustls::TlsAcceptor, String), String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("fake-apiserver TLS: {what}: {e}");
    let ca_key = rcgen::KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let mut ca_params =
        rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA params", &e))?;
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "fake-apiserver-ca");
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", &e))?;
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = rcgen::KeyPair::generate().map_err(|e| err("server key", &e))?;
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(|e| err("server params", &e))?;
    params.subject_alt_names.push(rcgen::SanType::IpAddress(
        std::net::Ipv4Addr::LOCALHOST.into(),
    ));
    let cert = params
        .signed_by(&server_key, &issuer)
        .map_err(|e| err("server certificate", &e))?;
    let key = rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der())
        .map_err(|e| err("server key DER", &e))?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| err("protocol versions", &e))?
    .with_no_client_auth()
    .with_single_cert(vec![cert.der().clone()], key)
    .map_err(|e| err("server config", &e))?;
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((
        tokio_rustls::TlsAcceptor::from(Arc::new(tls)),
        ca_cert.pem(),
    ))
}
