//! The resolver's cache: the latest version of every object and verdict, keyed for
//! deterministic iteration.

use portico_model::{
    EndpointSlice, HttpProxy, K8sName, Kind, Object, ObjectRef, SecretRef, SecretVerdict, Service,
    TlsCertificateDelegation, VoyagerIngress,
};
use std::collections::BTreeMap;

pub type Key = (K8sName, K8sName);

/// Everything the resolver reads. Secrets themselves are not here: only their verdicts.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<Key, Service>,
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    pub http_proxies: BTreeMap<Key, HttpProxy>,
    pub delegations: BTreeMap<Key, TlsCertificateDelegation>,
    pub voyager_ingresses: BTreeMap<Key, VoyagerIngress>,
    pub verdicts: BTreeMap<SecretRef, SecretVerdict>,
}

/// Secrets go to the secrets service, never to the resolver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the resolver does not take Secret {0}; give it the secrets service's verdict instead")]
pub struct SecretNotAccepted(pub ObjectRef);

impl Snapshot {
    /// Insert or replace an object.
    pub fn apply(&mut self, object: Object) -> Result<(), SecretNotAccepted> {
        let key = (object.meta().namespace.clone(), object.meta().name.clone());
        match object {
            Object::Service(o) => {
                self.services.insert(key, o);
            }
            Object::EndpointSlice(o) => {
                self.endpoint_slices.insert(key, o);
            }
            Object::HttpProxy(o) => {
                self.http_proxies.insert(key, o);
            }
            Object::TlsCertificateDelegation(o) => {
                self.delegations.insert(key, o);
            }
            Object::VoyagerIngress(o) => {
                self.voyager_ingresses.insert(key, o);
            }
            Object::Secret(o) => return Err(SecretNotAccepted(o.meta.object_ref(Kind::Secret))),
        }
        Ok(())
    }

    /// Remove an object (a Secret's verdict is removed with `remove_verdict`).
    pub fn remove(&mut self, object: &ObjectRef) {
        let key = (object.namespace.clone(), object.name.clone());
        match object.kind {
            Kind::Service => drop(self.services.remove(&key)),
            Kind::EndpointSlice => drop(self.endpoint_slices.remove(&key)),
            Kind::HttpProxy => drop(self.http_proxies.remove(&key)),
            Kind::TlsCertificateDelegation => drop(self.delegations.remove(&key)),
            Kind::VoyagerIngress => drop(self.voyager_ingresses.remove(&key)),
            Kind::Secret => drop(self.verdicts.remove(&SecretRef { namespace: key.0, name: key.1 })),
        }
    }

    pub fn set_verdict(&mut self, verdict: SecretVerdict) {
        self.verdicts.insert(verdict.secret.clone(), verdict);
    }

    pub fn remove_verdict(&mut self, secret: &SecretRef) {
        self.verdicts.remove(secret);
    }
}
