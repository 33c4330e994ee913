//! Creating the lab's veth links, at build time and again: a test deletes a host's uplink and
//! creates it anew with the same name, as a driver reset, a bond rebuild or a re-created veth
//! does on a real node (the new interface gets a new ifindex).
use anyhow::{Context as _, Result, bail};

use super::Lab;
use super::topology::{LinkPlan, UPLINK};

impl Lab {
    /// Creates the veth pair `l` as planned: both ends, their addresses, bridge port, offloads,
    /// up.
    pub(super) fn create_link(&self, l: &LinkPlan) -> Result<()> {
        let (a, b) = (self.host(&l.a.host).netns(), self.host(&l.b.host).netns());
        a.ip(&[
            "link",
            "add",
            &l.a.ifname,
            "type",
            "veth",
            "peer",
            "name",
            &l.b.ifname,
            "netns",
            b.name(),
        ])
        .with_context(|| {
            format!(
                "linking {}/{} and {}/{}",
                l.a.host, l.a.ifname, l.b.host, l.b.ifname
            )
        })?;
        for (end, ns) in [(&l.a, a), (&l.b, b)] {
            for c in &end.addrs {
                ns.ip(&["addr", "add", &c.to_string(), "dev", &end.ifname])?;
            }
            if let Some(m) = &end.master {
                ns.ip(&["link", "set", &end.ifname, "master", m])?;
            }
            let mut features: Vec<&str> = Vec::new();
            if end.tx_checksum_off {
                features.extend(["tx", "off"]);
            }
            if end.gro {
                features.extend(["gro", "on"]);
            }
            if !features.is_empty() {
                let mut args = vec!["-K", end.ifname.as_str()];
                args.extend(features);
                ns.exec("ethtool", &args)?;
            }
        }
        for (end, ns) in [(&l.a, a), (&l.b, b)] {
            ns.ip(&["link", "set", &end.ifname, "up"])?;
        }
        Ok(())
    }

    /// The planned link whose one end is `host`'s uplink.
    fn uplink_plan(&self, host: &str) -> Result<&LinkPlan> {
        self.plan
            .links
            .iter()
            .find(|l| {
                [&l.a, &l.b]
                    .iter()
                    .any(|e| e.host == host && e.ifname == UPLINK)
            })
            .with_context(|| format!("lab {} has no uplink on {host}", self.prefix))
    }

    /// Deletes `host`'s uplink (its peer goes with it, and every route over it).
    pub fn delete_uplink(&self, host: &str) -> Result<()> {
        self.uplink_plan(host)?;
        self.host(host).netns().ip(&["link", "del", UPLINK])?;
        Ok(())
    }

    /// Creates `host`'s uplink again after [`Lab::delete_uplink`]: the same names, addresses,
    /// bridge port and offloads, and the routes the lab had over both ends.
    pub fn recreate_uplink(&self, host: &str) -> Result<()> {
        let l = self.uplink_plan(host)?;
        if l.a.xdp_pass || l.b.xdp_pass {
            bail!(
                "the uplink of {host} has a pass-through XDP program on its peer; re-creating \
                 it is only supported without one"
            );
        }
        self.create_link(l)?;
        for r in &self.plan.routes {
            let over = [&l.a, &l.b]
                .iter()
                .any(|e| e.host == r.host && r.dev.as_deref() == Some(e.ifname.as_str()));
            if over {
                let args = r.ip_args();
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                self.host(&r.host).netns().ip(&args)?;
            }
        }
        Ok(())
    }
}
