//! The route table split by host, for Envoys fed over ADS (scoped routes, SRDS).
//!
//! One route configuration of 10,000 virtual hosts is rebuilt whole by Envoy for any
//! host's change (35–70 ms at 10,000 routes, plus sending and decoding it), and VHDS does
//! not help: Envoy merges its virtual hosts back into one configuration and rebuilds that.
//! Scoped routes do: each exact host is a scope whose key is the host, pointing at one of
//! `SHARDS` small route configurations (chosen by a hash of the host), so a host's change
//! rebuilds a shard of a few dozen hosts.
//!
//! Scope keys are exact, and Envoy has no fallback scope; the rest is done here:
//! - An early header mutation (before routing) writes `x-portico-scope: <port>/<authority>`
//!   over whatever the client sent, and the key is its part before any `:` (the port).
//! - A request that found no route (its key has no scope: a wildcard's or any host's, a
//!   host written in capitals, a host not routed; or its exact host has no route for its
//!   path) runs the Lua filter (the shards turn it off for the requests they route): it
//!   tries the lowercased host, then the port's fallback scope `<port>/*`, whose route
//!   configuration (`routes_<port>`) holds the wildcard and any-host virtual hosts,
//!   matched by Envoy's domains as before. So an exact host's path without a route falls
//!   through to the wildcard over it, then to any host, as in HAProxy (exact host, then
//!   wildcard, then any host) and as Gateway API merges a host's routes with those of
//!   routes without hostnames. A request an exact host routes never runs Lua.
//! - Every route configuration removes `x-portico-scope` before the request goes upstream.

use crate::{ads_source, any, route_config_name};
use envoy_types::pb::envoy::config::common::mutation_rules::v3 as mutation_rules;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::lua::v3 as lua;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::http::early_header_mutation::header_mutation::v3 as early;
use portico_model::DnsName;

/// The request header the scope key is read from (written by Envoy, never the client's).
pub const SCOPE_HEADER: &str = "x-portico-scope";

/// How many route configurations a port's exact hosts are spread over. At 10,000 hosts a
/// shard holds about 40, which Envoy rebuilds in well under a millisecond.
pub const SHARDS: u64 = 256;

/// The name the Lua filter has in the HTTP connection manager (and under which the shards
/// turn it off).
pub const LUA_FILTER: &str = "envoy.filters.http.lua";

/// The shard of an exact host: FNV-1a of its name, the same in every build and replica.
pub fn shard_of(host: &DnsName) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in host.as_str().bytes() {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h % SHARDS
}

/// The route configuration of one shard of a port's exact hosts.
pub fn shard_name(port: u16, shard: u64) -> String {
    format!("routes_{port}.{shard:02x}")
}

/// A scope's name and key: `<port>/<host>`, or `<port>/*` for the port's fallback.
pub fn scope_key(port: u16, host: Option<&DnsName>) -> String {
    match host {
        Some(host) => format!("{port}/{host}"),
        None => format!("{port}/*"),
    }
}

/// The scope of an exact host (its shard), or the port's fallback scope (`routes_<port>`).
pub fn scope(port: u16, host: Option<&DnsName>) -> route::ScopedRouteConfiguration {
    use route::scoped_route_configuration::key::{fragment, Fragment};
    let key = scope_key(port, host);
    route::ScopedRouteConfiguration {
        name: key.clone(),
        route_configuration_name: match host {
            Some(host) => shard_name(port, shard_of(host)),
            None => route_config_name(port),
        },
        key: Some(route::scoped_route_configuration::Key {
            fragments: vec![Fragment { r#type: Some(fragment::Type::StringKey(key)) }],
        }),
        ..Default::default()
    }
}

/// A route configuration of the scoped table: a shard (`exact`: Lua off) or a port's
/// fallback. Everything but the name and the virtual hosts is `tail(exact)`.
pub fn route_configuration(
    name: String,
    virtual_hosts: Vec<route::VirtualHost>,
    exact: bool,
) -> route::RouteConfiguration {
    route::RouteConfiguration { name, virtual_hosts, ..tail(exact) }
}

/// A scoped route configuration without its name and virtual hosts: prost encodes those
/// two fields first, so a configuration's encoding is theirs followed by this one's.
pub fn tail(exact: bool) -> route::RouteConfiguration {
    let lua_off =
        lua::LuaPerRoute { r#override: Some(lua::lua_per_route::Override::Disabled(true)), ..Default::default() };
    route::RouteConfiguration {
        request_headers_to_remove: vec![SCOPE_HEADER.to_owned()],
        typed_per_filter_config: if exact {
            [(LUA_FILTER.to_owned(), any(&lua_off))].into_iter().collect()
        } else {
            Default::default()
        },
        ..Default::default()
    }
}

/// The Lua that finds the scope of a request whose key had none (see the module's notes).
/// Only the port is written into it.
fn fallback_script(port: u16) -> String {
    format!(
        r#"-- Portico: the scope of a request whose host has no scope of its own.
function envoy_on_request(request)
  local headers = request:headers()
  local authority = headers:get(":authority") or ""
  local host = string.lower(authority)
  if host ~= authority then
    headers:replace("{SCOPE_HEADER}", "{port}/" .. host)
    request:clearRouteCache()
    request:metadata()
    if request:streamInfo():routeName() ~= "" then
      return
    end
  end
  headers:replace("{SCOPE_HEADER}", "{port}/*")
  request:clearRouteCache()
end
"#
    )
}

/// The parts of a port's HTTP connection manager that route by scope: the early header
/// mutation that writes the key, the scoped routes, and the Lua filter (before the router).
pub fn manager(
    port: u16,
) -> (Vec<core::TypedExtensionConfig>, hcm::http_connection_manager::RouteSpecifier, hcm::HttpFilter) {
    use hcm::scoped_routes::scope_key_builder::fragment_builder::{header_value_extractor, HeaderValueExtractor};
    use hcm::scoped_routes::scope_key_builder::{fragment_builder, FragmentBuilder};
    let write_key = early::HeaderMutation {
        mutations: vec![mutation_rules::HeaderMutation {
            action: Some(mutation_rules::header_mutation::Action::Append(core::HeaderValueOption {
                header: Some(core::HeaderValue {
                    key: SCOPE_HEADER.to_owned(),
                    value: format!("{port}/%REQ(:AUTHORITY)%"),
                    ..Default::default()
                }),
                append_action: core::header_value_option::HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
                ..Default::default()
            })),
        }],
    };
    let early =
        vec![core::TypedExtensionConfig { name: "portico.scope_key".to_owned(), typed_config: Some(any(&write_key)) }];
    let scoped = hcm::ScopedRoutes {
        name: format!("scopes_{port}"),
        scope_key_builder: Some(hcm::scoped_routes::ScopeKeyBuilder {
            fragments: vec![FragmentBuilder {
                r#type: Some(fragment_builder::Type::HeaderValueExtractor(HeaderValueExtractor {
                    name: SCOPE_HEADER.to_owned(),
                    element_separator: ":".to_owned(),
                    extract_type: Some(header_value_extractor::ExtractType::Index(0)),
                })),
            }],
        }),
        rds_config_source: Some(ads_source()),
        config_specifier: Some(hcm::scoped_routes::ConfigSpecifier::ScopedRds(hcm::ScopedRds {
            scoped_rds_config_source: Some(ads_source()),
            ..Default::default()
        })),
    };
    let script = lua::Lua {
        default_source_code: Some(core::DataSource {
            specifier: Some(core::data_source::Specifier::InlineString(fallback_script(port))),
            ..Default::default()
        }),
        ..Default::default()
    };
    let filter = hcm::HttpFilter {
        name: LUA_FILTER.to_owned(),
        config_type: Some(hcm::http_filter::ConfigType::TypedConfig(any(&script))),
        ..Default::default()
    };
    (early, hcm::http_connection_manager::RouteSpecifier::ScopedRoutes(scoped), filter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_are_stable_and_spread() {
        let host = |s: &str| DnsName::parse(s).unwrap();
        // Fixed: another build or replica must name the same shard (a moved host would
        // be sent again for nothing).
        assert_eq!(shard_of(&host("p-1.bench.example.com")), shard_of(&host("p-1.bench.example.com")));
        let used: std::collections::BTreeSet<u64> =
            (0..10_000).map(|n| shard_of(&host(&format!("p-{n}.bench.example.com")))).collect();
        assert_eq!(used.len() as u64, SHARDS, "10,000 hosts use every shard");
        let mut per_shard = std::collections::BTreeMap::<u64, usize>::new();
        for n in 0..10_000 {
            *per_shard.entry(shard_of(&host(&format!("p-{n}.bench.example.com")))).or_default() += 1;
        }
        let largest = per_shard.values().max().copied().unwrap_or_default();
        assert!(largest < 80, "about 39 hosts per shard, the largest has {largest}");
    }

    #[test]
    fn a_configuration_is_its_name_and_hosts_then_its_tail() {
        use prost::Message;
        let vhosts = vec![
            route::VirtualHost { name: "a".into(), domains: vec!["a".into()], ..Default::default() },
            route::VirtualHost { name: "b".into(), domains: vec!["b".into()], ..Default::default() },
        ];
        for exact in [true, false] {
            let whole = route_configuration("routes_80.01".into(), vhosts.clone(), exact).encode_to_vec();
            let head = route::RouteConfiguration {
                name: "routes_80.01".into(),
                virtual_hosts: vhosts.clone(),
                ..Default::default()
            }
            .encode_to_vec();
            assert_eq!(whole, [head, tail(exact).encode_to_vec()].concat());
        }
    }
}
