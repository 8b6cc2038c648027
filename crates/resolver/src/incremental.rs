//! Resolution proportional to the change (issue 9): a dependency index from what each
//! unit read (Services and their EndpointSlices, Secret verdicts, delegations, included
//! HTTPProxies) to the units that read it, so a one-object change re-resolves only its
//! dependents, and a route table kept across rebuilds.
//!
//! A unit is a root HTTPProxy with everything it includes, or a Voyager Ingress. Units
//! are ordered as full resolution orders them (HTTPProxies first, each kind by namespace
//! and name), and so are their claims on the route table: the result is the same as a
//! full resolve of the same snapshot (`tests/incremental.rs` checks this over random
//! change sequences), and `resolve` is this with every unit dirty.

use crate::build::{Slot, Table, VecMap};
use crate::common::{Dep, Index};
use crate::contour::{self, UnitOutput};
use crate::snapshot::Key;
use crate::{gateway, ingress, voyager, Config, Resolved, Snapshot};
use portico_model::{
    GatewayApiStatus, Holder, K8sName, Kind, Model, Object, ObjectRef, ObjectStatus, Problem, ProblemType, Reason,
    SecretRef, SecretVerdict,
};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// One unit of resolution, in the order route conflicts are decided in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum UnitKey {
    /// A root HTTPProxy and what it includes.
    Proxy(Key),
    Voyager(Key),
    /// A networking.k8s.io/v1 Ingress (of Portico's class or not: that is read too).
    Ingress(Key),
    /// A Gateway API HTTPRoute (attached to Portico's Gateways or not).
    HttpRoute(Key),
}

/// What a rebuild changed, for publishing only that.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Units resolved again (or dropped).
    pub units: usize,
    /// Objects whose status changed, and which were removed (their objects are gone).
    pub statuses: Vec<ObjectRef>,
    pub removed_statuses: Vec<ObjectRef>,
}

/// The resolver's state across changes: the snapshot, each unit's last output and what it
/// read, the route table, and every status.
pub struct Incremental {
    config: Config,
    snapshot: Snapshot,
    units: BTreeMap<UnitKey, Unit>,
    /// Dependency index: what was read → the units that read it.
    dependents: HashMap<Dep, Units>,
    /// Which units contributed problems to (or reached) each object.
    contributors: HashMap<ObjectRef, Units>,
    table: Table<UnitKey>,
    statuses: BTreeMap<ObjectRef, ObjectStatus>,
    dirty: BTreeSet<UnitKey>,
    /// Objects whose status must be computed again even if no unit names them.
    touched: BTreeSet<ObjectRef>,
}

/// A few units, sorted: most dependencies have one or two readers.
type Units = VecMap<UnitKey, ()>;

struct Unit {
    output: UnitOutput,
    deps: BTreeSet<Dep>,
}

impl Incremental {
    pub fn new(config: Config) -> Self {
        Self::from_snapshot(Snapshot::default(), config)
    }

    /// Start from a whole snapshot: every unit is dirty.
    pub fn from_snapshot(snapshot: Snapshot, config: Config) -> Self {
        let mut this = Incremental {
            config,
            snapshot,
            units: BTreeMap::new(),
            dependents: HashMap::new(),
            contributors: HashMap::new(),
            table: Table::default(),
            statuses: BTreeMap::new(),
            dirty: BTreeSet::new(),
            touched: BTreeSet::new(),
        };
        let proxies: Vec<Key> = this.snapshot.http_proxies.keys().cloned().collect();
        for key in proxies {
            this.dirty.insert(UnitKey::Proxy(key.clone()));
            this.touched.insert(object(Kind::HttpProxy, &key));
        }
        let ingresses: Vec<Key> = this.snapshot.voyager_ingresses.keys().cloned().collect();
        for key in ingresses {
            this.dirty.insert(UnitKey::Voyager(key.clone()));
            this.touched.insert(object(Kind::VoyagerIngress, &key));
        }
        let ingresses: Vec<Key> = this.snapshot.ingresses.keys().cloned().collect();
        for key in ingresses {
            this.dirty.insert(UnitKey::Ingress(key.clone()));
            this.touched.insert(object(Kind::Ingress, &key));
        }
        let routes: Vec<Key> = this.snapshot.http_routes.keys().cloned().collect();
        for key in routes {
            this.dirty.insert(UnitKey::HttpRoute(key.clone()));
            this.touched.insert(object(Kind::HttpRoute, &key));
        }
        this.touch_gateway_api(true);
        this
    }

    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Insert or replace an object (not a Secret: the resolver takes verdicts).
    pub fn apply(&mut self, object: Object) -> Result<(), crate::snapshot::SecretNotAccepted> {
        let reference = object.object_ref();
        self.invalidate(&reference);
        self.snapshot.apply(object)?;
        self.invalidate(&reference);
        Ok(())
    }

    /// Remove an object.
    pub fn remove(&mut self, reference: &ObjectRef) {
        self.invalidate(reference);
        self.snapshot.remove(reference);
    }

    pub fn set_verdict(&mut self, verdict: SecretVerdict) {
        self.mark(&Dep::Secret(verdict.secret.clone()));
        self.touch_trust_users(&verdict.secret);
        self.snapshot.set_verdict(verdict);
    }

    pub fn remove_verdict(&mut self, secret: &SecretRef) {
        self.mark(&Dep::Secret(secret.clone()));
        self.touch_trust_users(secret);
        self.snapshot.remove_verdict(secret);
    }

    /// The statuses read off a verdict without a unit reading it: every Gateway's
    /// (listener and client certificates; there are few), and those of the
    /// BackendTLSPolicies of its namespace that name it as a CA.
    fn touch_trust_users(&mut self, secret: &SecretRef) {
        self.touch_gateway_api(false);
        let kind = if secret.is_config_map() { "ConfigMap" } else { "Secret" };
        let users: Vec<ObjectRef> = Snapshot::in_namespace(&self.snapshot.backend_tls_policies, &secret.namespace)
            .filter(|p| {
                p.ca_certificate_refs.iter().any(|r| r.name == secret.name.as_str() && r.kind.as_deref() == Some(kind))
            })
            .map(|p| p.meta.object_ref(Kind::BackendTlsPolicy))
            .collect();
        self.touched.extend(users);
    }

    /// Compute the statuses of every Gateway and GatewayClass again (they are read off the
    /// snapshot and the HTTPRoutes' facts, and there are few of them), and with
    /// `policies` every BackendTLSPolicy's.
    fn touch_gateway_api(&mut self, policies: bool) {
        let snapshot = &self.snapshot;
        self.touched.extend(snapshot.gateways.keys().map(|k| object(Kind::Gateway, k)));
        self.touched.extend(snapshot.gateway_classes.keys().map(|k| object(Kind::GatewayClass, k)));
        if policies {
            self.touched.extend(snapshot.backend_tls_policies.keys().map(|k| object(Kind::BackendTlsPolicy, k)));
        }
    }

    /// Whether a rebuild has anything to do.
    pub fn is_dirty(&self) -> bool {
        !self.dirty.is_empty() || !self.touched.is_empty()
    }

    /// Mark what depends on `reference` as it is in the snapshot now (called before and
    /// after a change, so both the old and the new dependents are covered).
    fn invalidate(&mut self, reference: &ObjectRef) {
        let key: Key = (reference.namespace.clone(), reference.name.clone());
        match reference.kind {
            Kind::Service => self.mark(&Dep::Service(key)),
            Kind::EndpointSlice => {
                let service = self.snapshot.endpoint_slices.get(&key).and_then(|s| s.service_name.clone());
                if let Some(name) = service.and_then(|s| s.parse().ok()) {
                    self.mark(&Dep::Service((key.0.clone(), name)));
                }
            }
            Kind::HttpProxy => {
                self.mark(&Dep::Proxy(key.clone()));
                self.dirty.insert(UnitKey::Proxy(key));
                self.touched.insert(reference.clone());
            }
            Kind::VoyagerIngress => {
                self.dirty.insert(UnitKey::Voyager(key));
                self.touched.insert(reference.clone());
            }
            Kind::Ingress => {
                self.dirty.insert(UnitKey::Ingress(key));
                self.touched.insert(reference.clone());
            }
            Kind::IngressClass => {
                self.mark(&Dep::IngressClasses);
                // An Ingress that stops (or starts) being Portico's loses (or gains) its
                // status: every Ingress's status is computed again.
                let all: Vec<Key> = self.snapshot.ingresses.keys().cloned().collect();
                self.touched.extend(all.iter().map(|k| object(Kind::Ingress, k)));
            }
            Kind::TlsCertificateDelegation => self.mark(&Dep::Delegations(key.0)),
            Kind::Secret => {
                self.mark(&Dep::Secret(SecretRef { namespace: key.0, name: key.1, holder: Holder::Secret }))
            }
            Kind::ConfigMap => {
                self.mark(&Dep::Secret(SecretRef { namespace: key.0, name: key.1, holder: Holder::ConfigMap }))
            }
            Kind::HttpRoute => {
                self.dirty.insert(UnitKey::HttpRoute(key));
                self.touched.insert(reference.clone());
            }
            Kind::Gateway | Kind::GatewayClass => {
                self.mark(&Dep::GatewayApi);
                self.touch_gateway_api(false);
                self.touched.insert(reference.clone());
            }
            Kind::ReferenceGrant => {
                self.mark(&Dep::ReferenceGrants(key.0));
                // Listener and client certificates in other namespaces.
                self.touch_gateway_api(false);
            }
            Kind::BackendTlsPolicy => {
                // Called before and after the change: the old targets and the new ones. The
                // policies naming the same Services may win or lose a conflict.
                let services: Vec<String> = self
                    .snapshot
                    .backend_tls_policies
                    .get(&key)
                    .map(|p| p.target_refs.iter().map(|t| t.name.clone()).collect())
                    .unwrap_or_default();
                for service in services {
                    let Ok(name) = service.parse::<K8sName>() else { continue };
                    self.mark(&Dep::BackendTlsPolicies((key.0.clone(), name)));
                    let siblings: Vec<ObjectRef> = self
                        .snapshot
                        .policies_naming(&key.0, &service)
                        .map(|p| p.meta.object_ref(Kind::BackendTlsPolicy))
                        .collect();
                    self.touched.extend(siblings);
                }
                self.touched.insert(reference.clone());
            }
        }
    }

    fn mark(&mut self, dep: &Dep) {
        if let Some(units) = self.dependents.get(dep) {
            self.dirty.extend(units.iter().map(|(unit, ())| unit.clone()));
        }
    }

    /// Resolve the dirty units again and bring the route table and the statuses up to
    /// date. Returns what changed.
    pub fn rebuild(&mut self) -> Changes {
        let dirty = std::mem::take(&mut self.dirty);
        let mut touched = std::mem::take(&mut self.touched);
        let mut slots: BTreeSet<Slot> = BTreeSet::new();
        for unit in &dirty {
            // An HTTPRoute's status is its parents, which any of its dependencies may change
            // (a Gateway appearing), problems or not.
            if let UnitKey::HttpRoute(key) = unit {
                touched.insert(object(Kind::HttpRoute, key));
            }
            // Forget the old output.
            if let Some(old) = self.units.remove(unit) {
                for dep in &old.deps {
                    if let Some(set) = self.dependents.get_mut(dep) {
                        set.remove(unit);
                        if set.is_empty() {
                            self.dependents.remove(dep);
                        }
                    }
                }
                for reference in named(&old.output) {
                    if let Some(set) = self.contributors.get_mut(&reference) {
                        set.remove(unit);
                        if set.is_empty() {
                            self.contributors.remove(&reference);
                        }
                    }
                    touched.insert(reference);
                }
            }
            let output = self.resolve_unit(unit);
            let (routes, output, deps) = match output {
                Some((mut output, deps)) => (std::mem::take(&mut output.routes), Some(output), deps),
                None => (Vec::new(), None, BTreeSet::new()),
            };
            slots.extend(self.table.replace(unit, routes));
            if let Some(output) = output {
                for dep in &deps {
                    self.dependents.entry(dep.clone()).or_default().insert(unit.clone(), ());
                }
                for reference in named(&output) {
                    self.contributors.entry(reference.clone()).or_default().insert(unit.clone(), ());
                    touched.insert(reference);
                }
                self.units.insert(unit.clone(), Unit { output, deps });
            }
        }
        // Everyone in a slot that changed may have won or lost it.
        for slot in &slots {
            touched.extend(self.table.claimants(slot));
        }
        let mut changes = Changes { units: dirty.len(), ..Changes::default() };
        for reference in touched {
            match self.status(&reference) {
                Some(status) => {
                    if self.statuses.get(&reference) != Some(&status) {
                        self.statuses.insert(reference.clone(), status);
                        changes.statuses.push(reference);
                    }
                }
                None => {
                    if self.statuses.remove(&reference).is_some() {
                        changes.removed_statuses.push(reference);
                    }
                }
            }
        }
        changes
    }

    /// Resolve one unit against the snapshot: its output and what it read, or `None` when
    /// the unit does not exist (any more).
    fn resolve_unit(&self, unit: &UnitKey) -> Option<(UnitOutput, BTreeSet<Dep>)> {
        let index = Index::new(&self.snapshot, &self.config);
        let output = match unit {
            UnitKey::Proxy(key) => {
                let proxy = self.snapshot.http_proxies.get(key).filter(|p| p.is_root())?;
                contour::resolve_root(&index, proxy)
            }
            UnitKey::Voyager(key) => {
                let ingress = self.snapshot.voyager_ingresses.get(key)?;
                let mut problems = Vec::new();
                let routes = voyager::resolve_ingress(&index, ingress, &mut problems);
                let this = ingress.meta.object_ref(Kind::VoyagerIngress);
                UnitOutput {
                    routes,
                    problems: problems.into_iter().map(|p| (this.clone(), p)).collect(),
                    ..UnitOutput::default()
                }
            }
            UnitKey::Ingress(key) => {
                let ingress = self.snapshot.ingresses.get(key)?;
                if !ingress::is_ours(&index, ingress) {
                    return Some((UnitOutput::default(), index.take_deps()));
                }
                let mut problems = Vec::new();
                let routes = ingress::resolve_ingress(&index, ingress, &mut problems);
                let this = ingress.meta.object_ref(Kind::Ingress);
                UnitOutput {
                    routes,
                    problems: problems.into_iter().map(|p| (this.clone(), p)).collect(),
                    ..UnitOutput::default()
                }
            }
            UnitKey::HttpRoute(key) => {
                let route = self.snapshot.http_routes.get(key)?;
                let mut problems = Vec::new();
                let mut facts = gateway::GatewayFacts::default();
                let routes = gateway::resolve_http_route(&index, route, &mut problems, &mut facts);
                let this = route.meta.object_ref(Kind::HttpRoute);
                UnitOutput {
                    routes,
                    problems: problems.into_iter().map(|p| (this.clone(), p)).collect(),
                    reached: vec![],
                    gateway: facts,
                }
            }
        };
        Some((output, index.take_deps()))
    }

    /// The status of a Gateway API object: from the snapshot, and the facts of the
    /// HTTPRoutes that name it. `None` when it is gone or not Portico's.
    fn gateway_api_status(&self, reference: &ObjectRef) -> Option<ObjectStatus> {
        let key: Key = (reference.namespace.clone(), reference.name.clone());
        let index = Index::new(&self.snapshot, &self.config);
        let facts = || {
            self.contributors
                .get(reference)
                .into_iter()
                .flat_map(Units::iter)
                .filter_map(|(unit, ())| self.units.get(unit))
                .map(|u| &u.output.gateway)
        };
        let (status, problems) = match reference.kind {
            Kind::GatewayClass => (gateway::class_status(self.snapshot.gateway_classes.get(&key)?)?, Vec::new()),
            Kind::Gateway => {
                let gw = self.snapshot.gateways.get(&key)?;
                if !index.class_is_ours(&gw.class_name) {
                    return None;
                }
                let mut attached = BTreeMap::new();
                for f in facts() {
                    for (g, listener) in &f.attached {
                        if g == &key {
                            *attached.entry(listener.clone()).or_insert(0) += 1;
                        }
                    }
                }
                gateway::gateway_status(&index, gw, &attached)
            }
            Kind::BackendTlsPolicy => {
                let policy = self.snapshot.backend_tls_policies.get(&key)?;
                let ancestors: BTreeSet<Key> = facts()
                    .flat_map(|f| &f.policy_ancestors)
                    .filter(|(p, _)| p == &key)
                    .map(|(_, g)| g.clone())
                    .collect();
                gateway::policy_status(&index, policy, &ancestors)?
            }
            Kind::HttpRoute => {
                self.snapshot.http_routes.get(&key)?;
                let unit = self.units.get(&UnitKey::HttpRoute(key.clone()))?;
                if unit.output.gateway.parents.is_empty() {
                    return None; // attached to no Gateway of Portico's
                }
                let mut problems: Vec<Problem> =
                    unit.output.problems.iter().filter(|(o, _)| o == reference).map(|(_, p)| p.clone()).collect();
                problems.extend(self.table.lost_by(reference).into_iter().map(|(_, p)| p));
                (GatewayApiStatus::Parents(unit.output.gateway.parents.clone()), problems)
            }
            _ => return None,
        };
        Some(ObjectStatus { object: reference.clone(), problems, gateway: Some(status) })
    }

    /// The status of an object as things stand, or `None` when the object is gone.
    fn status(&self, reference: &ObjectRef) -> Option<ObjectStatus> {
        if reference.kind.is_gateway_api() {
            return self.gateway_api_status(reference);
        }
        let key: Key = (reference.namespace.clone(), reference.name.clone());
        let mut problems = match reference.kind {
            Kind::HttpProxy => contour::ignored_fields(self.snapshot.http_proxies.get(&key)?),
            Kind::VoyagerIngress => {
                self.snapshot.voyager_ingresses.get(&key)?;
                Vec::new()
            }
            Kind::Ingress => {
                let ingress = self.snapshot.ingresses.get(&key)?;
                // Another controller's Ingress: no status of Portico's.
                if !ingress::is_ours(&Index::new(&self.snapshot, &self.config), ingress) {
                    return None;
                }
                Vec::new()
            }
            _ => return None,
        };
        let units = self.contributors.get(reference);
        let mut reached = false;
        for (unit, ()) in units.into_iter().flat_map(Units::iter) {
            let Some(u) = self.units.get(unit) else { continue };
            reached |= u.output.reached.contains(&key);
            problems.extend(u.output.problems.iter().filter(|(o, _)| o == reference).map(|(_, p)| p.clone()));
        }
        if reference.kind == Kind::HttpProxy {
            let root = self.snapshot.http_proxies.get(&key).is_some_and(|p| p.is_root());
            if !root && !reached {
                problems.push(Problem::error(ProblemType::Orphaned, Reason::Orphaned, contour::ORPHANED));
            }
        }
        // A child included more than once reports each problem once.
        let mut i = 0;
        while i < problems.len() {
            if problems[..i].contains(&problems[i]) {
                problems.remove(i);
            } else {
                i += 1;
            }
        }
        // Then the routes it lost to an earlier claim, in conflict order.
        problems.extend(self.table.lost_by(reference).into_iter().map(|(_, p)| p));
        Some(ObjectStatus { object: reference.clone(), problems, gateway: None })
    }

    /// The model of the current table.
    pub fn model(&self) -> Model {
        self.table.model()
    }

    /// What changed in the model since it was last read whole (`model_read`) or as a
    /// delta, as pieces; `None` when it must be read whole (`Table::delta`).
    pub fn delta(&mut self) -> Option<portico_model::ModelDelta> {
        self.table.delta()
    }

    /// The model was read whole and published: deltas count from here.
    pub fn model_read(&mut self) {
        self.table.model_read()
    }

    /// Every status, sorted by kind, namespace and name.
    pub fn statuses(&self) -> impl Iterator<Item = &ObjectStatus> {
        self.statuses.values()
    }

    pub fn status_of(&self, reference: &ObjectRef) -> Option<&ObjectStatus> {
        self.statuses.get(reference)
    }

    /// The model and every status, as `resolve` returns them.
    pub fn resolved(&self) -> Resolved {
        Resolved { model: self.model(), statuses: self.statuses.values().cloned().collect() }
    }
}

fn object(kind: Kind, key: &Key) -> ObjectRef {
    ObjectRef { kind, namespace: key.0.clone(), name: key.1.clone() }
}

/// Every object a unit's output names: problem owners, route owners and reached proxies.
fn named(output: &UnitOutput) -> BTreeSet<ObjectRef> {
    let mut out: BTreeSet<ObjectRef> = output.problems.iter().map(|(o, _)| o.clone()).collect();
    out.extend(output.reached.iter().map(|k| object(Kind::HttpProxy, k)));
    let facts = &output.gateway;
    out.extend(facts.attached.iter().map(|(g, _)| object(Kind::Gateway, g)));
    out.extend(facts.policy_ancestors.iter().map(|(p, _)| object(Kind::BackendTlsPolicy, p)));
    out
}
