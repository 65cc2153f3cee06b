//! Test support: a network of namespaces for node processes, and the faults
//! a real network has.
//!
//! Each node gets a network namespace of its own, made by the test, with one
//! interface (`eth0`, one end of a veth pair) on a bridge in the test's own
//! namespace; the bridge's address (the *gateway*) is where the test process
//! and the relay it serves listen. Nothing leaves these namespaces: the bridge
//! has no uplink and nothing is routed.
//!
//! The faults are real: the kernel drops or holds the node's packets, on
//! arrival (as a bad link loses or holds them: the sender's kernel saw them
//! leave; see [`NetLab::loss`] and [`NetLab::delay`] for why not on the way
//! out).
//! - loss: an iptables `statistic` rule drops a share of what the node
//!   receives;
//! - latency: every packet the node receives goes through the netfilter
//!   queue to `torcus-netem`, which lets it go on after a fixed delay (this
//!   kernel has no `netem` qdisc; see that binary);
//! - a partition: everything to and from the node is dropped (a cable pulled
//!   without the link going down: peers see silence, not refusals);
//! - a cut direct path: only traffic between the node and other nodes is
//!   dropped, the gateway (the relay) stays reachable.
//!
//! Each fault's iptables rule counts the packets it took, so a test can
//! assert the fault was reached, not only configured. Dropping a lab
//! removes its namespaces, links and delay processes.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Set in CI (which runs as root): a lab that cannot be made fails the test
/// instead of skipping it.
pub const REQUIRE_ENV: &str = "TORCUS_REQUIRE_NETNS";

/// Network namespaces for `nodes` node processes on one bridge.
#[derive(Debug)]
pub struct NetLab {
    subnet: u8,
    nodes: u16,
    netem: PathBuf,
    delayers: Vec<Option<Child>>,
}

/// Runs `program args`, panicking with its output unless it succeeds.
fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program} {args:?}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn quietly(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl NetLab {
    /// A lab for `nodes` nodes, or `None` when this process may not make
    /// network namespaces (not root, no `ip` or `iptables`) and CI did not
    /// require them (`TORCUS_REQUIRE_NETNS`). `netem` is the `torcus-netem`
    /// binary.
    pub fn create(nodes: u16, netem: &Path) -> Option<Self> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let able = quietly("ip", &["netns", "list"]) && quietly("iptables", &["--version"]) && {
            // Root, or at least allowed to make a namespace.
            let probe = format!("torcus-probe-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let made = quietly("ip", &["netns", "add", &probe]);
            made && quietly("ip", &["netns", "del", &probe])
        };
        if !able {
            assert!(
                std::env::var_os(REQUIRE_ENV).is_none(),
                "{REQUIRE_ENV} is set, but this process cannot make network namespaces with ip and iptables"
            );
            eprintln!("skipped: network namespaces need root, iproute2 and iptables");
            return None;
        }
        assert!(nodes <= 200, "one /24 per lab");
        // A /24 of 10.213.0.0/16 no other lab on this machine has: the
        // bridge's name is the claim (creating it fails if it exists).
        let start = std::process::id().wrapping_mul(31).wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed));
        let subnet = (0..250)
            .map(|k| (start.wrapping_add(k) % 250 + 1) as u8)
            .find(|s| quietly("ip", &["link", "add", &Self::bridge_name(*s), "type", "bridge"]))
            .expect("a free subnet for the lab");
        let lab = Self { subnet, nodes, netem: netem.to_owned(), delayers: (0..nodes).map(|_| None).collect() };
        let bridge = Self::bridge_name(subnet);
        run("ip", &["addr", "add", &format!("{}/24", lab.gateway()), "dev", &bridge]);
        run("ip", &["link", "set", &bridge, "up"]);
        for i in 0..nodes {
            let ns = lab.namespace(i);
            let host_end = format!("tl{subnet}n{i}");
            // A namespace left by a run that was killed goes first.
            quietly("ip", &["netns", "del", &ns]);
            run("ip", &["netns", "add", &ns]);
            run("ip", &["link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            run("ip", &["link", "set", &host_end, "master", &bridge]);
            run("ip", &["link", "set", &host_end, "up"]);
            lab.exec(i, "ip", &["link", "set", "lo", "up"]);
            lab.exec(i, "ip", &["addr", "add", &format!("{}/24", lab.host(i)), "dev", "eth0"]);
            // Wire-sized packets: TCP (segmentation offload) and QUIC (UDP
            // segmentation offload) hand the device batches of up to 64 KiB;
            // with one segment per packet at most, the sender splits them
            // before they cross, so the rules where they arrive see each
            // packet as a wire would carry it (1 % loss is 1 % of packets,
            // not of batches).
            lab.exec(i, "ip", &["link", "set", "dev", "eth0", "gso_max_segs", "1"]);
            lab.exec(i, "ip", &["link", "set", "eth0", "up"]);
        }
        Some(lab)
    }

    fn bridge_name(subnet: u8) -> String {
        format!("tl{subnet}br")
    }

    /// The bridge's address in the test's namespace: where the test process
    /// and its relay are reached from the nodes.
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 213, self.subnet, 1))
    }

    /// Node `i`'s address.
    pub fn host(&self, i: u16) -> IpAddr {
        assert!(i < self.nodes);
        IpAddr::V4(Ipv4Addr::new(10, 213, self.subnet, 10 + i as u8))
    }

    /// Node `i`'s namespace.
    pub fn namespace(&self, i: u16) -> String {
        format!("torcus-lab{}-{i}", self.subnet)
    }

    /// `program` to be run in node `i`'s namespace (`ip netns exec` enters
    /// it and execs the program: the child's pid is the program's).
    pub fn command(&self, i: u16, program: &Path) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.namespace(i)]).arg(program);
        command
    }

    fn exec(&self, i: u16, program: &str, args: &[&str]) -> String {
        let ns = self.namespace(i);
        let mut all = vec!["netns", "exec", &ns, program];
        all.extend_from_slice(args);
        run("ip", &all)
    }

    /// Node `i` loses `percent` % of the packets it receives, at random.
    /// Dropped on arrival, as a lossy link drops them: the sender's kernel
    /// saw the packet leave (a drop on its own way out would hand it an
    /// error instead, and TCP would just try again at once).
    pub fn loss(&self, i: u16, percent: f64) {
        let probability = format!("{}", percent / 100.0);
        let rule = ["-i", "eth0", "-m", "statistic", "--mode", "random", "--probability", &probability];
        self.rule(i, "INPUT", &rule, "torcus-loss");
    }

    /// Packets reach node `i` `ms` milliseconds late (after any loss).
    /// Held on arrival, not on the way out: a packet held in the sender's
    /// own queue would still count against its socket, and TCP would send
    /// less while it waits, which a slow link does not make it do.
    pub fn delay(&mut self, i: u16, ms: u64) {
        assert!(self.delayers[usize::from(i)].is_none(), "node {i} is delayed already");
        let mut child = self
            .command(i, &self.netem)
            .args(["--queue", "0", &format!("--delay-ms={ms}")])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("ip netns exec torcus-netem starts (ip was found when the lab was made)");
        let stdout = child.stdout.take().expect("stdout was piped above");
        // Held here at once, so that it goes with the lab whatever happens next.
        self.delayers[usize::from(i)] = Some(child);
        // The queue is bound once it says so; a rule before that would drop.
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut ready)
            .expect("torcus-netem's first line");
        assert_eq!(ready.trim(), "ready", "torcus-netem did not start");
        let rule = ["-w", "-A", "INPUT", "-i", "eth0", "-m", "comment", "--comment", "torcus-delay"];
        self.exec(i, "iptables", &[&rule[..], &["-j", "NFQUEUE", "--queue-num", "0"]].concat());
    }

    /// Node `i` is cut off: whatever reaches it is dropped, what it sends
    /// is dropped where it arrives at the other nodes, and what it sends to
    /// the gateway is dropped on its way out (the test's own namespace gets
    /// no rules). Its link stays up: peers hear silence, not refusals.
    pub fn partition(&self, i: u16) {
        self.rule(i, "INPUT", &["-i", "eth0"], "torcus-partition");
        self.rule(i, "OUTPUT", &["-o", "eth0", "-d", &self.gateway().to_string()], "torcus-partition");
        let from = self.host(i).to_string();
        for j in (0..self.nodes).filter(|j| *j != i) {
            self.rule(j, "INPUT", &["-i", "eth0", "-s", &from], &format!("torcus-partition-of-{i}"));
        }
    }

    /// Traffic between node `i` and the other nodes is dropped where it
    /// arrives, both ways; the gateway (the test process and the relay)
    /// stays reachable.
    pub fn cut_peers(&self, i: u16) {
        let from = self.host(i).to_string();
        for j in (0..self.nodes).filter(|j| *j != i) {
            self.rule(i, "INPUT", &["-i", "eth0", "-s", &self.host(j).to_string()], "torcus-cut");
            self.rule(j, "INPUT", &["-i", "eth0", "-s", &from], &format!("torcus-cut-of-{i}"));
        }
    }

    /// Inserts a counting DROP rule for `matching` in `chain`, ahead of the
    /// delay (a dropped packet is never held).
    fn rule(&self, i: u16, chain: &str, matching: &[&str], comment: &str) {
        let mut args = vec!["-w", "-I", chain, "1"];
        args.extend_from_slice(matching);
        args.extend_from_slice(&["-m", "comment", "--comment", comment, "-j", "DROP"]);
        self.exec(i, "iptables", &args);
    }

    /// Packets node `i`'s rules marked `comment` (`torcus-loss`,
    /// `torcus-delay`, `torcus-partition`, `torcus-cut`) took so far, in
    /// both chains.
    pub fn packets(&self, i: u16, comment: &str) -> u64 {
        let mut total = 0;
        for chain in ["OUTPUT", "INPUT"] {
            let listing = self.exec(i, "iptables", &["-w", "-L", chain, "-v", "-n", "-x"]);
            for line in listing.lines().filter(|l| l.contains(&format!("/* {comment} */"))) {
                total += line.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
            }
        }
        total
    }

    /// Node `i`'s network is whole again: its rules go (and the other
    /// nodes' rules against it), its delay stops.
    pub fn heal(&mut self, i: u16) {
        self.exec(i, "iptables", &["-w", "-F", "OUTPUT"]);
        self.exec(i, "iptables", &["-w", "-F", "INPUT"]);
        for j in (0..self.nodes).filter(|j| *j != i) {
            let listing = self.exec(j, "iptables", &["-w", "-S", "INPUT"]);
            let against = [format!("torcus-partition-of-{i}"), format!("torcus-cut-of-{i}")];
            for line in listing.lines().filter(|l| against.iter().any(|a| l.split_whitespace().any(|w| w == a))) {
                let rule: Vec<&str> = line.split_whitespace().skip(2).collect();
                self.exec(j, "iptables", &[&["-w", "-D", "INPUT"][..], &rule].concat());
            }
        }
        if let Some(mut child) = self.delayers[usize::from(i)].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for child in self.delayers.iter_mut().flatten() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for i in 0..self.nodes {
            // Deleting a namespace deletes its end of the veth pair, and so the pair.
            quietly("ip", &["netns", "del", &self.namespace(i)]);
        }
        quietly("ip", &["link", "del", &Self::bridge_name(self.subnet)]);
    }
}
