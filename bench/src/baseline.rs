//! The baselines xlb is compared with: kube-proxy's rules, shaped as kube-proxy writes them, for
//! the same Services, loaded into a lab node's namespace (never the root namespace).
//!
//! * iptables mode: `PREROUTING` → `KUBE-SERVICES` (one rule per Service port, matched in
//!   order) → `KUBE-SVC-*` (one rule per endpoint, `statistic --mode random` with probability
//!   1/(n-i)) → `KUBE-SEP-*` (hairpin mark, `DNAT`), plus the `filter` table's `KUBE-FORWARD`
//!   and the masquerade plumbing in `POSTROUTING`. Loaded with one `iptables-restore`.
//! * nftables mode (kube-proxy ≥ 1.29): table `ip kube-proxy`, chain `services` looks up
//!   `ip daddr . meta l4proto . th dport` in the verdict map `service-ips` → `service-*` chain
//!   (`numgen random mod n vmap`) → `endpoint-*` chain (`dnat to`). Loaded with one `nft -f`.
//!
//! As in the kernel, NAT rules are walked only for the first packet of a connection;
//! established packets cost a conntrack lookup and the `filter` rules.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::lab::Host;
use crate::lab::netns::run_with_timeout;

/// One Service port as the baselines see it.
#[derive(Clone, Debug)]
pub struct SvcPort {
    pub namespace: String,
    pub name: String,
    pub port_name: String,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// kube-proxy's chain-name hash: 16 characters of base32 over a SHA-like digest. Here a 64-bit
/// FNV-1a, base32-encoded: the same length and alphabet, which is what rule lookup sees.
fn hash16(s: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut h: u128 = 0x6c62_272e_07bb_0142_62b8_2175_6295_c58d;
    for b in s.bytes() {
        h ^= b as u128;
        h = h.wrapping_mul(0x0000_0000_0100_0000_0000_0000_0000_013b);
    }
    (0..16)
        .map(|i| ALPHABET[((h >> (i * 5)) & 31) as usize] as char)
        .collect()
}

impl SvcPort {
    fn key(&self) -> String {
        format!("{}/{}:{}", self.namespace, self.name, self.port_name)
    }
    fn svc_chain(&self) -> String {
        format!(
            "KUBE-SVC-{}",
            hash16(&format!("{}{}", self.key(), self.proto))
        )
    }
    fn sep_chain(&self, ep: (Ipv4Addr, u16)) -> String {
        format!(
            "KUBE-SEP-{}",
            hash16(&format!("{}{}{}:{}", self.key(), self.proto, ep.0, ep.1))
        )
    }
}

/// The `iptables-restore` input kube-proxy (iptables mode) would write for `svcs`.
pub fn iptables_rules(svcs: &[SvcPort]) -> String {
    let mut f = String::new();
    f.push_str("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n");
    for c in [
        "KUBE-FORWARD",
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-PROXY-FIREWALL",
        "KUBE-NODEPORTS",
    ] {
        writeln!(f, ":{c} - [0:0]").unwrap();
    }
    f.push_str(concat!(
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes load balancer firewall\" -j KUBE-PROXY-FIREWALL\n",
        "-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes externally visible service portals\" -j KUBE-EXTERNAL-SERVICES\n",
        "-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n",
        "-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n",
        "COMMIT\n",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n",
        ":KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n",
    ));
    for s in svcs {
        writeln!(f, ":{} - [0:0]", s.svc_chain()).unwrap();
        for &ep in &s.endpoints {
            writeln!(f, ":{} - [0:0]", s.sep_chain(ep)).unwrap();
        }
    }
    f.push_str(concat!(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n",
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n",
        "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n",
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n",
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n",
    ));
    for s in svcs {
        writeln!(
            f,
            "-A KUBE-SERVICES -d {}/32 -p {p} -m comment --comment \"{} loadbalancer IP\" -m {p} --dport {} -j {}",
            s.vip,
            s.key(),
            s.port,
            s.svc_chain(),
            p = s.proto
        )
        .unwrap();
        let n = s.endpoints.len();
        for (i, &ep) in s.endpoints.iter().enumerate() {
            let stat = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            writeln!(
                f,
                "-A {} -m comment --comment \"{} -> {}:{}\"{stat} -j {}",
                s.svc_chain(),
                s.key(),
                ep.0,
                ep.1,
                s.sep_chain(ep)
            )
            .unwrap();
            writeln!(
                f,
                "-A {} -s {}/32 -m comment --comment \"{}\" -j KUBE-MARK-MASQ",
                s.sep_chain(ep),
                ep.0,
                s.key()
            )
            .unwrap();
            writeln!(
                f,
                "-A {} -p {p} -m comment --comment \"{}\" -m {p} -j DNAT --to-destination {}:{}",
                s.sep_chain(ep),
                s.key(),
                ep.0,
                ep.1,
                p = s.proto
            )
            .unwrap();
        }
    }
    f.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    f
}

/// Chain-name part kube-proxy's nftables mode uses: `<hash8>-<ns>/<name>/<proto>/<port>`.
fn nft_svc_chain(s: &SvcPort) -> String {
    format!(
        "service-{}-{}/{}/{}/{}",
        &hash16(&format!("{}{}", s.key(), s.proto))[..8],
        s.namespace,
        s.name,
        s.proto,
        s.port_name
    )
}

fn nft_ep_chain(s: &SvcPort, ep: (Ipv4Addr, u16)) -> String {
    format!(
        "endpoint-{}-{}/{}/{}/{}__{}/{}",
        &hash16(&format!("{}{}{}:{}", s.key(), s.proto, ep.0, ep.1))[..8],
        s.namespace,
        s.name,
        s.proto,
        s.port_name,
        ep.0,
        ep.1
    )
}

/// The `nft -f` input kube-proxy (nftables mode) would write for `svcs`.
pub fn nft_rules(svcs: &[SvcPort]) -> String {
    let mut f = String::new();
    f.push_str("add table ip kube-proxy\nflush table ip kube-proxy\ntable ip kube-proxy {\n");
    f.push_str(concat!(
        "  map no-endpoint-services {\n    type ipv4_addr . inet_proto . inet_service : verdict\n  }\n",
        "  chain mark-for-masquerade {\n    meta mark set meta mark or 0x4000\n  }\n",
        "  chain masquerading {\n    meta mark & 0x4000 == 0 return\n    meta mark set meta mark xor 0x4000\n    masquerade fully-random\n  }\n",
        "  chain nat-prerouting {\n    type nat hook prerouting priority dstnat; policy accept;\n    jump services\n  }\n",
        "  chain nat-output {\n    type nat hook output priority -100; policy accept;\n    jump services\n  }\n",
        "  chain nat-postrouting {\n    type nat hook postrouting priority srcnat; policy accept;\n    jump masquerading\n  }\n",
        "  chain filter-forward {\n    type filter hook forward priority -110; policy accept;\n    ct state new jump service-endpoints-check\n    ct state invalid drop\n  }\n",
        "  chain service-endpoints-check {\n    ip daddr . meta l4proto . th dport vmap @no-endpoint-services\n  }\n",
        "  chain nodeports {\n  }\n",
        "  chain services {\n    ip daddr . meta l4proto . th dport vmap @service-ips\n    fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports\n  }\n",
    ));
    for s in svcs {
        writeln!(f, "  chain {} {{", nft_svc_chain(s)).unwrap();
        let n = s.endpoints.len();
        if n > 0 {
            let arms: Vec<String> = s
                .endpoints
                .iter()
                .enumerate()
                .map(|(i, &ep)| format!("{i} : goto {}", nft_ep_chain(s, ep)))
                .collect();
            writeln!(
                f,
                "    numgen random mod {n} vmap {{ {} }}",
                arms.join(", ")
            )
            .unwrap();
        }
        f.push_str("  }\n");
        for &ep in &s.endpoints {
            writeln!(
                f,
                "  chain {} {{\n    ip saddr {} jump mark-for-masquerade\n    meta l4proto {} dnat to {}:{}\n  }}",
                nft_ep_chain(s, ep),
                ep.0,
                s.proto,
                ep.0,
                ep.1
            )
            .unwrap();
        }
    }
    f.push_str("  map service-ips {\n    type ipv4_addr . inet_proto . inet_service : verdict\n");
    if !svcs.is_empty() {
        f.push_str("    elements = {\n");
        for (i, s) in svcs.iter().enumerate() {
            let sep = if i + 1 < svcs.len() { "," } else { "" };
            writeln!(
                f,
                "      {} . {} . {} : goto {}{sep}",
                s.vip,
                s.proto,
                s.port,
                nft_svc_chain(s)
            )
            .unwrap();
        }
        f.push_str("    }\n");
    }
    f.push_str("  }\n}\n");
    f
}

/// Loads `text` with `program args... FILE` inside `host`, allowing `timeout`. Returns how long
/// the program ran (writing the file is not part of it).
fn load(
    host: &Host,
    program: &str,
    args: &[&str],
    file_name: &str,
    text: &str,
    dir: &std::path::Path,
    timeout: Duration,
) -> Result<Duration> {
    let path = dir.join(file_name);
    std::fs::write(&path, text)?;
    let mut cmd = host.netns().command(program);
    cmd.args(args).arg(&path);
    let started = std::time::Instant::now();
    let out = run_with_timeout(&mut cmd, timeout)?;
    let took = started.elapsed();
    if !out.status.success() {
        bail!(
            "`{program} {}` in {} failed: {}",
            args.join(" "),
            host.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(took)
}

/// Loads kube-proxy-shaped iptables rules into `node` (`iptables-restore`, whichever backend
/// the system's `iptables` is: `iptables --version` says).
/// Returns how long `iptables-restore` ran.
pub fn apply_iptables(node: &Host, svcs: &[SvcPort], dir: &std::path::Path) -> Result<Duration> {
    load(
        node,
        "iptables-restore",
        &[],
        "iptables.rules",
        &iptables_rules(svcs),
        dir,
        Duration::from_secs(600),
    )
}

/// Loads kube-proxy-shaped nftables rules into `node` (`nft -f`).
/// Returns how long `nft -f` ran.
pub fn apply_nft(node: &Host, svcs: &[SvcPort], dir: &std::path::Path) -> Result<Duration> {
    load(
        node,
        "nft",
        &["-f"],
        "kube-proxy.nft",
        &nft_rules(svcs),
        dir,
        Duration::from_secs(600),
    )
}

/// `iptables --version`, e.g. `iptables v1.8.9 (nf_tables)`.
pub fn iptables_version() -> String {
    std::process::Command::new("iptables")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "iptables: not found".into())
}

pub fn nft_version() -> String {
    std::process::Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|_| "nft: not found".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svcs(n: usize) -> Vec<SvcPort> {
        (0..n)
            .map(|i| SvcPort {
                namespace: "default".into(),
                name: format!("svc-{i}"),
                port_name: "http".into(),
                proto: "tcp",
                vip: Ipv4Addr::new(198, 19, 0, 1 + i as u8),
                port: 80,
                endpoints: (0..3)
                    .map(|e| (Ipv4Addr::new(198, 18, 1, 11 + e), 8080))
                    .collect(),
            })
            .collect()
    }

    #[test]
    fn iptables_shape() {
        let r = iptables_rules(&svcs(2));
        assert_eq!(r.matches("-A KUBE-SERVICES -d ").count(), 2);
        assert_eq!(r.matches("--probability 0.33333333333").count(), 2);
        assert_eq!(r.matches("--probability 0.50000000000").count(), 2);
        assert_eq!(
            r.matches("-j DNAT --to-destination 198.18.1.13:8080")
                .count(),
            2
        );
        assert_eq!(r.matches("COMMIT").count(), 2);
        // The nodeports jump is the last rule of KUBE-SERVICES.
        let last = r
            .lines()
            .rfind(|l| l.starts_with("-A KUBE-SERVICES"))
            .unwrap();
        assert!(last.contains("KUBE-NODEPORTS"));
        // Chain names fit iptables' 28 characters and are distinct.
        let chains: std::collections::BTreeSet<&str> = r
            .lines()
            .filter_map(|l| l.strip_prefix(':'))
            .map(|l| l.split(' ').next().unwrap())
            .collect();
        assert!(chains.iter().all(|c| c.len() <= 28));
        assert_eq!(
            chains.iter().filter(|c| c.starts_with("KUBE-SEP-")).count(),
            6
        );
    }

    #[test]
    fn nft_shape() {
        let r = nft_rules(&svcs(3));
        assert_eq!(r.matches(" . tcp . 80 : goto service-").count(), 3);
        assert_eq!(r.matches("numgen random mod 3 vmap").count(), 3);
        assert_eq!(r.matches("dnat to 198.18.1.11:8080").count(), 3);
        assert_eq!(r.matches('{').count(), r.matches('}').count());
        let empty = nft_rules(&[]);
        assert!(!empty.contains("elements"));
    }
}
