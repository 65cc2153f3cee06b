//! The node API's listener: mutual TLS with the cluster CA.
//!
//! Handshakes run in tasks of their own, a bounded number at a time (and
//! fewer from any one address) and each within [`HANDSHAKE_TIMEOUT`], so a
//! client that opens connections and never finishes a handshake cannot hold
//! up the others; connections past the handshake are bounded too. A connection reaches the
//! HTTP server only with a client certificate that chains to the cluster CA;
//! who the client is ([`Caller`]) travels with it, for [`crate::api`] to
//! authorize.
//!
//! The server certificate and the trusted CAs are read again when the files
//! change: the operator renews certificates and rolls the CA in place.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use prometheus::IntCounterVec;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use torcus_certs::{Identity, SecretPem, rustls};
use tracing::{debug, warn};

/// Longest a client may take to complete its handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Most handshakes in progress at once; a connection beyond them is closed
/// and counted as `busy`.
pub const MAX_HANDSHAKES: usize = 128;
/// Most handshakes in progress from one address: one client cannot take
/// the slots of the others (the operator's among them).
pub const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// Most connections open past their handshake; one beyond is closed and
/// counted as `busy`.
pub const MAX_CONNECTIONS: usize = 256;
/// The ALPN the API speaks.
pub const ALPN: &[u8] = b"http/1.1";

/// Who is calling: the address and the identity in the client certificate
/// (`None` when the certificate names no Torcus identity).
#[derive(Clone, Debug)]
pub struct Caller {
    /// The client's address.
    pub addr: SocketAddr,
    /// The identity in the client certificate.
    pub identity: Option<Identity>,
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Caller {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

/// Certificate, key and trust bundle files, and the configuration made of
/// them, made again when a file's modification time changes.
struct Tls {
    dir: PathBuf,
    stamp: Option<Vec<Option<SystemTime>>>,
    acceptor: Option<TlsAcceptor>,
}

const FILES: [&str; 3] = ["tls.crt", "tls.key", "ca.crt"];

/// The modification times of `files` in `dir` (`None` for one that cannot
/// be read): what tells that the operator rotated them.
pub(crate) fn stamps(dir: &std::path::Path, files: &[&str]) -> Vec<Option<SystemTime>> {
    files.iter().map(|f| std::fs::metadata(dir.join(f)).and_then(|m| m.modified()).ok()).collect()
}

impl Tls {
    fn stamps(&self) -> Vec<Option<SystemTime>> {
        stamps(&self.dir, &FILES)
    }

    /// The acceptor for what is on disk now; the last good one when the
    /// files are unreadable or half written.
    fn acceptor(&mut self) -> Result<TlsAcceptor, String> {
        let stamp = self.stamps();
        if self.stamp.as_ref() != Some(&stamp) || self.acceptor.is_none() {
            match load(&self.dir) {
                Ok(config) => {
                    self.acceptor = Some(TlsAcceptor::from(config));
                    self.stamp = Some(stamp);
                }
                Err(error) if self.acceptor.is_some() => {
                    warn!(%error, "TLS files changed but do not load; keeping the last")
                }
                Err(error) => return Err(error),
            }
        }
        self.acceptor.clone().ok_or_else(|| "no TLS configuration".to_owned())
    }
}

fn load(dir: &std::path::Path) -> Result<Arc<rustls::ServerConfig>, String> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).map_err(|e| format!("{name}: {e}"));
    let key = SecretPem::new(read("tls.key")?);
    torcus_certs::server_config(&read("tls.crt")?, &key, &read("ca.crt")?, &[ALPN]).map_err(|e| e.to_string())
}

/// A listener that hands the HTTP server only connections whose handshake,
/// client certificate included, succeeded.
pub struct TlsListener {
    local: SocketAddr,
    accepted: mpsc::Receiver<(ApiStream, Caller)>,
}

impl std::fmt::Debug for TlsListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener").field("local", &self.local).finish_non_exhaustive()
    }
}

impl TlsListener {
    /// Serves TLS on `listener` with `tls_dir`'s `tls.crt`, `tls.key` and
    /// `ca.crt`, until `stop`. Fails when the files do not make a
    /// configuration at start.
    pub fn start(
        listener: TcpListener,
        tls_dir: PathBuf,
        refused: IntCounterVec,
        stop: CancellationToken,
    ) -> Result<Self, String> {
        let local = listener.local_addr().map_err(|e| e.to_string())?;
        let tls = Arc::new(Mutex::new(Tls { dir: tls_dir, stamp: None, acceptor: None }));
        lock(&tls).acceptor()?;
        let (tx, accepted) = mpsc::channel(MAX_HANDSHAKES);
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        let open = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let per_address: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
        tokio::spawn(async move {
            loop {
                let (stream, addr) = tokio::select! {
                    () = stop.cancelled() => return,
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            debug!(%error, "accept failed");
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    },
                };
                let Some(from_address) = AddressSlot::take(&per_address, addr.ip()) else {
                    refused.with_label_values(&["busy"]).inc();
                    continue;
                };
                let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
                    refused.with_label_values(&["busy"]).inc();
                    continue;
                };
                let acceptor = match lock(&tls).acceptor() {
                    Ok(acceptor) => acceptor,
                    Err(error) => {
                        warn!(%error, "no TLS configuration for the API");
                        continue;
                    }
                };
                let (tx, refused, open) = (tx.clone(), refused.clone(), Arc::clone(&open));
                tokio::spawn(async move {
                    let (_slot, _from_address) = (slot, from_address);
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            let Ok(open) = open.try_acquire_owned() else {
                                refused.with_label_values(&["busy"]).inc();
                                return;
                            };
                            let identity = stream
                                .get_ref()
                                .1
                                .peer_certificates()
                                .and_then(|certs| certs.first())
                                .and_then(|cert| torcus_certs::peer_identity(cert).ok());
                            let _ =
                                tx.send((ApiStream { inner: stream, _open: open }, Caller { addr, identity })).await;
                        }
                        Ok(Err(error)) => {
                            debug!(%addr, %error, "API handshake refused");
                            refused.with_label_values(&["handshake"]).inc();
                        }
                        Err(_) => {
                            debug!(%addr, "API handshake timed out");
                            refused.with_label_values(&["handshake"]).inc();
                        }
                    }
                });
            }
        });
        Ok(Self { local, accepted })
    }
}

/// One of an address's handshake slots, given back when dropped.
struct AddressSlot {
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
    ip: IpAddr,
}

impl AddressSlot {
    fn take(counts: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Self> {
        let mut map = counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = map.entry(ip).or_default();
        if *count >= MAX_HANDSHAKES_PER_ADDRESS {
            return None;
        }
        *count += 1;
        Some(Self { counts: Arc::clone(counts), ip })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut map = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = map.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

/// A connection past its handshake, holding one of [`MAX_CONNECTIONS`]
/// until it closes.
pub struct ApiStream {
    inner: TlsStream<TcpStream>,
    _open: tokio::sync::OwnedSemaphorePermit,
}

impl std::fmt::Debug for ApiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiStream").finish_non_exhaustive()
    }
}

impl tokio::io::AsyncRead for ApiStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl tokio::io::AsyncWrite for ApiStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

fn lock(tls: &Mutex<Tls>) -> std::sync::MutexGuard<'_, Tls> {
    tls.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl axum::serve::Listener for TlsListener {
    type Io = ApiStream;
    type Addr = Caller;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The acceptor stopped: nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Caller { addr: self.local, identity: None })
    }
}
