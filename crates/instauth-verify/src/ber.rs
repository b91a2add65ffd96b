//! BER to DER normalisation for PKCS#7 bodies.
//!
//! AWS emits its `rsa2048` PKCS#7 with indefinite lengths and the content as a constructed
//! (chunked) OCTET STRING, which is valid BER but not DER; the `der`/`cms` decoders accept only
//! DER. [`ber_to_der`] rewrites definite/indefinite lengths in minimal form and joins constructed
//! OCTET STRINGs, leaving every primitive value's bytes untouched, so signatures over the content
//! or over DER-encoded signed attributes still verify against the normalised copy.

/// Why a BER body could not be normalised. Carries offsets only, never input bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BerError {
    /// The input ended inside an element.
    #[error("truncated BER element at offset {offset}")]
    Truncated {
        /// Offset of the element.
        offset: usize,
    },
    /// A length field is malformed or larger than the input.
    #[error("invalid BER length at offset {offset}")]
    BadLength {
        /// Offset of the length field.
        offset: usize,
    },
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("BER nesting deeper than {MAX_DEPTH}")]
    TooDeep,
    /// Bytes follow the outermost element.
    #[error("{count} trailing bytes after the outermost BER element")]
    TrailingData {
        /// How many.
        count: usize,
    },
    /// A constructed string other than OCTET STRING, or one with non-OCTET STRING chunks.
    #[error("unsupported constructed string encoding at offset {offset}")]
    UnsupportedConstructedString {
        /// Offset of the element.
        offset: usize,
    },
}

/// Nesting limit; PKCS#7 with certificates needs about 12 levels.
pub const MAX_DEPTH: usize = 48;

const TAG_OCTET_STRING: u8 = 0x04;
const TAG_OCTET_STRING_CONSTRUCTED: u8 = 0x24;
const CONSTRUCTED: u8 = 0x20;

/// Rewrites one BER element (the whole input) as DER. See the module documentation.
pub fn ber_to_der(input: &[u8]) -> Result<Vec<u8>, BerError> {
    let mut pos = 0;
    let mut out = Vec::with_capacity(input.len());
    if write_element(input, &mut pos, 0, &mut out)? == Written::Eoc {
        return Err(BerError::BadLength { offset: 0 });
    }
    if pos != input.len() {
        return Err(BerError::TrailingData {
            count: input.len() - pos,
        });
    }
    Ok(out)
}

#[derive(PartialEq, Eq)]
enum Written {
    /// An element was appended to the output.
    Element,
    /// An end-of-contents marker was consumed (nothing written).
    Eoc,
}

fn len_bytes(len: usize) -> ([u8; 9], usize) {
    let mut buf = [0u8; 9];
    if len < 0x80 {
        buf[0] = len as u8;
        return (buf, 1);
    }
    let bytes = len.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    let n = bytes.len() - skip;
    buf[0] = 0x80 | n as u8;
    for (dst, src) in buf.iter_mut().skip(1).zip(bytes.iter().skip(skip)) {
        *dst = *src;
    }
    (buf, 1 + n)
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    let (buf, n) = len_bytes(len);
    out.extend_from_slice(buf.get(..n).unwrap_or_default());
}

fn byte(input: &[u8], pos: &mut usize, start: usize) -> Result<u8, BerError> {
    let b = *input
        .get(*pos)
        .ok_or(BerError::Truncated { offset: start })?;
    *pos += 1;
    Ok(b)
}

/// Header length (tag + length bytes) of a DER element this module wrote at `at`.
fn der_header_len(out: &[u8], at: usize) -> Option<usize> {
    let first_len = *out.get(at + 1)?;
    Some(if first_len < 0x80 {
        2
    } else {
        2 + usize::from(first_len & 0x7f)
    })
}

/// Normalises the element at `input[*pos..]`, appending its DER to `out` without
/// intermediate allocations: a constructed element's length is inserted once its content is
/// written.
fn write_element(
    input: &[u8],
    pos: &mut usize,
    depth: usize,
    out: &mut Vec<u8>,
) -> Result<Written, BerError> {
    if depth > MAX_DEPTH {
        return Err(BerError::TooDeep);
    }
    let start = *pos;
    let first = byte(input, pos, start)?;
    let tag_start = *pos - 1;
    if first & 0x1f == 0x1f {
        // High tag number form: base-128 continuation bytes.
        loop {
            let b = byte(input, pos, start)?;
            if *pos - tag_start > 6 {
                return Err(BerError::BadLength { offset: start });
            }
            if b & 0x80 == 0 {
                break;
            }
        }
    }
    let tag = input
        .get(tag_start..*pos)
        .ok_or(BerError::Truncated { offset: start })?;
    let constructed = first & CONSTRUCTED != 0;
    let len_offset = *pos;
    let len_byte = byte(input, pos, start)?;
    let definite_len = match len_byte {
        0x80 => None,
        l if l < 0x80 => Some(usize::from(l)),
        l => {
            let n = usize::from(l & 0x7f);
            if n > 4 {
                return Err(BerError::BadLength { offset: len_offset });
            }
            let mut len = 0usize;
            for _ in 0..n {
                len = (len << 8) | usize::from(byte(input, pos, start)?);
            }
            Some(len)
        }
    };
    if first == 0 {
        // End-of-contents: tag 0, length 0.
        return if definite_len == Some(0) {
            Ok(Written::Eoc)
        } else {
            Err(BerError::BadLength { offset: len_offset })
        };
    }
    let end = match definite_len {
        Some(len) => Some(
            pos.checked_add(len)
                .filter(|e| *e <= input.len())
                .ok_or(BerError::BadLength { offset: len_offset })?,
        ),
        None if constructed => None,
        None => return Err(BerError::BadLength { offset: len_offset }),
    };
    if !constructed {
        let end = end.ok_or(BerError::BadLength { offset: len_offset })?;
        let content = input
            .get(*pos..end)
            .ok_or(BerError::Truncated { offset: start })?;
        out.extend_from_slice(tag);
        write_len(out, content.len());
        out.extend_from_slice(content);
        *pos = end;
        return Ok(Written::Element);
    }
    let chunked_octets = first == TAG_OCTET_STRING_CONSTRUCTED;
    if !chunked_octets
        && tag.len() == 1
        && first & 0xc0 == 0
        && (first & 0x1f) != 0x10
        && (first & 0x1f) != 0x11
    {
        // Other universal constructed types (strings, BIT STRING) are not used by PKCS#7 bodies
        // we accept; refuse rather than guess.
        return Err(BerError::UnsupportedConstructedString { offset: start });
    }
    if chunked_octets {
        // Chunked OCTET STRING: DER wants one primitive string with the chunks joined.
        out.push(TAG_OCTET_STRING);
    } else {
        out.extend_from_slice(tag);
    }
    let content_start = out.len();
    loop {
        if let Some(end) = end {
            if *pos == end {
                break;
            }
            if *pos > end {
                return Err(BerError::BadLength { offset: len_offset });
            }
        }
        let child_start = out.len();
        match write_element(input, pos, depth + 1, out)? {
            Written::Eoc if end.is_none() => break,
            Written::Eoc => return Err(BerError::BadLength { offset: *pos }),
            Written::Element if chunked_octets => {
                // Keep only the chunk's bytes (nested chunking is already flattened).
                if out.get(child_start) != Some(&TAG_OCTET_STRING) {
                    return Err(BerError::UnsupportedConstructedString { offset: start });
                }
                let chunk_start = der_header_len(out, child_start)
                    .map(|hdr| child_start + hdr)
                    .filter(|s| *s <= out.len())
                    .ok_or(BerError::UnsupportedConstructedString { offset: start })?;
                out.drain(child_start..chunk_start);
            }
            Written::Element => {}
        }
    }
    let (len_buf, n) = len_bytes(out.len() - content_start);
    out.splice(
        content_start..content_start,
        len_buf.get(..n).unwrap_or_default().iter().copied(),
    );
    Ok(Written::Element)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_passes_through_unchanged() {
        let der = [0x30, 0x06, 0x02, 0x01, 0x05, 0x04, 0x01, 0xaa];
        assert_eq!(ber_to_der(&der).unwrap(), der);
    }

    #[test]
    fn indefinite_and_chunked_become_der() {
        // SEQUENCE (indefinite) { OCTET STRING constructed (indefinite) { "ab", "c" } }
        let ber = [
            0x30, 0x80, 0x24, 0x80, 0x04, 0x02, b'a', b'b', 0x04, 0x01, b'c', 0x00, 0x00, 0x00,
            0x00,
        ];
        assert_eq!(
            ber_to_der(&ber).unwrap(),
            [0x30, 0x05, 0x04, 0x03, b'a', b'b', b'c']
        );
    }

    #[test]
    fn nested_chunks_and_long_lengths_are_flattened() {
        let ber = [
            0x24, 0x80, 0x24, 0x80, 0x04, 0x01, b'a', 0x00, 0x00, 0x04, 0x81, 0x01, b'b', 0x00,
            0x00,
        ];
        assert_eq!(ber_to_der(&ber).unwrap(), [0x04, 0x02, b'a', b'b']);
        let long = vec![0u8; 300];
        let mut ber = vec![0x30, 0x80, 0x04, 0x82, 0x01, 0x2c];
        ber.extend_from_slice(&long);
        ber.extend_from_slice(&[0, 0]);
        let der = ber_to_der(&ber).unwrap();
        assert_eq!(der[..6], [0x30, 0x82, 0x01, 0x30, 0x04, 0x82]);
        assert_eq!(der.len(), 4 + 4 + 300);
    }

    #[test]
    fn malformed_inputs_fail_cleanly() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x02],
            &[0x30, 0x80, 0x02, 0x01, 0x01],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x30, 0x85, 1, 1, 1, 1, 1],
            &[0x02, 0x01, 0x01, 0xff],
        ] {
            assert!(ber_to_der(bad).is_err(), "{bad:?}");
        }
        let deep: Vec<u8> = [0x30u8, 0x80].repeat(200);
        assert_eq!(ber_to_der(&deep), Err(BerError::TooDeep));
    }
}
