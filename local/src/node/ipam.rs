//! Pod IP addresses: one loopback address per pod from the pod CIDR (`127.64.0.0/16` by
//! default), so every pod can bind its container ports without colliding.

use std::collections::HashSet;
use std::net::Ipv4Addr;

/// An IPv4 CIDR such as `127.64.0.0/16`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    base: u32,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(text: &str) -> Result<Self, String> {
        let (addr, prefix) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a CIDR (example: 127.64.0.0/16)"))?;
        let addr: Ipv4Addr = addr
            .parse()
            .map_err(|_| format!("{text:?}: {addr:?} is not an IPv4 address"))?;
        let prefix: u8 = prefix
            .parse()
            .ok()
            .filter(|p| (8..=30).contains(p))
            .ok_or_else(|| format!("{text:?}: the prefix length must be 8..=30"))?;
        let mask = u32::MAX << (32 - prefix);
        Ok(Self {
            base: u32::from(addr) & mask,
            prefix,
        })
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl Cidr {
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let mask = u32::MAX << (32 - self.prefix);
        u32::from(ip) & mask == self.base
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }
}

/// Hands out addresses of a CIDR (skipping the network and broadcast addresses).
#[derive(Debug)]
pub struct Allocator {
    cidr: Cidr,
    used: HashSet<Ipv4Addr>,
    next: u32,
}

impl Allocator {
    pub fn new(cidr: Cidr) -> Self {
        Self {
            cidr,
            used: HashSet::new(),
            next: 1,
        }
    }

    /// Keeps `preferred` when it is in range and free (a pod keeps its IP across agent
    /// restarts), else the next free address.
    pub fn allocate(&mut self, preferred: Option<Ipv4Addr>) -> Result<Ipv4Addr, String> {
        if let Some(ip) = preferred
            && self.cidr.contains(ip)
            && !self.used.contains(&ip)
        {
            self.used.insert(ip);
            return Ok(ip);
        }
        let usable = self.cidr.size() - 2;
        for _ in 0..usable {
            let offset = self.next;
            self.next = if self.next >= usable {
                1
            } else {
                self.next + 1
            };
            let ip = Ipv4Addr::from(self.cidr.base + offset);
            if self.used.insert(ip) {
                return Ok(ip);
            }
        }
        Err(format!("the pod CIDR {} is exhausted", self.cidr))
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_distinct_addresses_and_reuses_released_ones() {
        let cidr: Cidr = "127.64.0.0/30".parse().unwrap();
        let mut a = Allocator::new(cidr);
        let first = a.allocate(None).unwrap();
        let second = a.allocate(None).unwrap();
        assert_eq!(first, Ipv4Addr::new(127, 64, 0, 1));
        assert_eq!(second, Ipv4Addr::new(127, 64, 0, 2));
        assert!(a.allocate(None).is_err(), "/30 has two usable addresses");
        a.release(first);
        assert_eq!(a.allocate(Some(first)).unwrap(), first);
        let mut b = Allocator::new("127.64.0.0/16".parse().unwrap());
        assert_eq!(
            b.allocate(Some(Ipv4Addr::new(127, 64, 9, 9))).unwrap(),
            Ipv4Addr::new(127, 64, 9, 9)
        );
        assert_ne!(
            b.allocate(Some(Ipv4Addr::new(127, 1, 0, 1))).unwrap(),
            Ipv4Addr::new(127, 1, 0, 1),
            "out of range preference ignored"
        );
        assert!("127.64.0.0".parse::<Cidr>().is_err());
        assert!("127.64.0.0/40".parse::<Cidr>().is_err());
    }
}
