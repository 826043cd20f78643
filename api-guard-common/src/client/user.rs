//! What userspace adds to [`super`]: `aya::Pod` for the map types, and
//! conversions and names the kernel has no use for.

use core::net::{IpAddr, Ipv6Addr};

use super::{ClientKey, ClientState, Penalty};

// SAFETY: plain `#[repr(C)]` integers and byte arrays with no padding.
unsafe impl aya::Pod for ClientKey {}
// SAFETY: plain `#[repr(C)]` u64 fields with no padding.
unsafe impl aya::Pod for ClientState {}
// SAFETY: plain `#[repr(C)]` u64 fields with no padding.
unsafe impl aya::Pod for Penalty {}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self::v4(v4.octets()),
            IpAddr::V6(v6) => Self::v6(v6.octets()),
        }
    }
}

impl ClientKey {
    /// The address as userspace prints it: IPv4-mapped keys become IPv4 again.
    pub fn ip(&self) -> IpAddr {
        Ipv6Addr::from(self.addr).to_canonical()
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use core::net::IpAddr;

    use super::ClientKey;

    #[test]
    fn keys_round_trip_both_families() {
        for s in ["198.18.0.1", "2001:db8::1", "::1", "0.0.0.0"] {
            let ip: IpAddr = s.parse().unwrap();
            assert_eq!(ClientKey::from(ip).ip(), ip, "{s}");
        }
        assert_eq!(
            ClientKey::from("198.18.0.1".parse::<IpAddr>().unwrap()),
            ClientKey::v4([198, 18, 0, 1])
        );
    }
}
