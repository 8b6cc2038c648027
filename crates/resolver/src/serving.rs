//! HTTPS at the edge (SPEC section 8), for every dialect: the certificate of a host, and
//! its routes on both listeners. A dialect resolves its routes on the HTTP listener as
//! before, looks up the host's certificate ([`Index::serving_certificate`]), and hands both
//! to [`serve_https`], which copies the routes onto the HTTPS listener and turns the plain
//! ones into redirects.

use crate::build::{PendingAction, PendingRoute};
use crate::common::{Dep, Index};
use crate::Config;
use portico_model::names::quote;
use portico_model::{HostMatch, K8sName, Problem, ProblemType, Reason, SecretRef, ServingTls, TlsVersion};

/// A host's certificate as a dialect names it.
pub struct CertificateRequest<'r> {
    /// What the status calls the field (`spec.virtualhost.tls.secretName`).
    pub field: &'r str,
    pub secret: SecretRef,
    /// The namespace of the object that names it: another one needs a
    /// TLSCertificateDelegation.
    pub from_namespace: &'r K8sName,
    pub min_version: TlsVersion,
}

impl Index<'_> {
    /// The certificate `request` names for `host`, or the error that makes the object
    /// invalid: not delegated, not found, not a valid pair, or not covering the host.
    pub fn serving_certificate(
        &self,
        request: &CertificateRequest<'_>,
        host: &HostMatch,
    ) -> Result<ServingTls, Problem> {
        let secret = &request.secret;
        let field = request.field;
        if !self.delegated(secret, request.from_namespace) {
            return Err(Problem::error(
                ProblemType::TLSError,
                Reason::DelegationNotPermitted,
                format!("{field}: certificate delegation not permitted for TLS Secret \"{secret}\""),
            )
            .with_detail(format!(
                "add a TLSCertificateDelegation in namespace \"{}\" listing secretName \"{}\" with targetNamespaces [\"{}\"] or [\"*\"]",
                secret.namespace, secret.name, request.from_namespace
            )));
        }
        self.record(Dep::Secret(secret.clone()));
        let invalid =
            |why: String| Problem::error(ProblemType::TLSError, Reason::SecretNotValid, format!("{field}: {why}"));
        let Some(verdict) = self.snapshot.verdicts.get(secret) else {
            return Err(invalid(format!("TLS Secret \"{secret}\" not found")));
        };
        let pair = verdict.key_pair.as_ref().map_err(|why| invalid(format!("TLS Secret \"{secret}\": {why}")))?;
        let name = match host {
            HostMatch::Exact(name) => name.to_string(),
            HostMatch::Wildcard(suffix) => format!("*.{suffix}"),
            HostMatch::Any => return Err(invalid("a certificate needs a host name; this rule has none".to_owned())),
        };
        if !pair.covers(&name) {
            let names = if pair.dns_names.is_empty() { "no name".to_owned() } else { pair.dns_names.join(", ") };
            return Err(invalid(format!(
                "TLS Secret \"{secret}\": certificate does not cover host {} (it is for {})",
                quote(&name),
                quote(&names)
            )));
        }
        Ok(ServingTls { secret: secret.clone(), sha256: pair.sha256.clone(), min_version: request.min_version })
    }
}

/// The lowest TLS version a host accepts, as Contour's `minimumProtocolVersion` writes it:
/// absent or `1.2` is TLS 1.2, `1.3` is TLS 1.3; anything else is an error naming `field`.
pub fn min_version(field: &str, written: Option<&str>) -> Result<TlsVersion, Problem> {
    match written {
        None | Some("") | Some("1.2") => Ok(TlsVersion::Tls12),
        Some("1.3") => Ok(TlsVersion::Tls13),
        Some(other) => Err(Problem::error(
            ProblemType::TLSError,
            Reason::InvalidValue,
            format!("{field} {} is not supported (use 1.2 or 1.3)", quote(other)),
        )),
    }
}

/// Put `host`'s routes on both listeners. `routes[i]` may stay plain when
/// `permit_insecure(i)`. With a certificate, each route of the host on the HTTP listener
/// is copied onto the HTTPS listener with it, and the plain one answers 301 to HTTPS
/// unless it may stay plain. Without one (the certificate is broken: the object's status
/// says why), the plain routes answer 503 unless they may stay plain: a host meant for
/// HTTPS is never served in the clear by accident.
pub fn serve_https(
    config: &Config,
    routes: &mut Vec<PendingRoute>,
    host: &HostMatch,
    tls: Option<&ServingTls>,
    permit_insecure: impl Fn(usize) -> bool,
) {
    let mut secured = Vec::new();
    for (i, route) in routes.iter_mut().enumerate() {
        if route.listener != config.http_port || &route.host != host {
            continue;
        }
        if let Some(tls) = tls {
            secured.push(PendingRoute { listener: config.https_port, tls: Some(tls.clone()), ..route.clone() });
        }
        if !permit_insecure(i) {
            route.action = match tls {
                Some(_) => PendingAction::RedirectHttps { port: config.https_redirect_port },
                None => PendingAction::Reject,
            };
        }
    }
    routes.extend(secured);
}

/// An Ingress's `spec.tls[] {hosts, secretName}` (Voyager's and Kubernetes'): each listed
/// host served over HTTPS with the Secret of its entry, in `namespace` (neither dialect has
/// delegation for it); a host listed twice keeps its first certificate. Plain HTTP to them
/// answers 301 unless `permit_insecure`.
pub fn serve_tls_list<'e>(
    index: &Index<'_>,
    namespace: &K8sName,
    entries: impl Iterator<Item = (&'e [String], &'e str)>,
    permit_insecure: bool,
    routes: &mut Vec<PendingRoute>,
    problems: &mut Vec<Problem>,
) {
    let mut served: Vec<HostMatch> = Vec::new();
    for (t, (hosts, secret_name)) in entries.enumerate() {
        let field = format!("spec.tls[{t}].secretName");
        let secret = match secret_name.parse::<K8sName>() {
            Ok(name) => Ok(SecretRef { namespace: namespace.clone(), name, holder: portico_model::Holder::Secret }),
            Err(_) => Err(Problem::error(
                ProblemType::TLSError,
                Reason::InvalidValue,
                format!("{field}: {} is not a Secret name", quote(secret_name)),
            )),
        };
        for written in hosts {
            let host = match HostMatch::parse(written) {
                Ok(HostMatch::Any) | Err(_) => {
                    problems.push(Problem::error(
                        ProblemType::TLSError,
                        Reason::InvalidValue,
                        format!("spec.tls[{t}].hosts: {} is not a host name", quote(written)),
                    ));
                    continue;
                }
                Ok(host) => host,
            };
            if served.contains(&host) {
                problems.push(Problem::warning(
                    ProblemType::TLSError,
                    Reason::IgnoredField,
                    format!("spec.tls[{t}].hosts: host {host} is listed before; the first certificate is used"),
                ));
                continue;
            }
            served.push(host.clone());
            let serving = secret.clone().and_then(|secret| {
                let request = CertificateRequest {
                    field: &field,
                    secret,
                    from_namespace: namespace,
                    min_version: TlsVersion::Tls12,
                };
                index.serving_certificate(&request, &host)
            });
            if let Err(problem) = &serving {
                problems.push(problem.clone());
            }
            serve_https(index.config, routes, &host, serving.as_ref().ok(), |_| permit_insecure);
        }
    }
}
