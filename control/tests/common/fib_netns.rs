//! A private network namespace whose "uplink" makes the datapath's FIB lookups succeed the
//! same way on every machine, for BPF_PROG_TEST_RUN (packet tests and the micro benchmark).
//! Nothing is ever transmitted.
#![allow(dead_code)]

use std::process::Command;

/// A private namespace holding an "uplink" (198.18.0.2/24, MTU 1500) with a permanent
/// neighbour entry for node-c only, forwarding on. Removed on drop.
pub struct FibNetns {
    name: String,
    pub ifindex: u32,
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

impl FibNetns {
    pub fn new(tag: &str) -> Self {
        let name = format!("xlbpt-{}-{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        // The guard exists before anything else can fail, so a failed setup still removes it.
        let mut ns = FibNetns {
            name: name.clone(),
            ifindex: 0,
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
        let idx = Command::new("ip")
            .args(["-n", &name, "-o", "link", "show", "up0"])
            .output()
            .unwrap();
        let idx: u32 = String::from_utf8_lossy(&idx.stdout)
            .split(':')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        ns.ifindex = idx;
        ns
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
