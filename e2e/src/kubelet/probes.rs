//! Readiness and liveness probes (HTTP GET and TCP socket), and the plain
//! HTTP/1.0 and HTTPS GETs tests use too.

use super::*;

/// A plain HTTP/1.0 GET to `addr`, returning status code and body; used for
/// probes and by tests.
pub async fn http_get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    http_request(addr, &addr.to_string(), path, &[], timeout).await
}

pub(super) async fn http_request(
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        exchange(stream, addr, host, path, headers).await
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

/// An HTTP/1.0 GET over TLS with `tls` (which says whom to trust and which
/// certificate to present) to `addr`, with `server_name` as the TLS server
/// name; returns status code and body.
pub async fn https_get(
    addr: SocketAddr,
    tls: Arc<torcus_certs::rustls::ClientConfig>,
    server_name: &str,
    path: &str,
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let name = torcus_certs::rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
    let get = async {
        let stream = tokio::net::TcpStream::connect(addr).await?;
        let stream = tokio_rustls::TlsConnector::from(tls).connect(name, stream).await?;
        exchange(stream, addr, server_name, path, &[]).await
    };
    tokio::time::timeout(timeout, get).await.map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
}

pub(super) async fn exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    host: &str,
    path: &str,
    headers: &[(String, String)],
) -> anyhow::Result<(u16, String)> {
    let mut request = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: torcus-kubelet\r\nAccept: */*\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("malformed HTTP response from {addr}"))?;
    Ok((code, body.to_owned()))
}

#[derive(Debug, Default)]
pub(super) struct ProbeState {
    pub(super) next: Option<Instant>,
    pub(super) successes: i32,
    pub(super) failures: i32,
}

impl Worker {
    pub(super) async fn probe_readiness(&mut self) {
        let (Some(launch), Some(ip), Run::Running(_)) = (&self.launch, self.ip, &self.run) else {
            self.readiness.next = None;
            return;
        };
        let Some(probe) = launch.readiness.clone() else { return };
        let result = run_probe(&probe, ip, &launch.ports).await;
        let period = secs(probe.period_seconds, 10).min(Duration::from_secs(1));
        self.readiness.next = Some(Instant::now() + period);
        match result {
            Ok(()) => {
                self.readiness.failures = 0;
                self.readiness.successes += 1;
                if !self.ready && self.readiness.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    info!("ready");
                    self.ready = true;
                }
            }
            Err(e) => {
                self.readiness.successes = 0;
                self.readiness.failures += 1;
                if self.ready && self.readiness.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    info!(error = e, "not ready");
                    self.ready = false;
                }
            }
        }
    }

    pub(super) async fn probe_liveness(&mut self) {
        let (Some(launch), Some(ip), Run::Running(_)) = (&self.launch, self.ip, &self.run) else {
            self.liveness.next = None;
            return;
        };
        let Some(probe) = launch.liveness.clone() else { return };
        let result = run_probe(&probe, ip, &launch.ports).await;
        self.liveness.next = Some(Instant::now() + secs(probe.period_seconds, 10));
        match result {
            Ok(()) => self.liveness.failures = 0,
            Err(e) => {
                self.liveness.failures += 1;
                if self.liveness.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    warn!(error = e, "liveness probe failed; restarting the process");
                    log_line(&self.log, &format!("liveness probe failed: {e}; killing the process"));
                    if let Run::Running(proc) = &mut self.run {
                        signal_group(proc.pid, Signal::SIGKILL);
                        let status = proc.child.wait().await;
                        self.exited(status, Some("Error"));
                    }
                }
            }
        }
    }
}

/// Runs one probe against the pod IP: HTTP GET (2xx and 3xx pass) or TCP
/// connect. Exec and gRPC probes are not supported and pass.
pub(super) async fn run_probe(probe: &Probe, ip: Ipv4Addr, ports: &[ContainerPort]) -> Result<(), String> {
    let timeout = secs(probe.timeout_seconds, 1);
    let port = |port: &IntOrString| match port {
        IntOrString::Int(p) => u16::try_from(*p).map_err(|_| format!("port {p} out of range")),
        IntOrString::String(name) => ports
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .ok_or_else(|| format!("no container port named {name:?}")),
    };
    let host_ip = |host: Option<&String>| -> Result<IpAddr, String> {
        match host.filter(|h| !h.is_empty()) {
            Some(h) => h.parse().map_err(|_| format!("probe host {h:?} is not an IP")),
            None => Ok(IpAddr::V4(ip)),
        }
    };
    if let Some(get) = &probe.http_get {
        let addr = SocketAddr::new(host_ip(get.host.as_ref())?, port(&get.port)?);
        if get.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            // No TLS client here: a connection has to do.
            return tcp_probe(addr, timeout).await;
        }
        let headers: Vec<(String, String)> =
            get.http_headers.iter().flatten().map(|h| (h.name.clone(), h.value.clone())).collect();
        let path = get.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
        let (code, _) =
            http_request(addr, &addr.to_string(), path, &headers, timeout).await.map_err(|e| format!("{e:#}"))?;
        return if (200..400).contains(&code) { Ok(()) } else { Err(format!("HTTP {code} from {path}")) };
    }
    if let Some(tcp) = &probe.tcp_socket {
        let addr = SocketAddr::new(host_ip(tcp.host.as_ref())?, port(&tcp.port)?);
        return tcp_probe(addr, timeout).await;
    }
    Ok(())
}

pub(super) async fn tcp_probe(addr: SocketAddr, timeout: Duration) -> Result<(), String> {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("connecting to {addr}: {e}")),
        Err(_) => Err(format!("connecting to {addr}: timed out")),
    }
}
