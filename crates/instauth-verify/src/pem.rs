//! PEM certificate bundles as operators write them: certificates, optionally preceded by
//! `# key: value` comment lines (the AWS `--aws-certificates` files use `# region: NAME`).

use base64::Engine;

/// A PEM bundle that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PemError {
    /// A `BEGIN CERTIFICATE` line without its `END CERTIFICATE` line.
    #[error("certificate starting on line {line} has no END CERTIFICATE line")]
    Unterminated {
        /// 1-based line of the BEGIN line.
        line: usize,
    },
    /// The base64 body of a certificate is invalid.
    #[error("certificate starting on line {line} is not valid base64")]
    BadBase64 {
        /// 1-based line of the BEGIN line.
        line: usize,
    },
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

const BEGIN: &str = "-----BEGIN CERTIFICATE-----";
const END: &str = "-----END CERTIFICATE-----";

/// Reads every `CERTIFICATE` block of `text`; other PEM blocks and text are ignored.
pub fn parse_certificates(text: &str) -> Result<Vec<PemCertificate>, PemError> {
    let mut out = Vec::new();
    let mut region = None;
    let mut lines = text.lines().enumerate();
    while let Some((idx, line)) = lines.next() {
        let line = line.trim();
        if let Some(comment) = line.strip_prefix('#') {
            if let Some((key, value)) = comment.split_once(':') {
                if key.trim().eq_ignore_ascii_case("region") {
                    region = Some(value.trim().to_string());
                }
            }
            continue;
        }
        if line != BEGIN {
            continue;
        }
        let start = idx + 1;
        let mut body = String::new();
        let mut closed = false;
        for (_, inner) in lines.by_ref() {
            let inner = inner.trim();
            if inner == END {
                closed = true;
                break;
            }
            body.push_str(inner);
        }
        if !closed {
            return Err(PemError::Unterminated { line: start });
        }
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.as_bytes())
            .map_err(|_| PemError::BadBase64 { line: start })?;
        out.push(PemCertificate {
            der,
            region: region.take(),
            line: start,
        });
    }
    Ok(out)
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
        assert_eq!(certs[1].region, None);
        assert!(parse_certificates("-----BEGIN CERTIFICATE-----\nAAEC\n").is_err());
        assert!(
            parse_certificates("-----BEGIN CERTIFICATE-----\n!!\n-----END CERTIFICATE-----")
                .is_err()
        );
    }
}
