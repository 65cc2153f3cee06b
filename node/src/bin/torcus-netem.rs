//! TEST ONLY: adds a fixed delay to every packet the kernel queues to it.
//!
//! This machine's kernel has no `netem` queueing discipline, so the network
//! fault tests delay packets the way netem would, with the kernel's netfilter
//! queue: in a node's network namespace, `iptables -A INPUT -i eth0 -j
//! NFQUEUE --queue-num 0` hands every packet the node receives to this
//! process, which lets it go on (an ACCEPT verdict) `--delay-ms` after it was
//! queued.
//! The packets are the node's real ones, held in the kernel meanwhile; loss
//! and partitions are plain iptables rules beside it.
//!
//! Run inside the namespace (`ip netns exec <ns> torcus-netem --delay-ms 50`);
//! it prints `ready` once bound, and on SIGTERM or SIGKILL the kernel drops
//! what it held, as a link going away would. Packets pass in the order they
//! came, each at least the delay after it was queued (the loop wakes at least
//! every millisecond while any is held). The kernel queue holds at most
//! `--limit` packets (netem's default limit is 1000 too); beyond that the
//! kernel drops, as netem does.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Debug, Parser)]
struct Args {
    /// The netfilter queue to serve.
    #[arg(long, default_value_t = 0)]
    queue: u16,
    /// Added to every packet, in milliseconds.
    #[arg(long)]
    delay_ms: u64,
    /// Packets the kernel may hold for this process at once.
    #[arg(long, default_value_t = 1000)]
    limit: u32,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let delay = Duration::from_millis(args.delay_ms);
    let mut queue = nfq::Queue::open()?;
    queue.bind(args.queue)?;
    queue.set_queue_max_len(args.queue, args.limit)?;
    // Only the verdict is needed, not the packet's bytes.
    queue.set_copy_range(args.queue, 0)?;
    println!("ready");
    std::io::stdout().flush()?;

    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        // Take what the kernel has queued: wait for it when nothing is held,
        // otherwise only what is there already.
        queue.set_nonblocking(!held.is_empty());
        loop {
            match queue.recv() {
                Ok(mut message) => {
                    message.set_verdict(nfq::Verdict::Accept);
                    held.push_back((Instant::now() + delay, message));
                    queue.set_nonblocking(true);
                }
                Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(due, _)| *due <= now) {
            if let Some((_, message)) = held.pop_front() {
                queue.verdict(message)?;
            }
        }
        if let Some((due, _)) = held.front() {
            std::thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(1)));
        }
    }
}
