//! Decoding of proof fields: base64 that clouds hand out wrapped in lines, and JSON errors that
//! must not echo the document.

use base64::Engine;

/// A proof field that is not valid base64. Carries no part of the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not valid base64: {reason}")]
pub struct Base64Error {
    reason: String,
}

/// Inputs larger than this are refused before decoding; real proofs are a few KiB.
pub const MAX_ENCODED_LEN: usize = 256 * 1024;

/// `input`'s bytes without ASCII white space, copied only when there is some (agents that
/// re-encode send none, and a proof is checked on every exchange).
///
/// IMDS wraps its base64 at 64 or 76 columns, so most 16-byte blocks hold no white space: each
/// is tested whole (all white space is at or below `b' '`, and the test compiles to a few vector
/// instructions) and copied as one slice; only a block that may hold some goes byte by byte.
pub fn without_whitespace(input: &str) -> std::borrow::Cow<'_, [u8]> {
    const BLOCK: usize = 16;
    let maybe_space = |block: &[u8]| block.iter().fold(false, |any, &b| any | (b <= b' '));
    let bytes = input.as_bytes();
    if !bytes.chunks(BLOCK).any(maybe_space) {
        return bytes.into();
    }
    let mut out = Vec::with_capacity(bytes.len());
    for block in bytes.chunks(BLOCK) {
        if maybe_space(block) {
            out.extend(block.iter().filter(|b| !b.is_ascii_whitespace()));
        } else {
            out.extend_from_slice(block);
        }
    }
    out.into()
}

/// Decodes standard, padded base64, ignoring ASCII white space.
///
/// IMDS returns the AWS signature and PKCS#7 bodies wrapped at 64 or 76 columns, and agents pass
/// them on verbatim, so line breaks must be accepted; anything else outside the alphabet is not.
pub fn decode_base64_lenient_whitespace(input: &str) -> Result<Vec<u8>, Base64Error> {
    if input.len() > MAX_ENCODED_LEN {
        return Err(Base64Error {
            reason: format!("longer than {MAX_ENCODED_LEN} bytes"),
        });
    }
    let compact = without_whitespace(input);
    if compact.is_empty() {
        return Err(Base64Error {
            reason: "empty".into(),
        });
    }
    base64::engine::general_purpose::STANDARD
        .decode(&compact)
        .map_err(|e| Base64Error {
            // base64's messages name offsets and symbols of the input, never more than one byte.
            reason: e.to_string(),
        })
}

/// Why a JSON document did not parse, without any of its text: serde_json's messages may quote
/// values, so only the error class and position are kept.
pub fn json_error_reason(e: &serde_json::Error) -> String {
    format!(
        "{:?} error at line {} column {}",
        e.classify(),
        e.line(),
        e.column()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn white_space_goes_and_everything_else_stays() {
        // Every byte value at every offset of a 16-byte block, among wrapped base64 lines.
        let mut input = String::new();
        for (i, c) in (0u8..128).map(char::from).enumerate() {
            input.push_str(&"QUJD".repeat(i % 7));
            input.push(c);
            input.push_str("\r\n");
        }
        let want: Vec<u8> = input.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        assert_eq!(&*without_whitespace(&input), &want[..]);
        let compact = "QUJD".repeat(40);
        assert!(matches!(
            without_whitespace(&compact),
            std::borrow::Cow::Borrowed(b) if b == compact.as_bytes()
        ));
        assert_eq!(&*without_whitespace(" \t\x0c"), b"");
    }

    #[test]
    fn accepts_wrapped_lines_and_rejects_junk() {
        assert_eq!(
            decode_base64_lenient_whitespace("aGVs\nbG8=\r\n").unwrap(),
            b"hello"
        );
        assert!(decode_base64_lenient_whitespace("aGVs*bG8=").is_err());
        assert!(decode_base64_lenient_whitespace("aGVsbG8").is_err());
        assert!(decode_base64_lenient_whitespace("  ").is_err());
        assert!(decode_base64_lenient_whitespace("").is_err());
        // Without white space the input is decoded as it is.
        assert_eq!(
            decode_base64_lenient_whitespace("aGVsbG8=").unwrap(),
            b"hello"
        );
        assert!(decode_base64_lenient_whitespace("aGVsbG8=\u{0}").is_err());
    }

    #[test]
    fn json_errors_do_not_quote_the_document() {
        let e = serde_json::from_str::<u32>("\"secret\"").unwrap_err();
        let reason = json_error_reason(&e);
        assert!(!reason.contains("secret"), "{reason}");
        assert!(reason.contains("line 1"), "{reason}");
    }
}
