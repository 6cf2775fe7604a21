//! Sessions and pending logins. Entries are keyed by the SHA-256 of the opaque value the browser
//! holds (session id, login state), so neither a memory dump nor a Redis dump yields a usable
//! cookie. In Redis the value is sealed with ChaCha20-Poly1305 (aws-lc-rs: the AEAD already
//! compiled in for rustls, maintained and FIPS-validated, so no second crypto stack), with a
//! random nonce and the Redis key as associated data (a value moved to another key does not open).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_lc_rs::{
    aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey},
    digest,
};
use serde::{Deserialize, Serialize};

use super::{OidcError, SessionStoreKind};
use crate::{auth::unix_now_ms, kv::Kv};

/// What the gateway keeps for a logged-in browser; never sent to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
    /// Unix seconds.
    pub access_expires: u64,
    /// Unix seconds: the session's absolute end.
    pub expires: u64,
    pub user: String,
}

/// A login under way: what the callback needs (RFC 7636 verifier, nonce, where to go back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
    pub return_to: String,
}

/// How long a login may take at the IdP.
pub const PENDING_TTL: Duration = Duration::from_secs(600);
/// Most pending logins kept in memory (unauthenticated clients create them).
const MAX_PENDING: usize = 100_000;

pub type Digest = [u8; 32];

pub fn digest(value: &str) -> Digest {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, value.as_bytes()).as_ref());
    out
}

fn hex(d: &Digest) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

enum Entry {
    Session(Arc<Session>),
    Pending(Pending),
}

/// Entries by login name and digest, with their end (Unix ms).
#[derive(Default)]
struct Entries {
    map: HashMap<(Arc<str>, Digest), (u64, Entry)>,
    /// Size at which ended entries are swept next (amortized: twice the live size).
    sweep_at: usize,
}

/// The process-wide memory store (it outlives snapshots: a reload keeps sessions).
#[derive(Default)]
pub struct MemorySessions {
    entries: Mutex<Entries>,
}

impl std::fmt::Debug for MemorySessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemorySessions")
    }
}

impl MemorySessions {
    fn put(&self, login: &Arc<str>, key: Digest, until_ms: u64, entry: Entry) -> Result<(), OidcError> {
        let mut e = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if e.map.len() >= e.sweep_at.max(1024) {
            // Sessions nobody logged out of, logins nobody finished.
            let now = unix_now_ms();
            e.map.retain(|_, (until, _)| *until > now);
            e.sweep_at = e.map.len() * 2;
        }
        if e.map.len() >= MAX_PENDING && matches!(entry, Entry::Pending(_)) {
            return Err(OidcError::StoreUnavailable);
        }
        e.map.insert((login.clone(), key), (until_ms, entry));
        Ok(())
    }

    fn session(&self, login: &Arc<str>, key: &Digest) -> Option<Arc<Session>> {
        let e = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match e.map.get(&(login.clone(), *key)) {
            Some((until, Entry::Session(s))) if *until > unix_now_ms() => Some(s.clone()),
            _ => None,
        }
    }

    fn take_pending(&self, login: &Arc<str>, key: &Digest) -> Option<Pending> {
        let mut e = self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match e.map.remove(&(login.clone(), *key)) {
            Some((until, Entry::Pending(p))) if until > unix_now_ms() => Some(p),
            _ => None,
        }
    }

    fn remove(&self, login: &Arc<str>, key: &Digest) {
        self.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner).map.remove(&(login.clone(), *key));
    }
}

/// One login's store.
pub enum SessionStore {
    Memory { login: Arc<str>, sessions: Arc<MemorySessions> },
    Redis { kv: Kv, sealing: LessSafeKey, login: Arc<str> },
}

impl SessionStore {
    pub fn new(login: Arc<str>, kind: &SessionStoreKind, memory: Arc<MemorySessions>, kv: Option<Kv>) -> SessionStore {
        match (kind, kv) {
            (SessionStoreKind::Redis { key }, Some(kv)) => match UnboundKey::new(&CHACHA20_POLY1305, key) {
                Ok(k) => SessionStore::Redis { kv, sealing: LessSafeKey::new(k), login },
                Err(_) => SessionStore::Memory { login, sessions: memory },
            },
            (SessionStoreKind::Redis { .. }, None) => {
                // Validation requires [redis]; without a handle sessions stay in this process.
                tracing::error!(login = %login, "session_store is redis but no [redis] handle exists");
                SessionStore::Memory { login, sessions: memory }
            }
            (SessionStoreKind::Memory, _) => SessionStore::Memory { login, sessions: memory },
        }
    }

    fn redis_key(kv: &Kv, login: &str, kind: &str, key: &Digest) -> String {
        kv.key(format_args!("oidc:{login}:{kind}:{}", hex(key)))
    }

    fn seal(sealing: &LessSafeKey, aad: &str, value: &[u8]) -> Option<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).ok()?;
        let mut sealed = value.to_vec();
        sealing
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(aad.as_bytes()), &mut sealed)
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Some(out)
    }

    fn open(sealing: &LessSafeKey, aad: &str, mut value: Vec<u8>) -> Option<Vec<u8>> {
        if value.len() < NONCE_LEN {
            return None;
        }
        let mut body = value.split_off(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(&value).ok()?;
        let plain = sealing.open_in_place(nonce, Aad::from(aad.as_bytes()), &mut body).ok()?;
        Some(plain.to_vec())
    }

    async fn redis_put(
        kv: &Kv,
        sealing: &LessSafeKey,
        key: String,
        value: &impl Serialize,
        ttl: Duration,
    ) -> Result<(), OidcError> {
        let json = serde_json::to_vec(value).map_err(|_| OidcError::StoreUnavailable)?;
        let sealed = Self::seal(sealing, &key, &json).ok_or(OidcError::StoreUnavailable)?;
        let mut cmd = redis::cmd("SET");
        cmd.arg(&key).arg(sealed).arg("EX").arg(ttl.as_secs().max(1));
        kv.query::<()>("oidc_put", &cmd).await.map_err(|_| OidcError::StoreUnavailable)
    }

    async fn redis_get<T: for<'de> Deserialize<'de>>(
        kv: &Kv,
        sealing: &LessSafeKey,
        key: String,
        take: bool,
    ) -> Result<Option<T>, OidcError> {
        let mut cmd = redis::cmd(if take { "GETDEL" } else { "GET" });
        cmd.arg(&key);
        let op = if take { "oidc_take" } else { "oidc_get" };
        let raw: Option<Vec<u8>> = kv.query(op, &cmd).await.map_err(|_| OidcError::StoreUnavailable)?;
        // A value that does not open (other key, tampered) is no session.
        Ok(raw.and_then(|v| Self::open(sealing, &key, v)).and_then(|plain| serde_json::from_slice(&plain).ok()))
    }

    pub async fn put_session(&self, key: &Digest, session: Session) -> Result<(), OidcError> {
        let ttl = Duration::from_secs(session.expires.saturating_sub(unix_now_ms() / 1000).max(1));
        match self {
            SessionStore::Memory { login, sessions } => {
                let until = session.expires.saturating_mul(1000);
                sessions.put(login, *key, until, Entry::Session(Arc::new(session)))
            }
            SessionStore::Redis { kv, sealing, login } => {
                Self::redis_put(kv, sealing, Self::redis_key(kv, login, "session", key), &session, ttl).await
            }
        }
    }

    /// The session, if the memory store has it: no I/O, no allocation for a future.
    pub fn session_now(&self, key: &Digest) -> Option<Option<Arc<Session>>> {
        match self {
            SessionStore::Memory { login, sessions } => Some(sessions.session(login, key)),
            SessionStore::Redis { .. } => None,
        }
    }

    pub async fn session(&self, key: &Digest) -> Result<Option<Arc<Session>>, OidcError> {
        match self {
            SessionStore::Memory { login, sessions } => Ok(sessions.session(login, key)),
            SessionStore::Redis { kv, sealing, login } => {
                let s: Option<Session> =
                    Self::redis_get(kv, sealing, Self::redis_key(kv, login, "session", key), false).await?;
                Ok(s.filter(|s| s.expires > unix_now_ms() / 1000).map(Arc::new))
            }
        }
    }

    pub async fn end_session(&self, key: &Digest) -> Result<(), OidcError> {
        match self {
            SessionStore::Memory { login, sessions } => {
                sessions.remove(login, key);
                Ok(())
            }
            SessionStore::Redis { kv, login, .. } => {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(Self::redis_key(kv, login, "session", key));
                kv.query::<()>("oidc_del", &cmd).await.map_err(|_| OidcError::StoreUnavailable)
            }
        }
    }

    pub async fn put_pending(&self, key: &Digest, pending: Pending) -> Result<(), OidcError> {
        match self {
            SessionStore::Memory { login, sessions } => {
                sessions.put(login, *key, unix_now_ms() + PENDING_TTL.as_millis() as u64, Entry::Pending(pending))
            }
            SessionStore::Redis { kv, sealing, login } => {
                Self::redis_put(kv, sealing, Self::redis_key(kv, login, "state", key), &pending, PENDING_TTL).await
            }
        }
    }

    /// The pending login, removed: a state is good for one callback only.
    pub async fn take_pending(&self, key: &Digest) -> Result<Option<Pending>, OidcError> {
        match self {
            SessionStore::Memory { login, sessions } => Ok(sessions.take_pending(login, key)),
            SessionStore::Redis { kv, sealing, login } => {
                Self::redis_get(kv, sealing, Self::redis_key(kv, login, "state", key), true).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ended_entries_are_swept() {
        let m = MemorySessions::default();
        let login: Arc<str> = "web".into();
        let pending =
            || Entry::Pending(Pending { verifier: String::new(), nonce: String::new(), return_to: "/".into() });
        for i in 0..1024u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            m.put(&login, key, 1, pending()).unwrap();
        }
        m.put(&login, [9; 32], u64::MAX, pending()).unwrap();
        assert_eq!(m.entries.lock().unwrap().map.len(), 1, "the 1024 ended entries were swept");
        assert!(m.take_pending(&login, &[9; 32]).is_some());
        assert!(m.take_pending(&login, &[9; 32]).is_none(), "single use");
    }

    #[test]
    fn sealed_values_open_only_under_their_key() {
        let sealing = LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, &[7; 32]).unwrap());
        let sealed = SessionStore::seal(&sealing, "k1", b"secret tokens").unwrap();
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(SessionStore::open(&sealing, "k1", sealed.clone()).unwrap(), b"secret tokens");
        assert!(SessionStore::open(&sealing, "k2", sealed.clone()).is_none());
        let mut tampered = sealed;
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(SessionStore::open(&sealing, "k1", tampered).is_none());
    }
}
