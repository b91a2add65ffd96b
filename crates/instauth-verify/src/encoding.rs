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

// A byte's class for `is_base64_lenient_whitespace`.
const OTHER: u8 = 0;
const SYMBOL: u8 = 1;
const SPACE: u8 = 2;
/// Each byte's class: a symbol of the standard alphabet, ASCII white space (as
/// [`u8::is_ascii_whitespace`]), or anything else (`=` included: it is only allowed at the end,
/// which the check takes apart first).
const CLASS: [u8; 256] = {
    let mut class = [OTHER; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphanumeric() || c == b'+' || c == b'/' {
            class[b] = SYMBOL;
        } else if c.is_ascii_whitespace() {
            class[b] = SPACE;
        }
        b += 1;
    }
    class
};

/// A symbol's 6-bit value (only called on a symbol of the standard alphabet).
fn symbol_value(b: u8) -> u8 {
    match b {
        b'A'..=b'Z' => b - b'A',
        b'a'..=b'z' => b - b'a' + 26,
        b'0'..=b'9' => b - b'0' + 52,
        b'+' => 62,
        _ => 63,
    }
}

/// Whether [`decode_base64_lenient_whitespace`]'s decoder accepts `input` (standard alphabet,
/// padded, unused bits zero; ASCII white space ignored; empty included), checked without
/// copying or decoding: the API checks each proof field this way before the verifier decodes
/// the one it uses. The tests hold it to the decoder's answer.
///
/// The end (padding and white space) is taken apart first, so the body is one branch-free pass
/// of table lookups: a symbol or white space at every byte, and a count of the white space.
pub fn is_base64_lenient_whitespace(input: &str) -> bool {
    let bytes = input.as_bytes();
    // From the end: white space and at most two `=`, up to the last symbol.
    let (mut end, mut padding) = (bytes.len(), 0usize);
    while let Some(&b) = end.checked_sub(1).and_then(|i| bytes.get(i)) {
        match b {
            b'=' => padding += 1,
            b if b.is_ascii_whitespace() => {}
            _ => break,
        }
        end -= 1;
    }
    let body = &bytes[..end];
    let (mut other, mut spaces) = (false, 0usize);
    for &b in body {
        let class = CLASS[usize::from(b)];
        other |= class == OTHER;
        spaces += usize::from(class == SPACE);
    }
    if other {
        return false;
    }
    let last = body.last().map_or(0, |&b| symbol_value(b));
    // Whole groups of four; the bits the padding leaves unused are zero.
    (body.len() - spaces + padding) % 4 == 0
        && match padding {
            0 => true,
            1 => last & 0b11 == 0,
            2 => last & 0b1111 == 0,
            _ => false,
        }
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

    /// The decoder's verdict, which [`is_base64_lenient_whitespace`] must match.
    fn decodes(input: &str) -> bool {
        base64::engine::general_purpose::STANDARD
            .decode(&*without_whitespace(input))
            .is_ok()
    }

    #[test]
    fn the_check_agrees_with_the_decoder() {
        for s in [
            "",
            " ",
            "aGVsbG8=",
            "aGVs\nbG8=\r\n",
            "aGVsbG8",
            "aGVsbG9=",
            "aGVsbA==",
            "aGVsbB==",
            "aGVsbA=",
            "aGVsbA===",
            "====",
            "aGVs=G8=",
            "aGVsbG8=\u{0}",
            "aGVs*bG8=",
            "aG\x0bVs",
            "QUJD\tQUJD",
            "=",
            "QQ==QUJD",
            "+/+/",
            "-_-_",
        ] {
            assert_eq!(is_base64_lenient_whitespace(s), decodes(s), "{s:?}");
        }
        // Random strings over the symbols that matter (two that carry low bits, padding,
        // white space, junk), and valid encodings with one symbol changed.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let symbols = [
            b'A', b'B', b'Q', b'g', b'+', b'/', b'=', b'\n', b' ', b'*', 0x0b, b'\t', b'\r', 0x0c,
            b'-',
        ];
        let (mut accepted, mut refused) = (0, 0);
        for round in 0..200_000 {
            let text: Vec<u8> = if round % 2 == 0 {
                let len = (next() % 14) as usize;
                (0..len)
                    .map(|_| symbols[(next() % symbols.len() as u64) as usize])
                    .collect()
            } else {
                let bytes: Vec<u8> = (0..next() % 8).map(|_| next() as u8).collect();
                let mut text = base64::engine::general_purpose::STANDARD
                    .encode(bytes)
                    .into_bytes();
                if !text.is_empty() && next() % 2 == 0 {
                    let at = (next() % text.len() as u64) as usize;
                    text[at] = symbols[(next() % symbols.len() as u64) as usize];
                }
                text
            };
            let text = String::from_utf8(text).expect("ASCII");
            let want = decodes(&text);
            assert_eq!(is_base64_lenient_whitespace(&text), want, "{text:?}");
            if want {
                accepted += 1;
            } else {
                refused += 1;
            }
        }
        assert!(
            accepted > 10_000 && refused > 10_000,
            "{accepted} / {refused}"
        );
    }

    #[test]
    fn json_errors_do_not_quote_the_document() {
        let e = serde_json::from_str::<u32>("\"secret\"").unwrap_err();
        let reason = json_error_reason(&e);
        assert!(!reason.contains("secret"), "{reason}");
        assert!(reason.contains("line 1"), "{reason}");
    }
}
