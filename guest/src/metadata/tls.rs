//! The TLS material: `caCert`, `clientCert` and `clientKey`, each checked to parse as PEM,
//! and the client certificate and key given together.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::fields::Fields;
use super::{MetadataError, Secret, Tls, field};

pub(super) fn parse_tls(fields: &mut Fields<'_>) -> Result<Tls, MetadataError> {
    let ca_cert = fields.optional(field::CA_CERT);
    let client_cert = fields.optional(field::CLIENT_CERT);
    let client_key = fields.optional(field::CLIENT_KEY);
    if let Some(ca) = &ca_cert {
        check_certificates(field::CA_CERT, ca)?;
    }
    match (&client_cert, &client_key) {
        (Some(_), None) => {
            return Err(MetadataError::new(
                field::CLIENT_CERT,
                "is set without \"clientKey\"; give both or neither",
            ));
        }
        (None, Some(_)) => {
            return Err(MetadataError::new(
                field::CLIENT_KEY,
                "is set without \"clientCert\"; give both or neither",
            ));
        }
        (Some(cert), Some(key)) => {
            check_certificates(field::CLIENT_CERT, cert)?;
            // The key's own text never goes into the error.
            PrivateKeyDer::from_pem_slice(key.as_bytes()).map_err(|_| {
                MetadataError::new(
                    field::CLIENT_KEY,
                    "expected a PEM private key (PKCS#1 \"RSA PRIVATE KEY\", PKCS#8 \"PRIVATE KEY\" or SEC1 \"EC PRIVATE KEY\"); none could be read",
                )
            })?;
        }
        (None, None) => {}
    }
    Ok(Tls {
        ca_cert,
        client_cert,
        client_key: client_key.map(Secret),
    })
}

/// Checks that `pem` holds at least one certificate and nothing unreadable.
fn check_certificates(field: &str, pem: &str) -> Result<(), MetadataError> {
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        cert.map_err(|_| {
            MetadataError::new(
                field,
                format!("expected PEM certificates; certificate {} is not valid PEM (bad framing or base64)", count + 1),
            )
        })?;
        count += 1;
    }
    if count == 0 {
        return Err(MetadataError::new(
            field,
            "expected at least one PEM certificate (-----BEGIN CERTIFICATE-----); found none",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::metadata::test_support::*;
    use crate::metadata::*;

    #[test]
    fn tls_material_must_parse_and_come_in_pairs() {
        let tls = parse(
            "a",
            &md(&[
                ("url", "ssl://h"),
                ("topic", "t"),
                ("caCert", CERT),
                ("clientCert", CERT),
                ("clientKey", KEY),
            ]),
        )
        .expect("valid")
        .tls;
        assert_eq!(tls.ca_cert.as_deref(), Some(CERT));
        assert_eq!(tls.client_key.as_ref().map(Secret::expose), Some(KEY));

        assert_eq!(
            error_of(&with(&[("caCert", "not a pem")])),
            r#"metadata field "caCert": expected at least one PEM certificate (-----BEGIN CERTIFICATE-----); found none"#
        );
        assert_eq!(
            error_of(&with(&[(
                "caCert",
                "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n"
            )])),
            r#"metadata field "caCert": expected PEM certificates; certificate 1 is not valid PEM (bad framing or base64)"#
        );
        assert_eq!(
            error_of(&with(&[("clientCert", CERT)])),
            r#"metadata field "clientCert": is set without "clientKey"; give both or neither"#
        );
        assert_eq!(
            error_of(&with(&[("clientKey", KEY)])),
            r#"metadata field "clientKey": is set without "clientCert"; give both or neither"#
        );
        let bad_key = "-----BEGIN PRIVATE KEY-----\nsecret!!\n-----END PRIVATE KEY-----\n";
        let error = error_of(&with(&[("clientCert", CERT), ("clientKey", bad_key)]));
        assert_eq!(
            error,
            r#"metadata field "clientKey": expected a PEM private key (PKCS#1 "RSA PRIVATE KEY", PKCS#8 "PRIVATE KEY" or SEC1 "EC PRIVATE KEY"); none could be read"#
        );
        assert!(!error.contains("secret"));
    }

    #[test]
    fn tls_material_with_plain_url_is_a_warning() {
        let config = parse("a", &with(&[("caCert", CERT)])).expect("valid");
        assert_eq!(config.notes.len(), 1, "{:?}", config.notes);
        assert_eq!(config.notes[0].level, NoteLevel::Warn);
    }
}
