//! PEM certificate bundles as operators write them: certificates, optionally preceded by
//! `# key: value` comment lines (the AWS `--aws-certificates` files use `# region: NAME`).
//!
//! The PEM decoding itself is rustls-pki-types' ([`rustls_pki_types::pem`]); this module only
//! keeps track of where each certificate starts (for error messages) and which `# region:`
//! comment precedes it, which a plain PEM reader forgets.

use std::io::Cursor;

use rustls_pki_types::pem::{self, SectionKind};

/// A PEM bundle that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
#[error("PEM section starting on line {line}: {reason}")]
pub struct PemError {
    /// 1-based line where the faulty section (or the text after the last good one) starts.
    pub line: usize,
    /// What the PEM reader found wrong (never the section's base64).
    pub reason: String,
}

/// One certificate of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PemCertificate {
    /// The DER bytes (not yet parsed as a certificate).
    pub der: Vec<u8>,
    /// The value of the last `# region:` comment since the previous certificate, trimmed.
    pub region: Option<String>,
    /// 1-based line of the BEGIN line, for error messages.
    pub line: usize,
}

/// Reads every `CERTIFICATE` block of `text`; other PEM blocks and text are ignored.
pub fn parse_certificates(text: &str) -> Result<Vec<PemCertificate>, PemError> {
    let bytes = text.as_bytes();
    let mut reader = Cursor::new(bytes);
    let mut out = Vec::new();
    // A `# region:` comment stays pending across non-certificate sections until a certificate
    // takes it.
    let mut region = None;
    loop {
        let start = position(&reader);
        let line_at = |offset: usize| 1 + count_lines(&bytes[..offset]);
        let section = pem::from_buf(&mut reader).map_err(|e| PemError {
            // The reader does not say where it failed: name the first section it entered.
            line: line_at(first_begin(bytes, start).unwrap_or(start)),
            reason: describe(&e),
        })?;
        let Some((kind, der)) = section else {
            return Ok(out);
        };
        let end = position(&reader).min(bytes.len());
        // The reader stops right after the END line of the section it returns, so that
        // section's BEGIN line is the last one it consumed.
        let begin = last_begin(bytes, start, end).unwrap_or(start);
        if let Some(r) = last_region_comment(&bytes[start..begin]) {
            region = Some(r);
        }
        if kind == SectionKind::Certificate {
            out.push(PemCertificate {
                der,
                region: region.take(),
                line: line_at(begin),
            });
        }
    }
}

fn position(reader: &Cursor<&[u8]>) -> usize {
    usize::try_from(reader.position()).unwrap_or(usize::MAX)
}

fn count_lines(bytes: &[u8]) -> usize {
    bytes.iter().filter(|b| **b == b'\n').count()
}

/// Offsets of the lines of `bytes[from..to]` that start a PEM section.
fn begins(bytes: &[u8], from: usize, to: usize) -> impl Iterator<Item = usize> + '_ {
    let mut offset = from;
    bytes
        .get(from..to)
        .unwrap_or_default()
        .split_inclusive(|b| *b == b'\n')
        .filter_map(move |line| {
            let at = offset;
            offset += line.len();
            line.starts_with(b"-----BEGIN ").then_some(at)
        })
}

fn first_begin(bytes: &[u8], from: usize) -> Option<usize> {
    begins(bytes, from, bytes.len()).next()
}

fn last_begin(bytes: &[u8], from: usize, to: usize) -> Option<usize> {
    begins(bytes, from, to).last()
}

fn last_region_comment(text: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(text).ok()?;
    text.lines().rev().find_map(|line| {
        let (key, value) = line.trim().strip_prefix('#')?.split_once(':')?;
        key.trim()
            .eq_ignore_ascii_case("region")
            .then(|| value.trim().to_string())
    })
}

/// rustls-pki-types' messages quote the offending line for a bad BEGIN line; say what is wrong
/// without echoing file contents.
fn describe(e: &pem::Error) -> String {
    match e {
        pem::Error::MissingSectionEnd { .. } => "no END line".into(),
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line".into(),
        pem::Error::Base64Decode(_) => "not valid base64".into(),
        pem::Error::SectionTooLarge => "section too large".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comments_attach_to_the_next_certificate() {
        let text =
            "# region: eu-test-1\n-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n\
                    -----BEGIN CERTIFICATE-----\nAwQ=\n-----END CERTIFICATE-----\n";
        let certs = parse_certificates(text).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].region.as_deref(), Some("eu-test-1"));
        assert_eq!(certs[0].der, [0, 1, 2]);
        assert_eq!(certs[0].line, 2);
        assert_eq!(certs[1].region, None);
        assert_eq!(certs[1].line, 5);
    }

    #[test]
    fn errors_name_the_line_of_the_broken_section() {
        let err = parse_certificates(
            "-----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n\n# c\n-----BEGIN CERTIFICATE-----\nAAEC\n",
        )
        .unwrap_err();
        assert_eq!(err.line, 6, "{err}");
        assert!(err.to_string().contains("no END line"), "{err}");
        let err = parse_certificates("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----")
            .unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn other_sections_and_text_are_skipped() {
        let text =
            "hello\n# region: r1\n-----BEGIN PUBLIC KEY-----\nAAEC\n-----END PUBLIC KEY-----\n\
                    -----BEGIN CERTIFICATE-----\nAAEC\n-----END CERTIFICATE-----\n";
        let certs = parse_certificates(text).unwrap();
        assert_eq!(certs.len(), 1);
        assert_eq!(certs[0].region.as_deref(), Some("r1"));
        assert_eq!(certs[0].line, 6);
        assert!(parse_certificates("no pem here").unwrap().is_empty());
    }
}
