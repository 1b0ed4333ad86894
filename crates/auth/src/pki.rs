//! Making certificates for a small fleet or a test: a CA, a server
//! certificate, client certificates carrying this product's identities, and
//! CRLs. (A large fleet uses the CA it already has; what its certificates
//! must carry is in the README.)
//!
//! Keys are ECDSA P-256. Client certificates carry their SPIFFE ID as a URI
//! SAN (and, for a relay, one `urn:fleet-health:agents:PATTERN` URI SAN per
//! pattern) and the client-auth extended key usage; the server certificate
//! carries the names it is reached by and the server-auth usage.

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SanType, SerialNumber,
};
use time::OffsetDateTime;

use crate::identity::{SpiffeId, agents_uri};
use crate::pattern::AgentPattern;

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen refused.
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    /// A name that cannot go into a certificate.
    #[error("{0}")]
    Name(String),
}

/// A certificate and its private key, in PEM.
#[derive(Clone, Debug)]
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
    /// Its serial number (what a CRL names).
    pub serial: Vec<u8>,
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    /// From.
    pub not_before: SystemTime,
    /// Until.
    pub not_after: SystemTime,
}

impl Validity {
    /// From an hour ago (clocks differ) for `days` days.
    pub fn days(days: u64) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(3600),
            not_after: now + Duration::from_secs(days * 86_400),
        }
    }
}

/// A certificate authority: its certificate and the key that signs.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

impl Ca {
    /// A new self-signed CA named `name`.
    pub fn new(name: &str, validity: Validity) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        params.serial_number = Some(serial()?);
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(Ca {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA in `cert_pem` with its key `key_pem` (as [`Ca::new`] wrote them).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        Ok(Ca {
            issuer,
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
        })
    }

    /// The CA's certificate (the trust bundle to give servers and clients).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[String], validity: Validity) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = dn(names.first().map_or("fleet-health server", |n| n));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params, validity)
    }

    /// A client certificate for `id`; `agents` for a relay.
    pub fn client(
        &self,
        id: &SpiffeId,
        agents: &[AgentPattern],
        validity: Validity,
    ) -> Result<Issued, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&id.to_string());
        let mut sans = vec![uri(&id.to_string())?];
        for p in agents {
            sans.push(uri(&agents_uri(p))?);
        }
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params, validity)
    }

    fn sign(&self, mut params: CertificateParams, validity: Validity) -> Result<Issued, PkiError> {
        let key = KeyPair::generate()?;
        set_validity(&mut params, validity);
        let serial = serial()?;
        params.serial_number = Some(serial.clone());
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial: serial.to_bytes(),
        })
    }

    /// A CRL revoking the certificates with these serial numbers; `number`
    /// must rise with each CRL the CA issues.
    pub fn crl(&self, revoked: &[Vec<u8>], number: u64) -> Result<String, PkiError> {
        let now = OffsetDateTime::now_utc();
        let params = CertificateRevocationListParams {
            this_update: now - time::Duration::hours(1),
            next_update: now + time::Duration::days(30),
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(s),
                    revocation_time: now - time::Duration::minutes(1),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }
}

fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    dn
}

fn uri(s: &str) -> Result<SanType, PkiError> {
    Ok(SanType::URI(s.try_into().map_err(|_| {
        PkiError::Name(format!("{s:?} cannot be a URI SAN (ASCII only)"))
    })?))
}

fn set_validity(params: &mut CertificateParams, validity: Validity) {
    params.not_before = odt(validity.not_before);
    params.not_after = odt(validity.not_after);
}

fn odt(t: SystemTime) -> OffsetDateTime {
    let secs = match t.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// 16 random bytes, the top bit clear (a positive number).
fn serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Name(format!("no randomness: {e}")))?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    Ok(SerialNumber::from_slice(&bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::TrustDomain;
    use crate::role::Role;

    #[test]
    fn a_ca_signs_and_reads_back() {
        let ca = Ca::new("test CA", Validity::days(1)).expect("ca");
        let again = Ca::from_pem(ca.cert_pem(), ca.key_pem()).expect("reads back");
        let td = TrustDomain::parse("fleet.test").unwrap();
        let id = SpiffeId::holder(td, Role::Relay, "gw").unwrap();
        let issued = again
            .client(
                &id,
                &[AgentPattern::parse("site-a-*").unwrap()],
                Validity::days(1),
            )
            .expect("client");
        assert!(issued.cert_pem.contains("BEGIN CERTIFICATE"));
        assert!(issued.key_pem.contains("PRIVATE KEY"));
        assert_eq!(issued.serial.len(), 16);
        let crl = ca
            .crl(std::slice::from_ref(&issued.serial), 1)
            .expect("crl");
        assert!(crl.contains("BEGIN X509 CRL"));
        let server = ca
            .server(&["localhost".into(), "127.0.0.1".into()], Validity::days(1))
            .expect("server");
        assert!(server.cert_pem.contains("BEGIN CERTIFICATE"));
    }
}
