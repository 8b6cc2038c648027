//! haproxy.cfg from real models: snapshots, and every rendered config checked by the real
//! `haproxy -c` (HAProxy 2.6 from Debian; scripts/setup.sh installs it).

use portico_model::SecretRef;
use portico_renderer_haproxy::{render, Options, Trust};
use portico_resolver::Config;
use portico_testkit::{pipeline, repo, testdata};
use std::process::Command;

fn options(base: &str) -> Options {
    Options {
        base_dir: base.parse().unwrap(),
        bind_address: "127.0.0.1".parse().unwrap(),
        http_port: 8080,
        https_port: None,
    }
}

/// Write the files into a fresh directory, render them for that directory, and run
/// `haproxy -c` on the result. Returns the config text.
fn check_with_haproxy(model: &portico_model::Model, trust: &Trust) -> String {
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path().canonicalize().unwrap();
    let rendered = render(model, trust, &options(base.to_str().unwrap()));
    for (path, contents) in &rendered.files {
        let full = base.join(path);
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        std::fs::write(full, contents).unwrap();
    }
    let out = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(base.join("haproxy.cfg"))
        .output()
        .expect("haproxy must be installed (scripts/setup.sh installs it)");
    let cfg = String::from_utf8(rendered.files["haproxy.cfg"].clone()).unwrap();
    assert!(
        out.status.success(),
        "haproxy -c refused the config:\n{}{}\n---\n{cfg}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    cfg
}

#[test]
fn the_bundled_example_renders_to_the_committed_config_and_haproxy_accepts_it() {
    let (model, trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    let rendered = render(&model, &trust, &options("/etc/portico/haproxy"));
    assert_eq!(rendered.problems, Vec::<String>::new());
    let cfg = String::from_utf8(rendered.files["haproxy.cfg"].clone()).unwrap();
    expect_test::expect_file!["snapshots/upstream-tls.haproxy.cfg"].assert_eq(&cfg);
    assert!(cfg.ends_with('\n'));
    let ca_files: Vec<&String> = rendered.files.keys().filter(|k| k.starts_with("ca/")).collect();
    assert_eq!(ca_files.len(), 3, "one file per CA bundle, named by content hash: {ca_files:?}");
    for f in ca_files {
        assert!(cfg.contains(&format!("ca-file /etc/portico/haproxy/{f}")), "{f} is referenced");
    }
    check_with_haproxy(&model, &trust);
}

#[test]
fn rendering_is_deterministic() {
    let (model, trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    assert_eq!(render(&model, &trust, &options("/x")), render(&model, &trust, &options("/x")));
}

#[test]
fn missing_or_stale_trust_material_turns_the_route_into_a_503_not_an_unverified_one() {
    let (model, mut trust) = pipeline(&[repo().join("examples/upstream-tls")], &Config::default());
    let shop_ca = SecretRef::new("shop", "shop-ca").unwrap();
    // The material on hand is of another content than the model was resolved against.
    trust.get_mut(&shop_ca).unwrap().ca.as_mut().unwrap().sha256 = "0".repeat(64);
    let rendered = render(&model, &trust, &options("/x"));
    assert_eq!(rendered.problems.len(), 1, "{:?}", rendered.problems);
    assert!(rendered.problems[0].contains("no validated CA bundle of CA secret shop/shop-ca"));
    let cfg = String::from_utf8(rendered.files["haproxy.cfg"].clone()).unwrap();
    assert!(!cfg.contains("backend shop_storefront_8443_"), "the cluster is not rendered at all");
    check_with_haproxy(&model, &{
        trust.remove(&shop_ca);
        trust
    });
}

/// The entries of one of the rendered maps (`maps/<name>.map`), as lines.
fn map_lines(rendered: &portico_renderer_haproxy::Rendered, name: &str) -> Vec<String> {
    let file = rendered.files.get(&format!("maps/{name}.map")).unwrap_or_else(|| panic!("no map {name}"));
    String::from_utf8(file.clone()).unwrap().lines().map(str::to_owned).collect()
}

/// Every text file rendered (the configuration and its maps), for searching.
fn all_text(rendered: &portico_renderer_haproxy::Rendered) -> String {
    rendered
        .files
        .iter()
        .filter(|(path, _)| !path.ends_with(".pem"))
        .map(|(path, contents)| format!("# {path}\n{}", String::from_utf8_lossy(contents)))
        .collect()
}

#[test]
fn weights_rewrites_h2_ipv6_external_names_wildcards_and_503s_pass_haproxy() {
    let (model, trust) = pipeline(&[testdata("edge-cases.yaml")], &Config::default());
    let cfg = check_with_haproxy(&model, &trust);
    let rendered = render(&model, &trust, &options("/x"));
    let rewrites = map_lines(&rendered, "host-rewrite");
    assert!(rewrites.iter().any(|l| l.ends_with(" internal.example.com")), "{rewrites:?}");
    assert!(cfg.contains("http-request set-header Host %[var(txn.route),map("), "the rewrite is looked up by route");
    assert!(cfg.contains("rand(100)"), "weights 80/20 (0 dropped) draw from 100");
    assert!(cfg.contains("{ var(txn.pick) -m int lt 80 }"));
    assert!(cfg.contains(" proto h2"), "h2c and h2 upstreams speak HTTP/2");
    assert!(cfg.contains("server s2 ipv6@::1:443"), "IPv6 endpoints use ipv6@ and sort after IPv4");
    assert!(cfg.contains("server s1 localhost:443 init-addr last,libc,none"));
    assert!(cfg.contains("alpn h2,http/1.1 ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3"));
    // A wildcard is keyed by the host without its first label, which HAProxy takes off
    // the request's host with field(2,.,0): one label, as the model means it.
    let wildcards = map_lines(&rendered, "l8081-wildcard");
    assert!(wildcards.iter().any(|l| l.starts_with("example.org/")), "{wildcards:?}");
    assert!(cfg.contains("field(2,.,0)"));
    let timeouts = map_lines(&rendered, "timeout");
    assert!(timeouts.iter().any(|l| l.ends_with(" 90000")), "timeoutPolicy.response 1m30s: {timeouts:?}");
    assert!(cfg.contains("http-request set-timeout server var(txn.timeout) if { var(txn.timeout) -m found }"));
    let backends = map_lines(&rendered, "backend");
    assert!(backends.iter().any(|l| l.ends_with(portico_renderer_haproxy::REJECT_BACKEND)), "{backends:?}");
    assert!(cfg.contains("frontend listener_8081"));
    assert!(rendered.files.contains_key("maps/l8081-exact.map"), "one set of selection maps per listener");
}

#[test]
fn hostile_values_never_reach_the_config() {
    let (model, trust) = pipeline(&[testdata("hostile.yaml")], &Config::default());
    check_with_haproxy(&model, &trust);
    let text = all_text(&render(&model, &trust, &options("/x")));
    for injected in
        ["6.6.6.6", "always_true", "use_backend evil", "bind :1", "http-request deny", "backend x", "backend z"]
    {
        assert!(!text.contains(injected), "{injected:?} reached the config or its maps:\n{text}");
    }
    assert!(
        text.lines().any(|l| l.contains("/ok ") && l.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '/')),
        "the valid route is still there:\n{text}"
    );
}

#[test]
fn an_empty_model_is_a_valid_config_that_answers_404() {
    let cfg = check_with_haproxy(&portico_model::Model::default(), &Trust::new());
    assert!(cfg.contains("frontend listener_8080\n    bind 127.0.0.1:8080\n"), "the main port is always listened on");
    assert!(cfg.contains("default_backend portico_no_route_404"));
}

#[test]
fn hostile_objects_change_nothing_of_the_other_objects_backends() {
    let config = Config::default();
    let (alone, trust) = pipeline(&[testdata("edge-cases.yaml")], &config);
    let (together, trust_together) = pipeline(&[testdata("edge-cases.yaml"), testdata("hostile.yaml")], &config);
    let text =
        |model, trust| String::from_utf8(render(model, trust, &options("/x")).files["haproxy.cfg"].clone()).unwrap();
    let (alone, together) = (text(&alone, &trust), text(&together, &trust_together));
    let blocks = |cfg: &str| -> Vec<String> {
        cfg.split("\n\n").filter(|b| b.starts_with("backend ")).map(str::to_owned).collect()
    };
    for block in blocks(&alone) {
        assert!(together.contains(&block), "a backend changed when hostile objects were added:\n{block}");
    }
}
