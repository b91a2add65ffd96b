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
    let el = parse(input, &mut pos, 0)?;
    el.write(&mut out);
    if pos != input.len() {
        return Err(BerError::TrailingData {
            count: input.len() - pos,
        });
    }
    Ok(out)
}

enum Element {
    /// Tag bytes and the already-normalised content.
    Tlv(Vec<u8>, Vec<u8>),
    /// End-of-contents marker of an indefinite-length element.
    Eoc,
}

impl Element {
    fn write(&self, out: &mut Vec<u8>) {
        if let Element::Tlv(tag, content) = self {
            out.extend_from_slice(tag);
            write_len(out, content.len());
            out.extend_from_slice(content);
        }
    }
}

fn write_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        let significant = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | significant.len() as u8);
        out.extend_from_slice(significant);
    }
}

fn byte(input: &[u8], pos: &mut usize, start: usize) -> Result<u8, BerError> {
    let b = *input
        .get(*pos)
        .ok_or(BerError::Truncated { offset: start })?;
    *pos += 1;
    Ok(b)
}

fn parse(input: &[u8], pos: &mut usize, depth: usize) -> Result<Element, BerError> {
    if depth > MAX_DEPTH {
        return Err(BerError::TooDeep);
    }
    let start = *pos;
    let first = byte(input, pos, start)?;
    let mut tag = vec![first];
    if first & 0x1f == 0x1f {
        // High tag number form: base-128 continuation bytes.
        loop {
            let b = byte(input, pos, start)?;
            tag.push(b);
            if tag.len() > 6 {
                return Err(BerError::BadLength { offset: start });
            }
            if b & 0x80 == 0 {
                break;
            }
        }
    }
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
    if first == 0 && tag.len() == 1 {
        // End-of-contents: tag 0, length 0.
        return if definite_len == Some(0) {
            Ok(Element::Eoc)
        } else {
            Err(BerError::BadLength { offset: len_offset })
        };
    }
    let end = match definite_len {
        Some(len) => {
            let end = pos
                .checked_add(len)
                .filter(|e| *e <= input.len())
                .ok_or(BerError::BadLength { offset: len_offset })?;
            Some(end)
        }
        None if constructed => None,
        None => return Err(BerError::BadLength { offset: len_offset }),
    };
    if !constructed {
        let end = end.ok_or(BerError::BadLength { offset: len_offset })?;
        let content = input
            .get(*pos..end)
            .ok_or(BerError::Truncated { offset: start })?
            .to_vec();
        *pos = end;
        return Ok(Element::Tlv(tag, content));
    }
    let mut children = Vec::new();
    loop {
        if let Some(end) = end {
            if *pos == end {
                break;
            }
            if *pos > end {
                return Err(BerError::BadLength { offset: len_offset });
            }
        }
        match parse(input, pos, depth + 1)? {
            Element::Eoc if end.is_none() => break,
            Element::Eoc => return Err(BerError::BadLength { offset: *pos }),
            child => children.push(child),
        }
    }
    if first == TAG_OCTET_STRING_CONSTRUCTED {
        // Chunked OCTET STRING: DER wants one primitive string with the chunks joined.
        let mut joined = Vec::new();
        for child in children {
            match child {
                Element::Tlv(t, c) if t == [TAG_OCTET_STRING] => joined.extend_from_slice(&c),
                _ => return Err(BerError::UnsupportedConstructedString { offset: start }),
            }
        }
        return Ok(Element::Tlv(vec![TAG_OCTET_STRING], joined));
    }
    if tag.len() == 1 && first & 0xc0 == 0 && (first & 0x1f) != 0x10 && (first & 0x1f) != 0x11 {
        // Other universal constructed types (strings, BIT STRING) are not used by PKCS#7 bodies
        // we accept; refuse rather than guess.
        return Err(BerError::UnsupportedConstructedString { offset: start });
    }
    let mut content = Vec::new();
    for child in children {
        child.write(&mut content);
    }
    Ok(Element::Tlv(tag, content))
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
