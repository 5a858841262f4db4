//! Outbound URL checks for `http` and runbook `notify` steps: the host must be
//! in `http.allowed_hosts`, and after DNS resolution loopback, link-local,
//! private and unique-local addresses are refused unless that exact host or
//! IP is listed (a wildcard never unlocks them).

use std::net::{IpAddr, SocketAddr};

use crate::action::ActionError;
use crate::config::Config;

/// A URL that passed the checks, with the addresses it may connect to.
#[derive(Debug, Clone)]
pub struct CheckedUrl {
    pub url: reqwest::Url,
    pub host: String,
    pub addrs: Vec<SocketAddr>,
}

impl CheckedUrl {
    /// A client that can reach only the addresses checked here: a second DNS
    /// answer (rebinding) cannot move the request elsewhere, and no proxy from
    /// the environment gets to resolve the name instead of us. Same settings
    /// as the shared client otherwise: no redirects, pitcrew's user agent.
    pub fn client(&self, timeout: std::time::Duration) -> Result<reqwest::Client, ActionError> {
        let mut builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("pitcrew/", env!("CARGO_PKG_VERSION")))
            .no_proxy()
            .timeout(timeout)
            .connect_timeout(timeout.min(CONNECT_TIMEOUT));
        if self.host.parse::<IpAddr>().is_err() {
            builder = builder.resolve_to_addrs(&self.host, &self.addrs);
        }
        builder
            .build()
            .map_err(|e| ActionError::Unavailable(format!("cannot build an HTTP client: {e}")))
    }
}

const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `http.allowed_hosts` lets steps call `host` (lowercase, IPv6
/// without brackets) on `port`.
pub fn host_allowed(config: &Config, host: &str, port: u16) -> bool {
    config
        .allowed_hosts
        .iter()
        .any(|h| h.exact_match(host, port) || h.wildcard_match(host, port))
}

/// Checks `url` against config and resolves it.
pub async fn check_url(config: &Config, url: &str) -> Result<CheckedUrl, ActionError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ActionError::input("url", format!("invalid URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(ActionError::input(
            "url",
            format!("scheme {:?} is not http or https", parsed.scheme()),
        ));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(ActionError::input("url", "credentials in URLs are not allowed; use headers"));
    }
    let host = parsed
        .host_str()
        .ok_or_else(|| ActionError::input("url", "has no host"))?
        .to_ascii_lowercase();
    let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
    let port = parsed.port_or_known_default().unwrap_or(80);
    let exact = config.allowed_hosts.iter().any(|h| h.exact_match(&host, port));
    if !host_allowed(config, &host, port) {
        return Err(ActionError::Refused(format!("host {host}:{port} is not in http.allowed_hosts")));
    }
    let addrs: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host.as_str(), port))
            .await
            .map_err(|e| ActionError::Unavailable(format!("cannot resolve {host}: {e}")))?
            .collect(),
    };
    if addrs.is_empty() {
        return Err(ActionError::Unavailable(format!("{host} resolved to no address")));
    }
    if !exact && let Some(bad) = addrs.iter().find(|a| is_internal(a.ip())) {
        return Err(ActionError::Refused(format!(
            "{host} resolves to internal address {}; list the exact host in http.allowed_hosts to allow it",
            bad.ip()
        )));
    }
    Ok(CheckedUrl { url: parsed, host, addrs })
}

/// Loopback, link-local (incl. 169.254.169.254), private, unique-local,
/// unspecified and the like: anything that is not a plain public unicast
/// address counts, so an odd range errs on the side of refusing.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || a == 0
                || a == 100 && (b & 0xc0) == 64 // CGNAT 100.64/10
                || a == 192 && b == 0 && c == 0 // IETF protocol assignments 192.0.0/24
                || a == 198 && (b & 0xfe) == 18 // benchmarking 198.18/15
                || a >= 240 // reserved 240/4
        }
        IpAddr::V6(v6) => {
            // IPv4 inside IPv6 reaches the IPv4 host: judge that host.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            let embedded = |hi: u16, lo: u16| IpAddr::V4(std::net::Ipv4Addr::from(((hi as u32) << 16) | lo as u32));
            if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
                return is_internal(embedded(s[6], s[7])); // NAT64 64:ff9b::/96
            }
            if s[0] == 0x2002 {
                return is_internal(embedded(s[1], s[2])); // 6to4 2002::/16
            }
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || s[..6] == [0, 0, 0, 0, 0, 0] // IPv4-compatible ::a.b.c.d (deprecated)
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link local
                || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated)
        }
    }
}

/// One `http.allowed_hosts` entry: `host`, `host:port`, `*.example.com`, IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedHost {
    pub host: String,
    pub port: Option<u16>,
    pub wildcard: bool,
}

impl AllowedHost {
    pub fn parse(text: &str) -> Result<AllowedHost, String> {
        let t = text.trim().to_ascii_lowercase();
        let (host, port) = if let Some(rest) = t.strip_prefix('[') {
            let (h, p) = rest.split_once(']').ok_or_else(|| format!("invalid host {text:?}"))?;
            (h.to_string(), p.strip_prefix(':').map(str::to_string))
        } else if t.matches(':').count() == 1 {
            let (h, p) = t.split_once(':').expect("one colon");
            (h.to_string(), Some(p.to_string()))
        } else {
            (t.clone(), None)
        };
        let port = port
            .map(|p| p.parse::<u16>().map_err(|_| format!("invalid port in {text:?}")))
            .transpose()?;
        let (host, wildcard) = match host.strip_prefix("*.") {
            Some(rest) => (rest.to_string(), true),
            None => (host, false),
        };
        if host.is_empty() || host.contains('*') || host.contains('/') {
            return Err(format!("invalid host {text:?}: expected a host name, IP, host:port or *.domain"));
        }
        Ok(AllowedHost { host, port, wildcard })
    }

    fn port_ok(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }

    pub fn exact_match(&self, host: &str, port: u16) -> bool {
        !self.wildcard && self.host == host && self.port_ok(port)
    }

    /// `*.0.0.1` must not read as "any IP ending in .0.0.1": wildcards are
    /// for names only.
    pub fn wildcard_match(&self, host: &str, port: u16) -> bool {
        self.wildcard
            && host.parse::<IpAddr>().is_err()
            && host.len() > self.host.len()
            && host.ends_with(&format!(".{}", self.host))
            && self.port_ok(port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses_are_recognised() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "0.0.0.0",
            "100.64.0.1",
            "224.0.0.1",
            "255.255.255.255",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
            "::127.0.0.1",
            "fec0::1",
            "ff02::1",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["8.8.8.8", "2001:4860::8888", "64:ff9b::808:808", "2002:808:808::"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }

    #[test]
    fn allowed_host_entries() {
        let w = AllowedHost::parse("*.internal.example").unwrap();
        assert!(w.wildcard_match("api.internal.example", 443));
        assert!(!w.wildcard_match("internal.example", 443));
        assert!(!w.wildcard_match("evil-internal.example", 443));
        let p = AllowedHost::parse("127.0.0.1:8080").unwrap();
        assert!(p.exact_match("127.0.0.1", 8080));
        assert!(!p.exact_match("127.0.0.1", 8081));
        let v6 = AllowedHost::parse("[::1]:9000").unwrap();
        assert!(v6.exact_match("::1", 9000));
        assert!(AllowedHost::parse("*").is_err());
        assert!(!AllowedHost::parse("*.0.0.1").unwrap().wildcard_match("127.0.0.1", 80));
    }
}
