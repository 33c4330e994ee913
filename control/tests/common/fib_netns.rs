//! A private network namespace whose "uplink" makes the datapath's FIB lookups succeed the
//! same way on every machine, for BPF_PROG_TEST_RUN (packet tests and the micro benchmark).
//! Nothing is ever transmitted.
#![allow(dead_code)]

use std::process::Command;

/// A private namespace holding an "uplink" (198.18.0.2/24, MTU 1500) with a permanent
/// neighbour entry for node-c only, forwarding on. Removed on drop.
pub struct FibNetns {
    name: String,
    /// The uplink, `up0`.
    pub ifindex: u32,
    /// Its veth peer, `peer0`: a second interface whose traffic the FIB routes out of `up0`.
    pub peer_ifindex: u32,
    pub mac: [u8; 6],
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ifindex(netns: &str, dev: &str) -> u32 {
    let out = Command::new("ip")
        .args(["-n", netns, "-o", "link", "show", dev])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split(':')
        .next()
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

impl FibNetns {
    pub fn new(tag: &str) -> Self {
        let name = format!("xlbpt-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        // The guard exists before anything else can fail, so a failed setup still removes it.
        let mut ns = FibNetns {
            name: name.clone(),
            ifindex: 0,
            peer_ifindex: 0,
            mac: [2, 0, 0, 0, 0, 2],
        };
        // A veth pair inside the namespace (this kernel has no dummy driver); only its
        // addresses, routes and neighbours matter: nothing is transmitted.
        ip(&[
            "-n",
            &name,
            "link",
            "add",
            "up0",
            "address",
            "02:00:00:00:00:02",
            "type",
            "veth",
            "peer",
            "name",
            "peer0",
        ]);
        ip(&["-n", &name, "link", "set", "peer0", "up"]);
        ip(&["-n", &name, "link", "set", "up0", "up", "mtu", "1500"]);
        ip(&["-n", &name, "addr", "add", "198.18.0.2/24", "dev", "up0"]);
        ip(&[
            "-n",
            &name,
            "neigh",
            "add",
            "198.18.0.4",
            "lladdr",
            "02:00:00:00:00:04",
            "dev",
            "up0",
            "nud",
            "permanent",
        ]);
        let out = Command::new("nsenter")
            .args([
                &format!("--net=/run/netns/{name}"),
                "sysctl",
                "-qw",
                "net.ipv4.ip_forward=1",
            ])
            .output()
            .expect("sysctl");
        assert!(out.status.success());
        ns.ifindex = ifindex(&name, "up0");
        ns.peer_ifindex = ifindex(&name, "peer0");
        ns
    }

    /// Runs `ip -n <this namespace> args` (neighbour and route changes of a test).
    pub fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all);
    }

    /// The index of interface `dev` of the namespace.
    pub fn ifindex_of(&self, dev: &str) -> u32 {
        ifindex(&self.name, dev)
    }

    /// Moves the calling thread (each test runs on its own thread) into the namespace, where
    /// BPF_PROG_TEST_RUN resolves the ingress interface and does its FIB lookups.
    pub fn enter(&self) {
        let f = std::fs::File::open(format!("/run/netns/{}", self.name)).unwrap();
        use std::os::fd::AsRawFd as _;
        // SAFETY: setns on a valid namespace fd affects only this thread.
        assert_eq!(
            unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
            0,
            "setns"
        );
    }
}

impl Drop for FibNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
