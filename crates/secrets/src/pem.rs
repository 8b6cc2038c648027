//! A small, strict PEM scanner: finds `-----BEGIN X-----` … `-----END X-----` blocks and
//! decodes their base64 bodies. Text outside blocks is ignored (SPEC section 4).

use base64::Engine;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub label: String,
    pub der: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PemError {
    #[error("PEM block {index} ('{label}') has no END line")]
    Unterminated { index: usize, label: String },
    #[error("PEM block {index} ('{label}') is not valid base64")]
    BadBase64 { index: usize, label: String },
    #[error("PEM block {index} has a malformed BEGIN line")]
    BadBegin { index: usize },
}

const BEGIN: &[u8] = b"-----BEGIN ";
const DASHES: &[u8] = b"-----";

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    hay.get(from..)?.windows(needle.len()).position(|w| w == needle).map(|p| p + from)
}

/// Every PEM block in `input`, in order.
pub fn blocks(input: &[u8]) -> Result<Vec<Block>, PemError> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(start) = find(input, BEGIN, at) {
        let index = out.len() + 1;
        let label_start = start + BEGIN.len();
        let label_end = find(input, DASHES, label_start).ok_or(PemError::BadBegin { index })?;
        let label = &input[label_start..label_end];
        if label.is_empty() || label.len() > 64 || !label.iter().all(|b| b.is_ascii_uppercase() || *b == b' ') {
            return Err(PemError::BadBegin { index });
        }
        let label = String::from_utf8_lossy(label).into_owned();
        let body_start = label_end + DASHES.len();
        let end_line = format!("-----END {label}-----");
        let body_end = find(input, end_line.as_bytes(), body_start)
            .ok_or_else(|| PemError::Unterminated { index, label: label.clone() })?;
        let body: Vec<u8> = input[body_start..body_end]
            .split(|b| *b == b'\n')
            // RFC 1421 headers (`Proc-Type: ...`) are not base64; skip them.
            .filter(|line| !line.contains(&b':'))
            .flat_map(|line| line.iter().copied())
            .filter(|b| !b.is_ascii_whitespace())
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(&body)
            .map_err(|_| PemError::BadBase64 { index, label: label.clone() })?;
        out.push(Block { label, der });
        at = body_end + end_line.len();
    }
    Ok(out)
}

/// PEM-encode DER with a label, 64 columns, trailing newline.
pub fn encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_outside_blocks_is_ignored_and_blocks_round_trip() {
        let pem = format!("# a comment\n{}trailing text\n{}", encode("CERTIFICATE", b"abc"), encode("X", b"de"));
        let found = blocks(pem.as_bytes()).unwrap();
        assert_eq!(
            found,
            vec![
                Block { label: "CERTIFICATE".into(), der: b"abc".to_vec() },
                Block { label: "X".into(), der: b"de".to_vec() },
            ]
        );
    }

    #[test]
    fn broken_blocks_say_which_and_why() {
        assert_eq!(
            blocks(b"-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap_err(),
            PemError::Unterminated { index: 1, label: "CERTIFICATE".into() }
        );
        assert_eq!(
            blocks(b"-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n").unwrap_err(),
            PemError::BadBase64 { index: 1, label: "CERTIFICATE".into() }
        );
        assert_eq!(blocks(b"no pem here").unwrap(), vec![]);
    }
}
