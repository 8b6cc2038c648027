//! The resolver's cache: the latest version of every object and verdict, keyed for
//! deterministic iteration.

use portico_model::Holder;
use portico_model::{
    BackendTlsPolicy, EndpointSlice, Gateway, GatewayClass, HttpProxy, HttpRoute, Ingress, IngressClass, K8sName, Kind,
    Object, ObjectRef, ReferenceGrant, SecretRef, SecretVerdict, Service, TlsCertificateDelegation, VoyagerIngress,
};
use std::collections::{BTreeMap, BTreeSet};

pub type Key = (K8sName, K8sName);

/// Everything the resolver reads. Secrets themselves are not here: only their verdicts.
///
/// The maps are the objects; the indexes beside them are kept by `apply` and `remove`
/// (mutate the maps only through those), so that a lookup never scans every object.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub services: BTreeMap<Key, Service>,
    pub endpoint_slices: BTreeMap<Key, EndpointSlice>,
    pub http_proxies: BTreeMap<Key, HttpProxy>,
    pub delegations: BTreeMap<Key, TlsCertificateDelegation>,
    pub voyager_ingresses: BTreeMap<Key, VoyagerIngress>,
    /// networking.k8s.io/v1 Ingresses, and IngressClasses (under namespace `CLUSTER`).
    pub ingresses: BTreeMap<Key, Ingress>,
    pub ingress_classes: BTreeMap<Key, IngressClass>,
    /// Gateway API (SPEC section 6); GatewayClasses under namespace `CLUSTER`.
    pub gateway_classes: BTreeMap<Key, GatewayClass>,
    pub gateways: BTreeMap<Key, Gateway>,
    pub http_routes: BTreeMap<Key, HttpRoute>,
    pub reference_grants: BTreeMap<Key, ReferenceGrant>,
    pub backend_tls_policies: BTreeMap<Key, BackendTlsPolicy>,
    pub verdicts: BTreeMap<SecretRef, SecretVerdict>,
    /// EndpointSlices by (namespace, their `kubernetes.io/service-name`).
    slices_by_service: BTreeMap<(K8sName, String), BTreeSet<K8sName>>,
    /// TLSCertificateDelegations by namespace.
    delegations_by_namespace: BTreeMap<K8sName, BTreeSet<K8sName>>,
    /// BackendTLSPolicies by (namespace, the name of a Service a targetRef names).
    policies_by_service: BTreeMap<(K8sName, String), BTreeSet<K8sName>>,
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
                self.unindex_slice(&key);
                if let Some(service) = &o.service_name {
                    self.slices_by_service.entry((key.0.clone(), service.clone())).or_default().insert(key.1.clone());
                }
                self.endpoint_slices.insert(key, o);
            }
            Object::HttpProxy(o) => {
                self.http_proxies.insert(key, o);
            }
            Object::TlsCertificateDelegation(o) => {
                self.delegations_by_namespace.entry(key.0.clone()).or_default().insert(key.1.clone());
                self.delegations.insert(key, o);
            }
            Object::VoyagerIngress(o) => {
                self.voyager_ingresses.insert(key, o);
            }
            Object::Ingress(o) => {
                self.ingresses.insert(key, o);
            }
            Object::IngressClass(o) => {
                self.ingress_classes.insert(key, o);
            }
            Object::GatewayClass(o) => {
                self.gateway_classes.insert(key, o);
            }
            Object::Gateway(o) => {
                self.gateways.insert(key, o);
            }
            Object::HttpRoute(o) => {
                self.http_routes.insert(key, o);
            }
            Object::ReferenceGrant(o) => {
                self.reference_grants.insert(key, o);
            }
            Object::BackendTlsPolicy(o) => {
                self.unindex_policy(&key);
                for service in o.target_refs.iter().map(|t| t.name.clone()) {
                    self.policies_by_service.entry((key.0.clone(), service)).or_default().insert(key.1.clone());
                }
                self.backend_tls_policies.insert(key, o);
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
            Kind::EndpointSlice => {
                self.unindex_slice(&key);
                self.endpoint_slices.remove(&key);
            }
            Kind::HttpProxy => drop(self.http_proxies.remove(&key)),
            Kind::TlsCertificateDelegation => {
                if let Some(names) = self.delegations_by_namespace.get_mut(&key.0) {
                    names.remove(&key.1);
                    if names.is_empty() {
                        self.delegations_by_namespace.remove(&key.0);
                    }
                }
                self.delegations.remove(&key);
            }
            Kind::VoyagerIngress => drop(self.voyager_ingresses.remove(&key)),
            Kind::Ingress => drop(self.ingresses.remove(&key)),
            Kind::IngressClass => drop(self.ingress_classes.remove(&key)),
            Kind::Secret => {
                drop(self.verdicts.remove(&SecretRef { namespace: key.0, name: key.1, holder: Holder::Secret }))
            }
            Kind::ConfigMap => {
                drop(self.verdicts.remove(&SecretRef { namespace: key.0, name: key.1, holder: Holder::ConfigMap }))
            }
            Kind::GatewayClass => drop(self.gateway_classes.remove(&key)),
            Kind::Gateway => drop(self.gateways.remove(&key)),
            Kind::HttpRoute => drop(self.http_routes.remove(&key)),
            Kind::ReferenceGrant => drop(self.reference_grants.remove(&key)),
            Kind::BackendTlsPolicy => {
                self.unindex_policy(&key);
                self.backend_tls_policies.remove(&key);
            }
        }
    }

    fn unindex_policy(&mut self, key: &Key) {
        let Some(policy) = self.backend_tls_policies.get(key) else { return };
        for service in policy.target_refs.iter().map(|t| t.name.clone()) {
            let index = (key.0.clone(), service);
            if let Some(names) = self.policies_by_service.get_mut(&index) {
                names.remove(&key.1);
                if names.is_empty() {
                    self.policies_by_service.remove(&index);
                }
            }
        }
    }

    /// The BackendTLSPolicies of `namespace` with a targetRef naming `service`.
    pub fn policies_naming<'a>(
        &'a self,
        namespace: &K8sName,
        service: &str,
    ) -> impl Iterator<Item = &'a BackendTlsPolicy> + 'a {
        let names = self.policies_by_service.get(&(namespace.clone(), service.to_owned()));
        let namespace = namespace.clone();
        names.into_iter().flatten().filter_map(move |n| self.backend_tls_policies.get(&(namespace.clone(), n.clone())))
    }

    /// The objects of `map` in `namespace`, without looking at the others.
    pub fn in_namespace<'a, V>(map: &'a BTreeMap<Key, V>, namespace: &K8sName) -> impl Iterator<Item = &'a V> + 'a {
        // "0" sorts before every valid name (they start with a lowercase letter or a digit).
        let first: K8sName = "0".parse().expect("a valid name");
        let namespace = namespace.clone();
        map.range((namespace.clone(), first)..).take_while(move |((ns, _), _)| *ns == namespace).map(|(_, v)| v)
    }

    fn unindex_slice(&mut self, key: &Key) {
        let Some(service) = self.endpoint_slices.get(key).and_then(|s| s.service_name.clone()) else { return };
        let index = (key.0.clone(), service);
        if let Some(names) = self.slices_by_service.get_mut(&index) {
            names.remove(&key.1);
            if names.is_empty() {
                self.slices_by_service.remove(&index);
            }
        }
    }

    /// The EndpointSlices labelled with a Service's name.
    pub fn slices_of<'a>(&'a self, namespace: &K8sName, service: &str) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        let names = self.slices_by_service.get(&(namespace.clone(), service.to_owned()));
        let namespace = namespace.clone();
        names.into_iter().flatten().filter_map(move |n| self.endpoint_slices.get(&(namespace.clone(), n.clone())))
    }

    /// The TLSCertificateDelegations of a namespace.
    pub fn delegations_in<'a>(
        &'a self,
        namespace: &K8sName,
    ) -> impl Iterator<Item = &'a TlsCertificateDelegation> + 'a {
        let names = self.delegations_by_namespace.get(namespace);
        let namespace = namespace.clone();
        names.into_iter().flatten().filter_map(move |n| self.delegations.get(&(namespace.clone(), n.clone())))
    }

    pub fn set_verdict(&mut self, verdict: SecretVerdict) {
        self.verdicts.insert(verdict.secret.clone(), verdict);
    }

    pub fn remove_verdict(&mut self, secret: &SecretRef) {
        self.verdicts.remove(secret);
    }
}
