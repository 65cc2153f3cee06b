//! Live reload of the node's certificate, key and trust bundle for QUIC.
//!
//! The operator renews a node's leaf and rolls the cluster's CA by rewriting
//! the node's Secret; the kubelet swaps the mounted files in place and the pod
//! keeps running. The node looks at the files' modification times every
//! [`POLL`]; once a change has held still for one look (a writer other than
//! the kubelet may write the files one at a time), it checks them as it does
//! at start — the leaf valid under the new bundle, for this party of this
//! cluster — and hands them to QUIC: connections made from then on, dialled or
//! accepted, use the new certificate and trust, and connections already open
//! keep theirs, so no session in flight is cut. Files that do not check out
//! are refused, logged and counted (`torcus_node_tls_reloads_total{outcome}`),
//! and the last good configuration stays until the files change again.
//!
//! The node API ([`crate::tls_listener`]), the relay's request signer and the
//! registry client read the same files on their own, when they next use them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use prometheus::IntCounterVec;
use tokio_util::sync::CancellationToken;
use torcus_certs::SecretPem;
use tracing::{info, warn};

use crate::identity::Identity;
use crate::tls_listener::stamps;
use crate::transport::quic::QuicTransport;

/// How often the node looks at its TLS files.
pub const POLL: Duration = Duration::from_secs(2);

/// The files a reload reads.
const FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// Modification times of the files, `None` for one that cannot be read.
type Stamps = Vec<Option<SystemTime>>;

/// When to reload, from what successive looks at the files saw.
#[derive(Debug)]
pub struct Watch {
    /// What the configuration in use was made from (or last refused).
    loaded: Stamps,
    /// What the last look saw.
    seen: Stamps,
}

impl Watch {
    /// A watch over files whose configuration in use was made from `loaded`.
    pub fn new(loaded: Stamps) -> Self {
        Self { seen: loaded.clone(), loaded }
    }

    /// Takes one look; true when the files differ from what was loaded and
    /// are as the previous look saw them (they have stopped changing).
    pub fn look(&mut self, now: Stamps) -> bool {
        let still = now == self.seen;
        self.seen = now;
        still && self.seen != self.loaded
    }

    /// What was seen was loaded or refused: not tried again until it changes.
    pub fn done(&mut self) {
        self.loaded = self.seen.clone();
    }
}

/// Where a node's TLS files are and whom they must name.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The mounted Secret's folder.
    pub dir: PathBuf,
    /// The cluster configuration file.
    pub config: PathBuf,
    /// This node's party index.
    pub me: u16,
}

impl TlsFiles {
    /// Their modification times now.
    pub fn stamps(&self) -> Vec<Option<SystemTime>> {
        stamps(&self.dir, &FILES)
    }

    /// Reads them and hands them to `quic` once they check out.
    fn reload(&self, quic: &QuicTransport) -> Result<(), String> {
        Identity::load(self.me, &self.config, &self.dir).map_err(|e| e.to_string())?;
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).map_err(|e| format!("{name}: {e}"));
        let key = SecretPem::new(read("tls.key")?);
        quic.reload_tls(&read("tls.crt")?, &key, &read("ca.crt")?).map_err(|e| e.to_string())
    }
}

/// Watches `files` and reloads `quic` when they change, until `stop`.
/// `loaded`: the files' stamps when the configuration in use was read.
pub async fn run(
    files: TlsFiles,
    loaded: Vec<Option<SystemTime>>,
    quic: Arc<QuicTransport>,
    reloads: IntCounterVec,
    stop: CancellationToken,
) {
    let mut watch = Watch::new(loaded);
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            () = stop.cancelled() => return,
        }
        if !watch.look(files.stamps()) {
            continue;
        }
        watch.done();
        match files.reload(&quic) {
            Ok(()) => {
                info!("TLS certificate and trust bundle reloaded for new QUIC connections");
                reloads.with_label_values(&["ok"]).inc();
            }
            Err(error) => {
                warn!(%error, "TLS files changed but do not check out; keeping the last good ones");
                reloads.with_label_values(&["refused"]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> Stamps {
        vec![Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs)); 3]
    }

    #[test]
    fn a_change_is_loaded_once_it_holds_still() {
        let mut watch = Watch::new(at(1));
        assert!(!watch.look(at(1)), "nothing changed");
        // Written: seen once, not yet still.
        assert!(!watch.look(at(2)));
        // Still changing (the key written after the certificate).
        let mut half = at(2);
        half[1] = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(3));
        assert!(!watch.look(half.clone()));
        assert!(watch.look(half.clone()), "the same twice: load it");
        watch.done();
        assert!(!watch.look(half), "loaded: not again");
    }

    #[test]
    fn refused_files_are_tried_again_only_when_they_change() {
        let mut watch = Watch::new(at(1));
        watch.look(at(2));
        assert!(watch.look(at(2)));
        watch.done(); // refused
        assert!(!watch.look(at(2)));
        assert!(!watch.look(at(3)));
        assert!(watch.look(at(3)));
        // A file that disappears is a change too.
        watch.done();
        let gone = vec![None, Some(SystemTime::UNIX_EPOCH), None];
        assert!(!watch.look(gone.clone()));
        assert!(watch.look(gone));
    }
}
