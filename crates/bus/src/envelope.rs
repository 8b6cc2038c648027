//! Every message on the bus is an envelope: schema version, W3C trace context, payload.
//! One trace follows a change from the watcher to the proxies because every hop copies
//! the trace context of what it consumed into what it publishes.

use crate::codec::{self, CodecError};
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// The version of the payload types. A reader refuses an envelope of another version
/// (logs and counts it) instead of misreading it.
/// 2: HTTPProxy includes and unimplemented fields; routes answering 502.
/// 3: the model by piece (`portico-model`: `piece.*` and the `ModelIndex` at `current`).
/// 4: `ModelIndex` carries when its change reached the bus and when it was published.
/// 5: routes carry an idle timeout (HTTPProxy `timeoutPolicy.idle`).
/// 6: HTTPS at the edge (a virtual host's `ServingTls`, `RedirectHttps`, the key pair's
///    verdict with its names), exact paths, Ingress v1 and IngressClass objects, and
///    several client certificates in a model (per-Ingress `proxy-ssl-secret`).
/// 7: Gateway API objects, ConfigMaps beside Secrets (`Holder`), URI SANs, CA unions and
///    the system CA in verification, Gateway API statuses.
pub const SCHEMA_VERSION: u16 = 7;

/// A W3C `traceparent` (and optional `tracestate`), validated: by `new`, and on decode
/// (a value from the bus goes through `new` too, so a corrupted or hostile entry starts a
/// new trace instead of reaching code that slices it).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "UncheckedTraceContext")]
pub struct TraceContext {
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Accept `traceparent` only in the W3C form `00-<32 hex>-<16 hex>-<2 hex>`, with
    /// non-zero trace and span ids; anything else is dropped (a new trace starts).
    pub fn new(traceparent: &str, tracestate: Option<&str>) -> TraceContext {
        let valid = {
            let parts: Vec<&str> = traceparent.split('-').collect();
            let hex =
                |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            parts.len() == 4
                && parts[0] == "00"
                && hex(parts[1], 32)
                && parts[1].bytes().any(|b| b != b'0')
                && hex(parts[2], 16)
                && parts[2].bytes().any(|b| b != b'0')
                && hex(parts[3], 2)
        };
        let state_ok = |s: &&str| s.len() <= 512 && s.bytes().all(|b| (0x20..0x7f).contains(&b));
        if valid {
            TraceContext {
                traceparent: Some(traceparent.to_owned()),
                tracestate: tracestate.filter(state_ok).map(str::to_owned),
            }
        } else {
            TraceContext::default()
        }
    }

    /// The trace id, when there is a trace.
    pub fn trace_id(&self) -> Option<&str> {
        self.traceparent.as_deref().and_then(|t| t.get(3..35))
    }
}

/// `TraceContext` as it is on the wire, before validation.
#[derive(Deserialize)]
struct UncheckedTraceContext {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl From<UncheckedTraceContext> for TraceContext {
    fn from(raw: UncheckedTraceContext) -> Self {
        match raw.traceparent {
            Some(parent) => TraceContext::new(&parent, raw.tracestate.as_deref()),
            None => TraceContext::default(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Envelope {
    /// First, so it can be read before the rest.
    schema: u16,
    trace: TraceContext,
    payload: Vec<u8>,
}

/// Why an envelope could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    #[error("envelope of schema version {got}; this build reads version {supported}")]
    IncompatibleSchema { got: u16, supported: u16 },
    #[error("malformed envelope: {0}")]
    MalformedEnvelope(CodecError),
    #[error("malformed payload: {0}")]
    MalformedPayload(CodecError),
}

/// Wrap a value for the bus.
pub fn seal<T: Serialize>(value: &T, trace: &TraceContext) -> Vec<u8> {
    codec::encode(&Envelope { schema: SCHEMA_VERSION, trace: trace.clone(), payload: codec::encode(value) })
}

/// `seal` of a payload already encoded (`codec::encode`).
pub fn seal_raw(payload: Vec<u8>, trace: &TraceContext) -> Vec<u8> {
    codec::encode(&Envelope { schema: SCHEMA_VERSION, trace: trace.clone(), payload })
}

/// Unwrap a value from the bus, with the trace context it carried.
pub fn open<T: DeserializeOwned>(bytes: &[u8]) -> Result<(T, TraceContext), OpenError> {
    let (payload, trace) = open_raw(bytes)?;
    let value = codec::decode(&payload).map_err(OpenError::MalformedPayload)?;
    Ok((value, trace))
}

/// `open` without decoding the payload: its encoding and the trace context.
pub fn open_raw(bytes: &[u8]) -> Result<(Vec<u8>, TraceContext), OpenError> {
    let schema: u16 = codec::decode_prefix(bytes).map_err(OpenError::MalformedEnvelope)?;
    if schema != SCHEMA_VERSION {
        return Err(OpenError::IncompatibleSchema { got: schema, supported: SCHEMA_VERSION });
    }
    let envelope: Envelope = codec::decode(bytes).map_err(OpenError::MalformedEnvelope)?;
    Ok((envelope.payload, envelope.trace))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_value_and_its_trace_survive_the_round_trip() {
        let trace = TraceContext::new(PARENT, Some("vendor=x"));
        let bytes = seal(&("hello".to_owned(), 7u32), &trace);
        let (value, got): ((String, u32), _) = open(&bytes).unwrap();
        assert_eq!(value, ("hello".to_owned(), 7));
        assert_eq!(got, trace);
        assert_eq!(got.trace_id(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
    }

    #[test]
    fn another_schema_version_is_refused_not_misread() {
        let envelope =
            Envelope { schema: SCHEMA_VERSION + 1, trace: TraceContext::default(), payload: codec::encode(&1u8) };
        let err = open::<u8>(&codec::encode(&envelope)).unwrap_err();
        assert_eq!(err, OpenError::IncompatibleSchema { got: SCHEMA_VERSION + 1, supported: SCHEMA_VERSION });
    }

    #[test]
    fn garbage_and_wrong_payload_types_are_errors_not_panics() {
        assert!(matches!(open::<u8>(&[]), Err(OpenError::MalformedEnvelope(_))));
        let schema = u8::try_from(SCHEMA_VERSION).unwrap(); // one byte in bincode's varint
        assert!(matches!(open::<u8>(&[schema, 0xff, 0xff, 0xff]), Err(OpenError::MalformedEnvelope(_))));
        let bytes = seal(&"not a number".to_owned(), &TraceContext::default());
        assert!(matches!(open::<u64>(&bytes), Err(OpenError::MalformedPayload(_))));
    }

    #[test]
    fn only_w3c_traceparents_are_carried() {
        for bad in [
            "",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\nx",
        ] {
            assert_eq!(TraceContext::new(bad, None), TraceContext::default(), "{bad:?} accepted");
        }
        assert_eq!(TraceContext::new(PARENT, Some("a\nb")).tracestate, None);
    }
}
