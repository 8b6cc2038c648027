//! The one place that knows the wire codec: bincode 2 (serde, standard configuration).
//! bincode is finished and no longer developed; keeping it behind this module means a
//! replacement touches one file.

use serde::{de::DeserializeOwned, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CodecError(pub String);

pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    bincode::serde::encode_to_vec(value, bincode::config::standard()).expect("Portico's types always encode")
}

/// How much a decoded value may claim: a corrupted length prefix (a proptest found
/// 3.6 × 10^18) is an error, not an allocation that aborts the process. The largest value
/// on the bus is a model piece of a few MiB.
const DECODE_LIMIT: usize = 256 * 1024 * 1024;

fn decoding() -> impl bincode::config::Config {
    bincode::config::standard().with_limit::<DECODE_LIMIT>()
}

/// Decode a whole buffer; trailing bytes are an error.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (value, read) = bincode::serde::decode_from_slice(bytes, decoding()).map_err(|e| CodecError(e.to_string()))?;
    if read != bytes.len() {
        return Err(CodecError(format!("{} trailing bytes", bytes.len() - read)));
    }
    Ok(value)
}

/// Decode a value at the start of a buffer, ignoring the rest (to read a header first).
pub fn decode_prefix<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    bincode::serde::decode_from_slice(bytes, decoding()).map(|(value, _)| value).map_err(|e| CodecError(e.to_string()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_corrupted_length_is_an_error_not_an_abort() {
        // A byte string claiming 2^62 bytes (bincode's varint: 0xfd, then 8 bytes).
        let hostile = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0x40];
        assert!(super::decode::<Vec<u8>>(&hostile).is_err());
        assert!(super::decode::<String>(&hostile).is_err());
        assert!(super::decode::<Vec<String>>(&hostile).is_err());
    }
}
