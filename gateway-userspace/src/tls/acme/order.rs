//! One ACME order with instant-acme: the account (restored from the state directory or
//! created), the authorizations answered by the listener's challenge type, a fresh ECDSA P-256
//! key and its CSR, and the issued chain.

use std::{sync::Arc, time::Duration};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, CertificateIdentifier, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};

use super::{AcmeError, Challenge, challenge, manager::AcmeCertificate, store::Issued};

/// How long one order may wait for validation and issuance.
const ORDER_TIMEOUT: Duration = Duration::from_secs(90);

/// The account for `live`'s CA: from the stored credentials, else a new one (then stored).
pub async fn account(live: &AcmeCertificate) -> Result<Account, AcmeError> {
    let spec = &live.spec;
    let builder = || match &spec.directory_ca {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    if let Some(json) = live.state.load_account() {
        match serde_json::from_str::<AccountCredentials>(&json) {
            Ok(creds) => return Ok(builder()?.from_credentials(creds).await?),
            Err(e) => tracing::warn!(error = %e, "stored ACME account unreadable; registering a new one"),
        }
    }
    let contact: Vec<&str> = spec.contact.iter().map(String::as_str).collect();
    let new = NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false };
    let (account, creds) = builder()?.create(&new, spec.directory.clone(), None).await?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::State(format!("account credentials: {e}")))?;
    live.state.store_account(&json)?;
    tracing::info!(directory = %spec.directory, "ACME account registered");
    Ok(account)
}

/// Orders a certificate for the listener's domains. `replaces`: the certificate it renews,
/// when the CA offers renewal information (RFC 9773 §5).
pub async fn order(
    account: &Account,
    live: &Arc<AcmeCertificate>,
    replaces: Option<CertificateIdentifier<'static>>,
) -> Result<Issued, AcmeError> {
    let spec = &live.spec;
    let identifiers: Vec<Identifier> = spec.domains.iter().map(|d| Identifier::Dns(d.clone())).collect();
    let mut new = NewOrder::new(&identifiers);
    if let Some(r) = replaces {
        new = new.replaces(r);
    }
    let mut order = account.new_order(&new).await?;
    // Challenge answers are withdrawn when the order ends, whichever way.
    let mut answers = Answers { live: live.clone(), tokens: Vec::new(), domains: Vec::new() };
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(AcmeError::Rejected(format!("authorization is {other:?}"))),
        }
        let kind = match spec.challenge {
            Challenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
            Challenge::Http01 => ChallengeType::Http01,
        };
        let mut ch = authz
            .challenge(kind)
            .ok_or_else(|| AcmeError::Rejected(format!("the CA offers no {} challenge", spec.challenge.as_str())))?;
        let key_auth = ch.key_authorization();
        let domain = ch.identifier().to_string();
        match spec.challenge {
            Challenge::Http01 => {
                live.tokens.insert(ch.token.clone(), key_auth.as_str().to_owned());
                answers.tokens.push(ch.token.clone());
            }
            Challenge::TlsAlpn01 => {
                live.set_alpn_challenge(
                    &domain,
                    Some(challenge::alpn_certificate(&domain, key_auth.digest().as_ref())?),
                );
                answers.domains.push(domain.clone());
            }
        }
        ch.set_ready().await?;
    }
    let retries = RetryPolicy::new().initial_delay(Duration::from_millis(200)).timeout(ORDER_TIMEOUT);
    match order.poll_ready(&retries).await? {
        OrderStatus::Ready => {}
        status => return Err(AcmeError::Rejected(format!("order is {status:?} after validation"))),
    }
    let key =
        rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| AcmeError::Csr(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(spec.domains.clone()).map_err(|e| AcmeError::Csr(e.to_string()))?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key).map_err(|e| AcmeError::Csr(e.to_string()))?;
    order.finalize_csr(csr.der()).await?;
    let chain = order.poll_certificate(&retries).await?;
    drop(answers);
    Issued::parse(chain, key.serialize_pem())
}

/// The RFC 9773 identifier of a certificate (authority key id + serial).
pub fn identifier(issued: &Issued) -> Option<CertificateIdentifier<'static>> {
    CertificateIdentifier::try_from(issued.key.cert.first()?).ok().map(CertificateIdentifier::into_owned)
}

struct Answers {
    live: Arc<AcmeCertificate>,
    tokens: Vec<String>,
    domains: Vec<String>,
}

impl Drop for Answers {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.live.tokens.remove(t);
        }
        for d in &self.domains {
            self.live.set_alpn_challenge(d, None);
        }
    }
}
