//! rustls client configuration from the PEM text the component passes in: the trust roots
//! (a custom CA bundle, or the system's; in wasm, Mozilla's built in) and the optional
//! client certificate. Connecting with it is left to `link`.

use std::sync::Arc;

use rustls::client::ResolvesClientCert;
use rustls::crypto::ring;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::error::{BrokerError, Field};

/// PEM material for one connection.
#[derive(Default)]
pub struct TlsMaterial<'a> {
    pub ca_cert: Option<&'a str>,
    pub client_cert: Option<&'a str>,
    pub client_key: Option<&'a str>,
}

/// Builds a client configuration. Every failure names the option at fault; none quotes a
/// private key.
pub fn client_config(material: &TlsMaterial<'_>) -> Result<Arc<ClientConfig>, BrokerError> {
    let roots = match material.ca_cert {
        Some(pem) => custom_roots(pem)?,
        None => system_roots()?,
    };
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Other(format!("tls setup: {e}")))?
        .with_root_certificates(roots);
    let config = match (material.client_cert, material.client_key) {
        (Some(cert), Some(key)) => {
            let chain = certificates(Field::ClientCert, cert)?;
            let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                BrokerError::invalid(Field::ClientKey, "no PEM private key could be read")
            })?;
            // rustls' text for an unusable key does not include the key.
            let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
                BrokerError::invalid(
                    Field::ClientKey,
                    format!("the private key cannot be used: {e}"),
                )
            })?;
            check_key_matches(&chain[0], signing_key.as_ref())?;
            let certified = Arc::new(CertifiedKey::new(chain, signing_key));
            builder.with_client_cert_resolver(Arc::new(FixedClientCert(certified)))
        }
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err(BrokerError::invalid(
                Field::ClientCert,
                "given without client-key",
            ));
        }
        (None, Some(_)) => {
            return Err(BrokerError::invalid(
                Field::ClientKey,
                "given without client-cert",
            ));
        }
    };
    Ok(Arc::new(config))
}

/// The client certificate and key, offered whenever the server asks.
///
/// Not rustls' `with_client_auth_cert`: it checks the pair by parsing the certificate with
/// webpki, which refuses X.509 version 1 certificates. `openssl x509 -req` without
/// extensions makes exactly those (mosquitto's own TLS guide does it that way), and brokers
/// accept them, so the pair is checked here instead (see [`check_key_matches`]).
#[derive(Debug)]
struct FixedClientCert(Arc<CertifiedKey>);

impl ResolvesClientCert for FixedClientCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// The certificate's public key must be the key's, as rustls would check: the
/// SubjectPublicKeyInfo of the leaf against the one the key derives, byte for byte. The
/// certificate is read with x509-parser, which takes version 1 certificates.
fn check_key_matches(
    leaf: &CertificateDer<'_>,
    key: &dyn rustls::sign::SigningKey,
) -> Result<(), BrokerError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(leaf.as_ref()).map_err(|e| {
        BrokerError::invalid(
            Field::ClientCert,
            format!("the certificate cannot be read: {e}"),
        )
    })?;
    let Some(public) = key.public_key() else {
        // The provider cannot tell; the handshake will.
        return Ok(());
    };
    if public.as_ref() != certificate.tbs_certificate.subject_pki.raw {
        return Err(BrokerError::invalid(
            Field::ClientCert,
            "the certificate does not match the private key in client-key",
        ));
    }
    Ok(())
}

fn certificates(field: Field, pem: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| BrokerError::invalid(field, "a PEM certificate cannot be read"))?;
    if certs.is_empty() {
        return Err(BrokerError::invalid(field, "no PEM certificate found"));
    }
    Ok(certs)
}

fn custom_roots(pem: &str) -> Result<RootCertStore, BrokerError> {
    let mut roots = RootCertStore::empty();
    for (n, cert) in certificates(Field::CaCert, pem)?.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            BrokerError::invalid(
                Field::CaCert,
                format!("certificate {} is not a usable CA certificate: {e}", n + 1),
            )
        })?;
    }
    Ok(roots)
}

#[cfg(not(target_family = "wasm"))]
fn system_roots() -> Result<RootCertStore, BrokerError> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _unparsable) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        let why = found
            .errors
            .first()
            .map(|e| format!(" ({e})"))
            .unwrap_or_default();
        return Err(BrokerError::invalid(
            Field::CaCert,
            format!("not given, and no system CA certificates could be loaded{why}; give caCert"),
        ));
    }
    Ok(roots)
}

/// A WASI runtime has no trust store to offer a component: the roots are Mozilla's, as
/// webpki-roots carries them, built in.
#[cfg(target_family = "wasm")]
fn system_roots() -> Result<RootCertStore, BrokerError> {
    Ok(RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    })
}
