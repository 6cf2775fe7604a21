//! `[[consumers]]` → the one consumer model ([`Consumers`]): names, ids, client-certificate and
//! API-key credentials, scopes and workspace, checked in one pass so every credential resolves
//! to the same `Consumer`.

use std::{collections::HashSet, sync::Arc};

use super::{Validator, root, tls::cert_match};
use crate::{
    auth::interned,
    config::schema::FileConfig,
    consumer::{ApiKeyDigest, Consumer, Consumers, CredentialAt, Profile},
};

impl Validator<'_> {
    pub(super) fn consumers(&mut self, f: &FileConfig) -> Consumers {
        let mut consumers = Consumers::default();
        let mut names = HashSet::new();
        let mut ids = HashSet::new();
        for (i, c) in f.consumers.iter().enumerate() {
            let at = || root("consumers").index(i);
            if c.name.is_empty() || !names.insert(c.name.as_str()) {
                self.problem(at().key("name"), format!("consumer name {:?} is empty or used twice", c.name));
            }
            let id = c.id.clone().unwrap_or_else(|| c.name.clone());
            if id.is_empty() || !ids.insert(id.clone()) {
                self.problem(at().key("id"), format!("consumer id {id:?} is empty or used twice"));
            }
            let mut certs = Vec::new();
            for (j, cred) in c.client_certs.iter().enumerate() {
                match cert_match(cred) {
                    Ok(m) => certs.push((j, m)),
                    Err(reason) => self.problem(at().key("client_certs").index(j), reason),
                }
            }
            let mut keys = Vec::new();
            for (j, raw) in c.api_keys.iter().enumerate() {
                match ApiKeyDigest::parse(raw) {
                    Ok(d) => keys.push((j, d)),
                    Err(reason) => self.problem(at().key("api_keys").index(j), reason),
                }
            }
            let scopes = self.scopes(at().key("scopes"), &c.scopes);
            let scope_header = if scopes.is_empty() {
                None
            } else {
                interned::header_value(&scopes.iter().map(|s| &**s).collect::<Vec<_>>().join(" ")).ok()
            };
            let workspace = match c.workspace_id.as_deref().map(interned::named).transpose() {
                Ok(w) => w,
                Err(reason) => {
                    self.problem(at().key("workspace_id"), reason);
                    None
                }
            };
            let profile = Profile {
                name: interned::named_lenient(&c.name),
                id: interned::named_lenient(&id),
                scopes,
                scope_header,
                workspace,
            };
            let consumer = Consumer { name: c.name.as_str().into(), id: id.into(), profile: Arc::new(profile) };
            let cert_list = certs.iter().map(|(_, m)| m.clone()).collect();
            let key_list = keys.iter().map(|(_, d)| *d).collect();
            if let Err(duplicates) = consumers.add(consumer, cert_list, key_list) {
                for (what, d) in duplicates {
                    match what {
                        CredentialAt::Cert(k) => {
                            let other = consumers.get(d.first).map(|c| c.name.to_string()).unwrap_or_default();
                            self.problem(
                                at().key("client_certs").index(certs[k].0),
                                format!("this certificate already identifies consumer {other:?}"),
                            );
                        }
                        CredentialAt::ApiKey(k) => {
                            self.problem(at().key("api_keys").index(keys[k].0), "this key is configured twice");
                        }
                    }
                }
            }
        }
        consumers
    }
}
