//! Which URLs paygate will send merchant webhooks to (registered endpoints and a
//! transaction's `callback_url`). One function, so the policy can later be driven by config.
//!
//! - `https` always; `http` only for hosts in `allow_http_hosts` (local development);
//! - no credentials in the URL, no fragment, at most 2048 characters;
//! - no IP-literal host in a loopback, private, link-local or unspecified range unless
//!   explicitly allowed (a first guard against requests to internal services; the
//!   dispatcher must also check the addresses a name resolves to).

use std::net::IpAddr;

use url::{Host, Url};

pub const MAX_URL_LEN: usize = 2048;

/// The hosts allowed over plain http today; to come from config.
pub const DEFAULT_HTTP_HOSTS: &[&str] = &["127.0.0.1"];

/// Parses and checks a destination URL; the error is a sentence for the merchant.
pub fn validate_destination_url(raw: &str, allow_http_hosts: &[&str]) -> Result<Url, String> {
    if raw.len() > MAX_URL_LEN {
        return Err(format!("URL must be at most {MAX_URL_LEN} characters"));
    }
    let url = Url::parse(raw).map_err(|e| format!("not a valid absolute URL: {e}"))?;
    let host = url
        .host()
        .ok_or_else(|| "URL must have a host".to_owned())?;
    let host_text = match &host {
        Host::Domain(d) => d.to_string(),
        Host::Ipv4(ip) => ip.to_string(),
        Host::Ipv6(ip) => ip.to_string(),
    };
    let allowed_plain = allow_http_hosts
        .iter()
        .any(|h| h.eq_ignore_ascii_case(&host_text));
    match url.scheme() {
        "https" => {}
        "http" if allowed_plain => {}
        "http" => return Err("URL must use https".to_owned()),
        other => return Err(format!("URL scheme must be https, not {other}")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("URL must not contain credentials".to_owned());
    }
    if url.fragment().is_some() {
        return Err("URL must not contain a fragment".to_owned());
    }
    let ip = match host {
        Host::Ipv4(ip) => Some(IpAddr::V4(ip)),
        Host::Ipv6(ip) => Some(IpAddr::V6(ip)),
        Host::Domain(_) => None,
    };
    if let Some(ip) = ip {
        if !allowed_plain && is_internal(ip) {
            return Err(
                "URL must not point at a private, loopback or link-local address".to_owned(),
            );
        }
    }
    Ok(url)
}

fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10 carrier-grade NAT
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| is_internal(IpAddr::V4(v4)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy() {
        let ok = |u: &str| validate_destination_url(u, DEFAULT_HTTP_HOSTS).is_ok();
        assert!(ok("https://merchant.example/hooks"));
        assert!(ok("http://127.0.0.1:9000/hook"));
        assert!(!ok("http://merchant.example/hooks"));
        assert!(!ok("ftp://merchant.example/"));
        assert!(!ok("https://user:pw@merchant.example/"));
        assert!(!ok("https://merchant.example/#frag"));
        assert!(!ok("https://10.0.0.8/hook"));
        assert!(!ok("https://169.254.169.254/latest"));
        assert!(!ok("https://[::1]/"));
        assert!(!ok("not a url"));
        assert!(!ok(&format!(
            "https://merchant.example/{}",
            "a".repeat(MAX_URL_LEN)
        )));
    }
}
