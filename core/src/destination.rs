//! The SSRF guard: the one function that decides whether paygate may send a webhook to a
//! URL, used by the API (endpoint registration, a transaction's `callback_url`) and by the
//! callback dispatcher before every delivery attempt. It lives in core so both use the same
//! rule without one service importing the other.
//!
//! [`check_destination`] parses the URL, requires `https` (unless `allow_http`), refuses
//! credentials in the URL, resolves the host and refuses the URL if **any** address it
//! resolves to is not publicly routable: loopback, private (RFC 1918), link-local (and so
//! the cloud metadata address 169.254.169.254), unique-local (and so `fd00:ec2::254`),
//! carrier-grade NAT, unspecified, multicast, broadcast, reserved or documentation ranges,
//! the 6to4 relay anycast (192.88.99.0/24), Teredo (2001::/32), local-use NAT64
//! (64:ff9b:1::/48), and IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64,
//! 6to4) in any of those. Only the ports of `allowed_ports` are admitted (default 443, 80,
//! 8443). `allow_loopback` admits loopback addresses, on any port (tests, `paygate dev`).
//!
//! A refusal of a name never says what the name resolved to: the merchant learns that the
//! host is not a public destination, not which internal address is behind it.
//!
//! The checked addresses are returned so the HTTP client connects to exactly those (see
//! [`CheckedDestination::addrs`] and reqwest's `resolve_to_addrs`): a DNS answer that
//! changes between the check and the connection (rebinding) cannot redirect the request.
//! Redirects are never followed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use crate::config::DestinationsConfig;
use url::{Host, Url};

/// How long name resolution may take before the destination counts as unreachable.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// At most this many ports may be listed in `destinations.allowed_ports`.
pub const MAX_ALLOWED_PORTS: usize = 16;

/// The ports a destination may use (`destinations.allowed_ports`); a small set kept inline
/// so the policy stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllowedPorts {
    ports: [u16; MAX_ALLOWED_PORTS],
    len: usize,
}

impl AllowedPorts {
    /// https, http (only with `allow_http`) and the common alternative https port.
    pub const DEFAULT: Self = Self {
        ports: [443, 80, 8443, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        len: 3,
    };

    /// The first [`MAX_ALLOWED_PORTS`] of `ports` (the configuration refuses more).
    pub fn new(ports: &[u16]) -> Self {
        let mut set = Self {
            ports: [0; MAX_ALLOWED_PORTS],
            len: 0,
        };
        for port in ports.iter().take(MAX_ALLOWED_PORTS) {
            set.ports[set.len] = *port;
            set.len += 1;
        }
        set
    }

    pub fn as_slice(&self) -> &[u16] {
        &self.ports[..self.len]
    }

    pub fn contains(&self, port: u16) -> bool {
        self.as_slice().contains(&port)
    }
}

impl Default for AllowedPorts {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the guard allows beyond public `https` destinations on [`AllowedPorts::DEFAULT`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DestinationPolicy {
    /// Admit loopback addresses (and only those of the internal ranges), on any port.
    pub allow_loopback: bool,
    /// Admit plain `http`.
    pub allow_http: bool,
    /// The ports a non-loopback destination may use.
    pub allowed_ports: AllowedPorts,
}

impl DestinationPolicy {
    /// Public `https` only, on the default ports: production.
    pub const STRICT: Self = Self {
        allow_loopback: false,
        allow_http: false,
        allowed_ports: AllowedPorts::DEFAULT,
    };

    /// The policy of `[destinations]`.
    pub fn from_config(config: &DestinationsConfig) -> Self {
        Self {
            allow_loopback: config.allow_loopback,
            allow_http: config.allow_http,
            allowed_ports: AllowedPorts::new(&config.allowed_ports),
        }
    }
}

/// A URL the guard accepted, with the addresses a connection may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedDestination {
    pub url: Url,
    /// The host as written in the URL (a name, or an IP literal).
    pub host: String,
    /// Whether `host` is a name (connections must then be pinned to `addrs`).
    pub is_domain: bool,
    /// Every address the host resolved to, all checked.
    pub addrs: Vec<SocketAddr>,
}

/// Why a destination is refused. The message is fit to show the merchant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("not a valid absolute URL: {0}")]
    InvalidUrl(String),
    #[error("URL scheme must be https, not {0}")]
    Scheme(String),
    #[error("URL must not contain credentials")]
    Credentials,
    #[error("URL has no host")]
    NoHost,
    #[error("host {host} could not be resolved: {reason}")]
    Unresolvable { host: String, reason: String },
    /// The message names the address and its range only when the URL gave the address
    /// itself; what a name resolved to is never shown.
    #[error("{}", forbidden_message(host, addr, class, *is_domain))]
    Forbidden {
        host: String,
        /// For logs; never in the message when `is_domain`.
        addr: IpAddr,
        class: &'static str,
        /// Whether `host` is a name (its addresses are then not shown).
        is_domain: bool,
    },
    #[error("URL port {port} is not allowed (allowed: {allowed})")]
    Port { port: u16, allowed: String },
}

fn forbidden_message(host: &str, addr: &IpAddr, class: &str, is_domain: bool) -> String {
    if is_domain {
        format!("host {host} is not a publicly routable destination")
    } else {
        format!("address {addr} is a {class} address, not a publicly routable destination")
    }
}

impl Refused {
    /// Whether trying again later cannot help (everything but a failed DNS lookup).
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Unresolvable { .. })
    }
}

/// Checks a destination URL against the policy, resolving its host. See the module docs.
pub async fn check_destination(
    raw: &str,
    policy: DestinationPolicy,
) -> Result<CheckedDestination, Refused> {
    let url = Url::parse(raw).map_err(|e| Refused::InvalidUrl(e.to_string()))?;
    match url.scheme() {
        "https" => {}
        "http" if policy.allow_http => {}
        other => return Err(Refused::Scheme(other.to_owned())),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refused::Credentials);
    }
    let port = url.port_or_known_default().ok_or(Refused::NoHost)?;
    let (host, is_domain, ips): (String, bool, Vec<IpAddr>) = match url.host() {
        None => return Err(Refused::NoHost),
        Some(Host::Ipv4(ip)) => (ip.to_string(), false, vec![IpAddr::V4(ip)]),
        Some(Host::Ipv6(ip)) => (ip.to_string(), false, vec![IpAddr::V6(ip)]),
        Some(Host::Domain(name)) => {
            let name = name.to_owned();
            let lookup = tokio::time::timeout(
                RESOLVE_TIMEOUT,
                tokio::net::lookup_host(format!("{name}:{port}")),
            )
            .await;
            let found: Result<Vec<IpAddr>, String> = match lookup {
                Err(_) => Err("timed out".to_owned()),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(found)) => Ok(found.map(|a| a.ip()).collect()),
            };
            let addrs = match found {
                Ok(addrs) if !addrs.is_empty() => Ok(addrs),
                Ok(_) => Err("no addresses".to_owned()),
                Err(reason) => Err(reason),
            }
            .map_err(|reason| Refused::Unresolvable {
                host: name.clone(),
                reason,
            })?;
            (name, true, addrs)
        }
    };
    for ip in &ips {
        check_ip(*ip, policy).map_err(|class| Refused::Forbidden {
            host: host.clone(),
            addr: *ip,
            class,
            is_domain,
        })?;
    }
    // After the address check, so an internal address is refused as such whatever its
    // port. Loopback (admitted only with `allow_loopback`: tests, `paygate dev`) may use
    // any port.
    let any_port = policy.allow_loopback
        && ips
            .iter()
            .all(|ip| non_public_class(*ip) == Some("loopback"));
    if !any_port && !policy.allowed_ports.contains(port) {
        let allowed: Vec<String> = policy
            .allowed_ports
            .as_slice()
            .iter()
            .map(u16::to_string)
            .collect();
        return Err(Refused::Port {
            port,
            allowed: allowed.join(", "),
        });
    }
    let mut addrs: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    addrs.dedup();
    Ok(CheckedDestination {
        url,
        host,
        is_domain,
        addrs,
    })
}

/// `Ok` when the policy admits the address; otherwise the kind of range it is in.
pub fn check_ip(ip: IpAddr, policy: DestinationPolicy) -> Result<(), &'static str> {
    match non_public_class(ip) {
        None => Ok(()),
        Some("loopback") if policy.allow_loopback => Ok(()),
        Some(class) => Err(class),
    }
}

/// The kind of non-public range an address is in, or `None` for a public address.
pub fn non_public_class(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_class(v4),
        IpAddr::V6(v6) => v6_class(v6),
    }
}

fn v4_class(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    if ip == Ipv4Addr::new(169, 254, 169, 254) {
        return Some("cloud metadata");
    }
    let class = if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() || a == 0 {
        "unspecified"
    } else if ip.is_private() {
        "private"
    } else if ip.is_link_local() {
        "link-local"
    } else if a == 100 && (b & 0xc0) == 64 {
        "carrier-grade NAT"
    } else if ip.is_multicast() {
        "multicast"
    } else if ip.is_broadcast() || a >= 240 {
        "reserved"
    } else if (a == 192 && b == 0 && c == 0) || (a == 198 && (b & 0xfe) == 18) {
        // IETF protocol assignments (192.0.0.0/24), benchmarking (198.18.0.0/15).
        "reserved"
    } else if a == 192 && b == 88 && c == 99 {
        // 6to4 relay anycast (192.88.99.0/24, RFC 7526): a relay into unknown networks.
        "6to4 relay"
    } else if ip.is_documentation() {
        "documentation"
    } else {
        return None;
    };
    Some(class)
}

fn v6_class(ip: Ipv6Addr) -> Option<&'static str> {
    let segments = ip.segments();
    if ip == Ipv6Addr::new(0xfd00, 0x0ec2, 0, 0, 0, 0, 0, 0x0254) {
        return Some("cloud metadata");
    }
    // IPv4 inside IPv6: mapped (::ffff:a.b.c.d), NAT64 (64:ff9b::/96), and the deprecated
    // compatible form (::a.b.c.d) are judged by the IPv4 address they carry.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return v4_class(v4);
    }
    let [a, b] = segments[6].to_be_bytes();
    let [c, d] = segments[7].to_be_bytes();
    let embedded = Ipv4Addr::new(a, b, c, d);
    if segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_class(embedded);
    }
    if segments[..3] == [0x64, 0xff9b, 0x0001] {
        // Local-use NAT64 (64:ff9b:1::/48, RFC 8215): translates into a private network,
        // with the IPv4 address at a prefix-dependent place; never a public destination.
        return Some("local-use NAT64");
    }
    if segments[..2] == [0x2001, 0x0000] {
        // Teredo (2001::/32, RFC 4380): a tunnel to an obfuscated IPv4 host.
        return Some("Teredo");
    }
    if segments[..6] == [0; 6] && !ip.is_loopback() && !ip.is_unspecified() {
        // Deprecated IPv4-compatible form: never a legitimate destination.
        return v4_class(embedded).or(Some("IPv4-compatible"));
    }
    let class = if ip.is_loopback() {
        "loopback"
    } else if ip.is_unspecified() {
        "unspecified"
    } else if (segments[0] & 0xfe00) == 0xfc00 {
        "unique-local"
    } else if (segments[0] & 0xffc0) == 0xfe80 || (segments[0] & 0xffc0) == 0xfec0 {
        "link-local"
    } else if ip.is_multicast() {
        "multicast"
    } else if segments[0] == 0x2001 && segments[1] == 0x0db8 {
        "documentation"
    } else if segments[0] == 0x0100 && segments[1..4] == [0, 0, 0] {
        // Discard-only prefix 100::/64.
        "reserved"
    } else if segments[0] == 0x2002 {
        // 6to4 carries an IPv4 address in bits 16..48.
        let [a, b] = segments[1].to_be_bytes();
        let [c, d] = segments[2].to_be_bytes();
        return v4_class(Ipv4Addr::new(a, b, c, d));
    } else {
        return None;
    };
    Some(class)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn internal_ranges_are_classified() {
        for internal in [
            "127.0.0.1",
            "127.9.9.9",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "169.254.1.1",
            "100.64.0.1",
            "100.127.255.254",
            "0.0.0.0",
            "0.1.2.3",
            "224.0.0.1",
            "255.255.255.255",
            "240.0.0.1",
            "198.18.0.1",
            "192.0.0.170",
            "::1",
            "::",
            "fd00:ec2::254",
            "fc00::1",
            "fe80::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a00:1",
            "::a00:1",
            "2002:a00:1::1",
        ] {
            assert!(
                non_public_class(ip(internal)).is_some(),
                "{internal} passed"
            );
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "100.128.0.1",
            "172.32.0.1",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public_class(ip(public)), None, "{public}");
        }
        assert_eq!(
            non_public_class(ip("169.254.169.254")),
            Some("cloud metadata")
        );
        assert_eq!(
            non_public_class(ip("fd00:ec2::254")),
            Some("cloud metadata")
        );
    }

    #[test]
    fn allow_loopback_admits_loopback_only() {
        let dev = DestinationPolicy {
            allow_loopback: true,
            allow_http: true,
            ..DestinationPolicy::STRICT
        };
        assert_eq!(check_ip(ip("127.0.0.1"), dev), Ok(()));
        assert_eq!(check_ip(ip("::1"), dev), Ok(()));
        for other in [
            "10.0.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "fd00:ec2::254",
            "::ffff:10.0.0.1",
        ] {
            assert!(check_ip(ip(other), dev).is_err(), "{other}");
        }
        assert!(check_ip(ip("127.0.0.1"), DestinationPolicy::STRICT).is_err());
    }

    #[tokio::test]
    async fn urls_are_refused_before_any_connection() {
        let strict = DestinationPolicy::STRICT;
        let http_ok = DestinationPolicy {
            allow_loopback: false,
            allow_http: true,
            ..DestinationPolicy::STRICT
        };
        let refused = |r: Result<CheckedDestination, Refused>| r.err();
        assert!(matches!(
            refused(check_destination("http://8.8.8.8/x", strict).await),
            Some(Refused::Scheme(_))
        ));
        assert!(matches!(
            refused(check_destination("ftp://8.8.8.8/x", http_ok).await),
            Some(Refused::Scheme(_))
        ));
        assert!(matches!(
            refused(check_destination("https://u:p@8.8.8.8/x", strict).await),
            Some(Refused::Credentials)
        ));
        assert!(matches!(
            refused(check_destination("not a url", strict).await),
            Some(Refused::InvalidUrl(_))
        ));
        for url in [
            "https://127.0.0.1/hook",
            "https://10.0.0.1/hook",
            "https://169.254.169.254/latest/meta-data/",
            "https://[::1]:8443/hook",
            "https://[fd00:ec2::254]/",
            "https://[::ffff:127.0.0.1]/",
            "http://localhost:8080/hook",
            "https://0.0.0.0/",
        ] {
            let err = refused(check_destination(url, http_ok).await);
            assert!(
                matches!(err, Some(Refused::Forbidden { .. })),
                "{url}: {err:?}"
            );
            assert!(err.is_some_and(|e| e.is_permanent()));
        }
        // An IP literal needs no lookup and is pinned as written.
        let ok = check_destination("https://8.8.8.8:8443/x", strict)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!ok.is_domain);
        assert_eq!(
            ok.addrs,
            vec!["8.8.8.8:8443".parse().unwrap_or_else(|e| panic!("{e}"))]
        );
    }

    #[test]
    fn relay_tunnel_and_translation_ranges_are_refused() {
        for (internal, class) in [
            // Local-use NAT64: whatever it embeds, it translates into a private network.
            ("64:ff9b:1::808:808", "local-use NAT64"),
            ("64:ff9b:1:ffff::1", "local-use NAT64"),
            // Teredo, whatever server and client it names.
            ("2001::1", "Teredo"),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", "Teredo"),
            // 6to4 relay anycast, and the same through a 6to4 address.
            ("192.88.99.1", "6to4 relay"),
            ("192.88.99.255", "6to4 relay"),
            ("2002:c058:6301::1", "6to4 relay"),
            // Well-known NAT64 embedding an internal IPv4 is judged by that address.
            ("64:ff9b::7f00:1", "loopback"),
            ("64:ff9b::a00:1", "private"),
            ("64:ff9b::a9fe:a9fe", "cloud metadata"),
            ("64:ff9b::c0a8:101", "private"),
        ] {
            assert_eq!(non_public_class(ip(internal)), Some(class), "{internal}");
        }
        // Neighbours of the new ranges stay public.
        for public in [
            "192.88.98.1",
            "192.88.100.1",
            "2001:4860:4860::8888",
            "64:ff9b:2::1",
            "64:ff9b::808:808",
        ] {
            assert_eq!(non_public_class(ip(public)), None, "{public}");
        }
    }

    #[tokio::test]
    async fn refusing_a_name_never_shows_what_it_resolved_to() {
        let http_ok = DestinationPolicy {
            allow_http: true,
            ..DestinationPolicy::STRICT
        };
        // `localhost` resolves to loopback without any network.
        let refused = check_destination("http://localhost/hook", http_ok).await;
        let Err(refused @ Refused::Forbidden { .. }) = refused else {
            panic!("localhost admitted: {refused:?}");
        };
        let message = refused.to_string();
        assert_eq!(
            message,
            "host localhost is not a publicly routable destination"
        );
        for leak in ["127.0.0.1", "::1", "loopback"] {
            assert!(!message.contains(leak), "{message}");
        }
        // An address the merchant wrote may be named.
        let literal = check_destination("https://10.1.2.3/hook", http_ok).await;
        assert_eq!(
            literal.err().map(|e| e.to_string()).as_deref(),
            Some("address 10.1.2.3 is a private address, not a publicly routable destination")
        );
    }

    #[tokio::test]
    async fn only_the_allowed_ports_are_admitted() {
        let strict = DestinationPolicy::STRICT;
        for url in [
            "https://8.8.8.8/x",
            "https://8.8.8.8:443/x",
            "https://8.8.8.8:8443/x",
        ] {
            assert!(check_destination(url, strict).await.is_ok(), "{url}");
        }
        for url in [
            "https://8.8.8.8:22/x",
            "https://8.8.8.8:6379/x",
            "https://8.8.8.8:9092/x",
            "https://8.8.8.8:65535/x",
        ] {
            let refused = check_destination(url, strict).await;
            assert!(
                matches!(refused, Err(Refused::Port { .. })),
                "{url}: {refused:?}"
            );
            assert!(refused.is_err_and(|e| e.is_permanent()));
        }
        let custom = DestinationPolicy {
            allowed_ports: AllowedPorts::new(&[9443]),
            ..strict
        };
        assert!(check_destination("https://8.8.8.8:9443/", custom)
            .await
            .is_ok());
        assert!(check_destination("https://8.8.8.8/", custom).await.is_err());
        // Loopback under `allow_loopback` (tests, `paygate dev`) may use any port; a public
        // address under the same policy may not.
        let dev = DestinationPolicy {
            allow_loopback: true,
            allow_http: true,
            ..strict
        };
        assert!(check_destination("http://127.0.0.1:54321/hook", dev)
            .await
            .is_ok());
        assert!(check_destination("http://localhost:54321/hook", dev)
            .await
            .is_ok());
        assert!(matches!(
            check_destination("http://8.8.8.8:54321/hook", dev).await,
            Err(Refused::Port { .. })
        ));
        assert_eq!(
            DestinationPolicy::from_config(&DestinationsConfig::default()),
            strict
        );
    }
}
