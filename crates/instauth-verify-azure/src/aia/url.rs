//! The rules a caIssuers URL must pass before anything is fetched from it.

use super::AIA_PORTS;

/// Longest URL considered.
pub(crate) const MAX_URL_LEN: usize = 512;

/// Checks a URL against the fetch rules.
pub(super) fn check_url(url: &reqwest::Url, hosts: &[String]) -> Result<(), String> {
    match url.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "scheme {:?} is not http or https",
                printable(other)
            ))
        }
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL carries credentials".into());
    }
    // `domain()` is None for IP literals (including forms like `0x7f.1` that the URL parser
    // normalises to one): an address is never fetched, only an allow-listed name.
    let Some(host) = url.domain() else {
        return Err("host is an IP address, not an allowed certificate host".into());
    };
    if !hosts.iter().any(|h| h == host) {
        return Err(format!(
            "host {:?} is not an allowed certificate host",
            printable(host)
        ));
    }
    match url.port_or_known_default() {
        Some(p) if AIA_PORTS.contains(&p) => Ok(()),
        Some(p) => Err(format!("port {p} is not 80 or 443")),
        None => Err("no port".into()),
    }
}

/// At most 512 characters, control characters replaced: URLs and names come from unverified
/// certificates and end up in error messages and logs.
pub(crate) fn printable(s: &str) -> String {
    s.chars()
        .take(MAX_URL_LEN)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::aia::{AiaError, AIA_HOSTS};

    fn hosts() -> Vec<String> {
        AIA_HOSTS.iter().map(|h| h.to_string()).collect()
    }

    fn check(url: &str) -> Result<(), String> {
        let parsed = reqwest::Url::parse(url).map_err(|e| e.to_string())?;
        check_url(&parsed, &hosts())
    }

    #[test]
    fn only_allowed_hosts_schemes_and_ports() {
        for ok in [
            "http://www.microsoft.com/pkiops/certs/Microsoft%20TLS%20G2%20RSA%20CA%20OCSP%2002.crt",
            "https://caissuers.microsoft.com/x.crt",
            "http://cacerts.digicert.com:80/DigiCertGlobalRootG2.crt",
            "http://WWW.MICROSOFT.COM/x.crt",
            "https://cacerts.digicert.com:443/x",
        ] {
            assert_eq!(check(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://www.microsoft.com.evil.example/x.crt",
            "http://evil.example/www.microsoft.com",
            "http://microsoft.com/x.crt",
            "http://xwww.microsoft.com/x.crt",
            "http://www.microsoft.com./x.crt",
            "http://www.microsoft.com:8080/x.crt",
            "https://www.microsoft.com:80443/x.crt",
            "ftp://www.microsoft.com/x.crt",
            "ldap://www.microsoft.com/x",
            "file:///etc/passwd",
            "http://user:pw@www.microsoft.com/x.crt",
            "http://127.0.0.1/x.crt",
            "http://0x7f.1/x.crt",
            "http://[::1]/x.crt",
            "http://23.0.0.1:80/x.crt",
        ] {
            assert!(check(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn errors_say_whether_to_retry() {
        let u = |reason: &str| AiaError::Unavailable {
            url: "u".into(),
            reason: reason.into(),
        };
        assert!(u("x").is_unavailable());
        assert!(!AiaError::NoUrl.is_unavailable());
        assert!(!AiaError::Refused {
            url: "u".into(),
            reason: "r".into()
        }
        .is_unavailable());
        assert_eq!(printable("a\nb"), "a?b");
    }
}
