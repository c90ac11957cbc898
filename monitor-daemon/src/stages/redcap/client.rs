//! Who made a call when a proxy made the connection: the client address that a trusted proxy (a
//! load balancer, a TLS terminator) reports in `X-Forwarded-For` or `Forwarded`.
//!
//! Owns `redcap.trusted_proxies` and `redcap.client_address_header`, and the walk over the
//! header's addresses. The header is believed only on a connection from a trusted proxy, never
//! from anyone else, and it is read the way nginx's realip module (`real_ip_recursive on`) and
//! Apache's mod_remoteip read it: from the right, passing over addresses that are themselves
//! trusted proxies; the first untrusted address is the client. Whatever stands to its left was
//! written by the client and proves nothing. Sans-IO; the header arrives bounded by the HTTP
//! stage (its rightmost [`MAX_FORWARDED_BYTES`](crate::stages::http::MAX_FORWARDED_BYTES)).

use std::net::IpAddr;

use serde::Deserialize;

use crate::shared::model::Endpoint;
use crate::stages::http::RequestHead;

/// Most CIDRs `trusted_proxies` may list: a load-balancer tier, not a routing table.
pub(crate) const MAX_TRUSTED_PROXIES: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum TrustedProxyError {
    #[error(
        "{spelled:?} is not an address or a CIDR: write it as \"10.0.0.0/8\", \"192.0.2.7\" or \"2001:db8::/32\""
    )]
    Unparsable { spelled: String },
    #[error("{spelled:?} has a prefix longer than its address ({max} bits)")]
    PrefixTooLong { spelled: String, max: u8 },
    #[error(
        "{spelled:?} has address bits set past its prefix, so it is unclear which network is meant: did you mean \"{network}\"?"
    )]
    HostBitsSet { spelled: String, network: String },
    #[error("lists more than {MAX_TRUSTED_PROXIES} networks; list the proxies' subnets instead")]
    TooMany,
}

/// One network of proxies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Network {
    address: IpAddr,
    prefix: u8,
}

impl Network {
    fn parse(spelled: &str) -> Result<Network, TrustedProxyError> {
        let unparsable = || TrustedProxyError::Unparsable {
            spelled: spelled.to_string(),
        };
        let (address, prefix) = match spelled.trim().split_once('/') {
            Some((address, prefix)) => (address, Some(prefix)),
            None => (spelled.trim(), None),
        };
        let address: IpAddr = address.parse().map_err(|_| unparsable())?;
        let address = address.to_canonical();
        let max = if address.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(prefix) => prefix.parse::<u8>().map_err(|_| unparsable())?,
        };
        if prefix > max {
            return Err(TrustedProxyError::PrefixTooLong {
                spelled: spelled.to_string(),
                max,
            });
        }
        let network = Network { address, prefix };
        let masked = network.masked(address);
        if masked != address {
            return Err(TrustedProxyError::HostBitsSet {
                spelled: spelled.to_string(),
                network: format!("{masked}/{prefix}"),
            });
        }
        Ok(network)
    }

    /// `ip` with the bits past this network's prefix cleared.
    fn masked(&self, ip: IpAddr) -> IpAddr {
        match ip {
            IpAddr::V4(ip) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V4((u32::from(ip) & mask).into())
            }
            IpAddr::V6(ip) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                IpAddr::V6((u128::from(ip) & mask).into())
            }
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        ip.is_ipv4() == self.address.is_ipv4() && self.masked(ip) == self.address
    }
}

/// The proxies whose client-address header is believed. Read from the configuration as a list
/// of addresses and CIDRs and checked there, once: a value of this type holds valid networks.
/// Empty (the default): no header is ever believed.
#[derive(Clone, Debug, Default)]
pub(crate) struct TrustedProxies {
    networks: Vec<Network>,
    spelled: Vec<String>,
}

impl PartialEq for TrustedProxies {
    fn eq(&self, other: &TrustedProxies) -> bool {
        self.spelled == other.spelled
    }
}

impl<'de> Deserialize<'de> for TrustedProxies {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let spelled = Vec::<String>::deserialize(deserializer)?;
        TrustedProxies::new(&spelled).map_err(serde::de::Error::custom)
    }
}

impl TrustedProxies {
    pub(crate) fn new(spelled: &[String]) -> Result<TrustedProxies, TrustedProxyError> {
        if spelled.len() > MAX_TRUSTED_PROXIES {
            return Err(TrustedProxyError::TooMany);
        }
        let networks = spelled
            .iter()
            .map(|s| Network::parse(s))
            .collect::<Result<_, _>>()?;
        Ok(TrustedProxies {
            networks,
            spelled: spelled.to_vec(),
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.networks.is_empty()
    }

    pub(crate) fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.networks.iter().any(|n| n.contains(ip))
    }
}

/// Which header a trusted proxy writes the client's address in; the other is ignored, as a
/// proxy usually passes on whatever the client put in a header it does not write itself.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub(crate) enum ClientAddressHeader {
    /// `X-Forwarded-For: client, proxy1, proxy2` (nginx, HAProxy, AWS and most balancers).
    #[default]
    #[serde(rename = "X-Forwarded-For", alias = "x-forwarded-for")]
    XForwardedFor,
    /// RFC 7239: `Forwarded: for=client;proto=https, for="[2001:db8::1]:4711"`.
    #[serde(rename = "Forwarded", alias = "forwarded")]
    Forwarded,
}

/// Where a call's client address came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ClientOrigin {
    /// The connection's peer, not a trusted proxy (or none is configured): the peer is the client.
    Peer,
    /// A trusted proxy named the client in its header.
    Forwarded { client: Endpoint },
    /// A trusted proxy's connection carried no usable header: the proxy stays the client.
    HeaderMissing,
    /// The header had an address that is not one (`unknown`, an obfuscated name, garbage):
    /// the walk stopped there, at the last address that was one (the proxy itself when the
    /// rightmost entry was already not an address).
    HeaderUnparsable { client: Endpoint },
}

/// How client addresses are found: `redcap.trusted_proxies` and `redcap.client_address_header`.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ClientAddressing {
    pub(crate) trusted_proxies: TrustedProxies,
    pub(crate) header: ClientAddressHeader,
}

impl ClientAddressing {
    /// The client of a request that arrived on a connection from `peer`.
    pub(crate) fn resolve(&self, peer: Endpoint, head: &RequestHead) -> ClientOrigin {
        if self.trusted_proxies.is_empty() || !self.trusted_proxies.contains(peer.ip) {
            return ClientOrigin::Peer;
        }
        let header = match self.header {
            ClientAddressHeader::XForwardedFor => head.forwarded_for.as_deref(),
            ClientAddressHeader::Forwarded => head.forwarded.as_deref(),
        };
        let Some(header) = header else {
            return ClientOrigin::HeaderMissing;
        };
        let mut client = None;
        for element in header.rsplit(',') {
            let element = element.trim();
            if element.is_empty() {
                continue;
            }
            let address = match self.header {
                ClientAddressHeader::XForwardedFor => parse_node(element),
                ClientAddressHeader::Forwarded => forwarded_for_node(element).and_then(parse_node),
            };
            let Some(address) = address else {
                return ClientOrigin::HeaderUnparsable {
                    client: client.unwrap_or(peer),
                };
            };
            client = Some(address);
            if !self.trusted_proxies.contains(address.ip) {
                break;
            }
        }
        match client {
            None => ClientOrigin::HeaderMissing,
            Some(client) => ClientOrigin::Forwarded { client },
        }
    }
}

/// The `for=` value of one `Forwarded` element (`for=192.0.2.1;proto=https;by=…`), unquoted.
fn forwarded_for_node(element: &str) -> Option<&str> {
    element.split(';').find_map(|pair| {
        let (name, value) = pair.split_once('=')?;
        name.trim()
            .eq_ignore_ascii_case("for")
            .then(|| value.trim().trim_matches('"'))
    })
}

/// An address as proxies write it: `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`,
/// `[2001:db8::1]` or `[2001:db8::1]:4711`. A missing port is 0 (unknown).
fn parse_node(node: &str) -> Option<Endpoint> {
    if let Ok(ip) = node.parse::<IpAddr>() {
        return Some(Endpoint {
            ip: ip.to_canonical(),
            port: 0,
        });
    }
    let (ip, port) = if let Some(rest) = node.strip_prefix('[') {
        let (ip, rest) = rest.split_once(']')?;
        let port = match rest {
            "" => 0,
            rest => rest.strip_prefix(':')?.parse().ok()?,
        };
        (ip.parse::<std::net::Ipv6Addr>().ok().map(IpAddr::V6)?, port)
    } else {
        let (ip, port) = node.split_once(':')?;
        (
            ip.parse::<std::net::Ipv4Addr>().ok().map(IpAddr::V4)?,
            port.parse().ok()?,
        )
    };
    Some(Endpoint {
        ip: ip.to_canonical(),
        port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addressing(proxies: &[&str], header: ClientAddressHeader) -> ClientAddressing {
        let spelled: Vec<String> = proxies.iter().map(|s| s.to_string()).collect();
        ClientAddressing {
            trusted_proxies: TrustedProxies::new(&spelled).unwrap(),
            header,
        }
    }

    fn peer(ip: &str) -> Endpoint {
        Endpoint {
            ip: ip.parse().unwrap(),
            port: 51000,
        }
    }

    fn head(xff: Option<&str>, forwarded: Option<&str>) -> RequestHead {
        RequestHead {
            forwarded_for: xff.map(str::to_string),
            forwarded: forwarded.map(str::to_string),
            ..RequestHead::default()
        }
    }

    fn forwarded(ip: &str, port: u16) -> ClientOrigin {
        ClientOrigin::Forwarded {
            client: Endpoint {
                ip: ip.parse().unwrap(),
                port,
            },
        }
    }

    #[test]
    fn the_header_is_ignored_unless_the_peer_is_a_trusted_proxy() {
        let a = addressing(&["10.0.0.0/8"], ClientAddressHeader::XForwardedFor);
        let h = head(Some("203.0.113.9"), None);
        assert_eq!(a.resolve(peer("192.0.2.50"), &h), ClientOrigin::Peer);
        assert_eq!(a.resolve(peer("10.1.2.3"), &h), forwarded("203.0.113.9", 0));
        let none = ClientAddressing::default();
        assert_eq!(none.resolve(peer("10.1.2.3"), &h), ClientOrigin::Peer);
    }

    #[test]
    fn the_walk_starts_at_the_right_and_passes_over_trusted_proxies_only() {
        let a = addressing(
            &["10.0.0.0/8", "2001:db8:1::/48"],
            ClientAddressHeader::XForwardedFor,
        );
        // The client forged the leftmost entry; the balancer appended the address it saw.
        let h = head(Some("198.51.100.66, 203.0.113.9, 10.9.9.9"), None);
        assert_eq!(a.resolve(peer("10.1.2.3"), &h), forwarded("203.0.113.9", 0));
        // All trusted: the leftmost is the best that is known.
        let h = head(Some("10.0.0.7, 10.0.0.8"), None);
        assert_eq!(a.resolve(peer("10.1.2.3"), &h), forwarded("10.0.0.7", 0));
        let h = head(Some("[2001:db8:2::5]:4711,2001:db8:1::1"), None);
        assert_eq!(
            a.resolve(peer("::ffff:10.1.2.3"), &h),
            forwarded("2001:db8:2::5", 4711)
        );
    }

    #[test]
    fn a_bad_entry_stops_the_walk_at_the_last_good_address() {
        let a = addressing(&["10.0.0.0/8"], ClientAddressHeader::XForwardedFor);
        let h = head(Some("203.0.113.9, unknown, 10.0.0.5"), None);
        assert_eq!(
            a.resolve(peer("10.1.2.3"), &h),
            ClientOrigin::HeaderUnparsable {
                client: Endpoint {
                    ip: "10.0.0.5".parse().unwrap(),
                    port: 0
                }
            }
        );
        let h = head(Some("<script>"), None);
        assert_eq!(
            a.resolve(peer("10.1.2.3"), &h),
            ClientOrigin::HeaderUnparsable {
                client: peer("10.1.2.3")
            }
        );
        let h = head(None, Some("for=203.0.113.9"));
        assert_eq!(a.resolve(peer("10.1.2.3"), &h), ClientOrigin::HeaderMissing);
    }

    #[test]
    fn forwarded_is_read_only_when_configured() {
        let a = addressing(&["10.0.0.0/8"], ClientAddressHeader::Forwarded);
        let h = head(
            Some("198.51.100.66"),
            Some(
                "for=198.51.100.66, for=\"[2001:db8::7]:4711\";proto=https, For=10.0.0.4;by=10.0.0.1",
            ),
        );
        assert_eq!(
            a.resolve(peer("10.1.2.3"), &h),
            forwarded("2001:db8::7", 4711)
        );
        let h = head(
            Some("198.51.100.66"),
            Some("for=_hidden, for=203.0.113.4:80"),
        );
        assert_eq!(
            a.resolve(peer("10.1.2.3"), &h),
            forwarded("203.0.113.4", 80)
        );
    }

    #[test]
    fn networks_are_checked_as_they_are_read() {
        let bad = |s: &str| {
            TrustedProxies::new(&[s.to_string()])
                .unwrap_err()
                .to_string()
        };
        assert!(bad("10.0.0.1/8").contains("did you mean \"10.0.0.0/8\""));
        assert!(bad("10.0.0.0/33").contains("32 bits"));
        assert!(bad("lb.example").contains("not an address or a CIDR"));
        let ok = TrustedProxies::new(&["192.0.2.7".into(), "::/0".into()]).unwrap();
        assert!(ok.contains("192.0.2.7".parse().unwrap()));
        assert!(!ok.contains("192.0.2.8".parse().unwrap()));
        assert!(ok.contains("2001:db8::1".parse().unwrap()));
        let v4 = TrustedProxies::new(&["0.0.0.0/0".into()]).unwrap();
        assert!(v4.contains("::ffff:198.51.100.1".parse().unwrap()));
    }
}
