//! RFC 6960 on the wire: the request for one certificate (SHA-1 CertID, as every responder
//! accepts) and a verified reading of the answer. A response counts only when its signature
//! verifies with the issuer's key (or with a responder certificate the issuer signed for
//! `id-kp-OCSPSigning`), it speaks about exactly the certificate asked about (same issuer hashes
//! and serial), and it is current (thisUpdate not in the future, nextUpdate not past).

use thiserror::Error;
use x509_cert::{
    der::{self, Decode, Encode, asn1::OctetString, oid::db},
    serial_number::SerialNumber,
    spki,
};
use x509_ocsp::{BasicOcspResponse, CertId, CertStatus, OcspRequest, OcspResponse, OcspResponseStatus, Request};
use x509_parser::{
    certificate::X509Certificate,
    extensions::{DistributionPointName, GeneralName, ParsedExtension},
    oid_registry::{OID_PKIX_ACCESS_DESCRIPTOR_OCSP, Oid},
    prelude::FromDer,
    x509::AlgorithmIdentifier,
};

/// Clocks of a responder and ours may disagree this much (seconds).
const CLOCK_SKEW: i64 = 300;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum OcspError {
    #[error("the certificate names no OCSP responder (no authorityInfoAccess OCSP URI)")]
    NoResponder,
    #[error("invalid certificate: {0}")]
    Certificate(String),
    #[error("the responder answered {0:?}")]
    ResponderStatus(String),
    #[error("malformed OCSP response: {0}")]
    Malformed(String),
    #[error("the OCSP response's signature does not verify with the issuer or a responder it authorised")]
    Signature,
    #[error("the OCSP response is about another certificate (serial or issuer differ)")]
    OtherCertificate,
    #[error("the OCSP response is not yet valid (thisUpdate in the future)")]
    NotYetValid,
    #[error("the OCSP response has expired (nextUpdate passed)")]
    Expired,
}

/// What a responder says about a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Good,
    /// Revoked at this time (unix seconds).
    Revoked(i64),
    /// The responder does not know the certificate.
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Good => "good",
            Status::Revoked(_) => "revoked",
            Status::Unknown => "unknown",
        }
    }
}

/// A verified answer.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: Status,
    pub this_update: i64,
    /// When the answer stops counting: its nextUpdate, or `this_update + default_validity`
    /// for a responder that gives none.
    pub expires: i64,
    /// The whole DER response, as stapled.
    pub der: Vec<u8>,
}

/// Everything needed to ask about one certificate and to check the answer.
#[derive(Debug, Clone)]
pub struct Query {
    /// The responder from the certificate's authorityInfoAccess (first `http://` one).
    pub url: Option<String>,
    /// DER `OCSPRequest`.
    pub request: Vec<u8>,
    name_hash: Vec<u8>,
    key_hash: Vec<u8>,
    serial: Vec<u8>,
    issuer: Vec<u8>,
}

/// The issuer's SPKI and subject, from its DER certificate.
fn parse(der: &[u8]) -> Result<X509Certificate<'_>, OcspError> {
    X509Certificate::from_der(der).map(|(_, c)| c).map_err(|e| OcspError::Certificate(e.to_string()))
}

fn sha1(bytes: &[u8]) -> Vec<u8> {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bytes).as_ref().to_vec()
}

/// The `http://` OCSP responders a certificate names (authorityInfoAccess).
pub fn responders(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::AuthorityInfoAccess(aia) = ext.parsed_extension() {
            for d in &aia.accessdescs {
                if d.access_method == OID_PKIX_ACCESS_DESCRIPTOR_OCSP
                    && let GeneralName::URI(u) = d.access_location
                {
                    out.push(u.to_string());
                }
            }
        }
    }
    out
}

/// The `http://` CRL distribution points a certificate names.
pub fn crl_distribution_points(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::CRLDistributionPoints(dps) = ext.parsed_extension() {
            for dp in dps.iter() {
                if let Some(DistributionPointName::FullName(names)) = &dp.distribution_point {
                    for n in names {
                        if let GeneralName::URI(u) = n {
                            out.push(u.to_string());
                        }
                    }
                }
            }
        }
    }
    out
}

impl Query {
    /// The query for `cert`, issued by `issuer` (both DER).
    pub fn new(cert: &[u8], issuer: &[u8]) -> Result<Query, OcspError> {
        let leaf = parse(cert)?;
        let ca = parse(issuer)?;
        let name_hash = sha1(ca.subject().as_raw());
        let key_hash = sha1(&ca.public_key().subject_public_key.data);
        let serial = leaf.raw_serial().to_vec();
        let cert_id = CertId {
            hash_algorithm: spki::AlgorithmIdentifierOwned {
                oid: db::rfc5912::ID_SHA_1,
                parameters: Some(der::Any::null()),
            },
            issuer_name_hash: OctetString::new(name_hash.clone()).map_err(|e| OcspError::Certificate(e.to_string()))?,
            issuer_key_hash: OctetString::new(key_hash.clone()).map_err(|e| OcspError::Certificate(e.to_string()))?,
            serial_number: SerialNumber::new(&serial).map_err(|e| OcspError::Certificate(e.to_string()))?,
        };
        let request = OcspRequest {
            tbs_request: x509_ocsp::TbsRequest {
                version: x509_ocsp::Version::V1,
                requestor_name: None,
                request_list: vec![Request { req_cert: cert_id, single_request_extensions: None }],
                request_extensions: None,
            },
            optional_signature: None,
        }
        .to_der()
        .map_err(|e| OcspError::Certificate(e.to_string()))?;
        let url = responders(&leaf).into_iter().find(|u| u.starts_with("http://"));
        Ok(Query { url, request, name_hash, key_hash, serial, issuer: issuer.to_vec() })
    }

    /// Reads and verifies a DER `OCSPResponse` at `now` (unix seconds). A response without
    /// nextUpdate counts for `default_validity` seconds after its thisUpdate.
    pub fn verify(&self, der: &[u8], now: i64, default_validity: i64) -> Result<Answer, OcspError> {
        let malformed = |e: der::Error| OcspError::Malformed(e.to_string());
        let response = OcspResponse::from_der(der).map_err(malformed)?;
        if response.response_status != OcspResponseStatus::Successful {
            return Err(OcspError::ResponderStatus(format!("{:?}", response.response_status)));
        }
        let bytes = response.response_bytes.ok_or_else(|| OcspError::Malformed("no response bytes".into()))?;
        if bytes.response_type != db::rfc6960::ID_PKIX_OCSP_BASIC {
            return Err(OcspError::Malformed(format!(
                "response type {} is not id-pkix-ocsp-basic",
                bytes.response_type
            )));
        }
        let basic = BasicOcspResponse::from_der(bytes.response.as_bytes()).map_err(malformed)?;
        self.check_signature(&basic)?;
        let single = basic
            .tbs_response_data
            .responses
            .iter()
            .find(|r| {
                r.cert_id.issuer_name_hash.as_bytes() == self.name_hash
                    && r.cert_id.issuer_key_hash.as_bytes() == self.key_hash
                    && same_serial(r.cert_id.serial_number.as_bytes(), &self.serial)
            })
            .ok_or(OcspError::OtherCertificate)?;
        let secs = |t: &x509_ocsp::OcspGeneralizedTime| t.0.to_unix_duration().as_secs() as i64;
        let this_update = secs(&single.this_update);
        let expires = single.next_update.as_ref().map_or(this_update + default_validity, secs);
        if this_update > now + CLOCK_SKEW {
            return Err(OcspError::NotYetValid);
        }
        if expires <= now {
            return Err(OcspError::Expired);
        }
        let status = match &single.cert_status {
            CertStatus::Good(_) => Status::Good,
            CertStatus::Revoked(info) => Status::Revoked(secs(&info.revocation_time)),
            CertStatus::Unknown(_) => Status::Unknown,
        };
        Ok(Answer { status, this_update, expires, der: der.to_vec() })
    }

    /// The signer is the issuer itself, or a certificate in the response that the issuer
    /// signed and marked for OCSP signing (RFC 6960 §4.2.2.2).
    fn check_signature(&self, basic: &BasicOcspResponse) -> Result<(), OcspError> {
        let issuer = parse(&self.issuer)?;
        let tbs = basic.tbs_response_data.to_der().map_err(|e| OcspError::Malformed(e.to_string()))?;
        let alg_der = basic.signature_algorithm.to_der().map_err(|e| OcspError::Malformed(e.to_string()))?;
        let (_, alg) = AlgorithmIdentifier::from_der(&alg_der).map_err(|e| OcspError::Malformed(e.to_string()))?;
        let sig_bytes = basic.signature.raw_bytes();
        let signature = x509_parser::der_parser::asn1_rs::BitString::new(0, sig_bytes);
        let verifies = |spki: &x509_parser::x509::SubjectPublicKeyInfo<'_>| {
            x509_parser::verify::verify_signature(spki, &alg, &signature, &tbs).is_ok()
        };
        if verifies(issuer.public_key()) {
            return Ok(());
        }
        let ocsp_signing = Oid::from(&[1, 3, 6, 1, 5, 5, 7, 3, 9]).map_err(|_| OcspError::Signature)?;
        for delegate in basic.certs.iter().flatten() {
            let Ok(der) = delegate.to_der() else { continue };
            let Ok(responder) = parse(&der) else { continue };
            let authorised = responder.verify_signature(Some(issuer.public_key())).is_ok()
                && responder.issuer().as_raw() == issuer.subject().as_raw()
                && responder.validity().is_valid()
                && responder
                    .extended_key_usage()
                    .ok()
                    .flatten()
                    .is_some_and(|eku| eku.value.ocsp_signing || eku.value.other.contains(&ocsp_signing));
            if authorised && verifies(responder.public_key()) {
                return Ok(());
            }
        }
        Err(OcspError::Signature)
    }
}

/// DER integers may carry a leading zero; serials compare without it.
fn same_serial(a: &[u8], b: &[u8]) -> bool {
    let trim = |s: &[u8]| -> Vec<u8> {
        let mut s = s;
        while s.len() > 1 && s[0] == 0 {
            s = &s[1..];
        }
        s.to_vec()
    };
    trim(a) == trim(b)
}
