//! `torcus-e2e-podstub`: a stand-in for `torcus-node` in the process
//! kubelet's tests. It serves `/readyz` (503 while `$TORCUS_DATA_DIR/unready`
//! exists) and `/healthz` on `$POD_IP:8080` (`$PODSTUB_PORT`), tells how it
//! was started at `/info` (arguments and environment), serves files at
//! `/file/<absolute path>`, counts its starts in `$TORCUS_DATA_DIR/boots`,
//! lists the files of `$TORCUS_TLS_DIR` in its output, and stops on SIGTERM.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use axum::Json;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::routing::get;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    if std::env::var_os("TORCUS_DIE_WITH_PARENT").is_some() {
        tokio::spawn(exit_with_parent());
    }
    let ip: std::net::IpAddr = std::env::var("POD_IP").context("POD_IP")?.parse().context("POD_IP")?;
    let port: u16 = std::env::var("PODSTUB_PORT").ok().and_then(|p| p.parse().ok()).unwrap_or(8080);
    let data = std::env::var_os("TORCUS_DATA_DIR").map(PathBuf::from);
    if let Some(data) = &data {
        let boots = data.join("boots");
        let before = std::fs::read_to_string(&boots).unwrap_or_default();
        std::fs::write(&boots, format!("{before}boot\n")).with_context(|| format!("writing {}", boots.display()))?;
    }
    println!("podstub: args {:?}", std::env::args().collect::<Vec<_>>());
    if let Some(tls) = std::env::var_os("TORCUS_TLS_DIR") {
        let mut names: Vec<String> = std::fs::read_dir(&tls)
            .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        names.sort();
        println!("podstub: {} holds {names:?}", PathBuf::from(tls).display());
    }

    let unready = data.map(|d| d.join("unready"));
    let app = axum::Router::new()
        .route(
            "/readyz",
            get(move || {
                let unready = unready.clone();
                async move {
                    if unready.is_some_and(|f| f.exists()) {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    } else {
                        (StatusCode::OK, "ok")
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok" }))
        .route("/info", get(info))
        .route("/file/{*path}", get(file));
    let listener = tokio::net::TcpListener::bind((ip, port)).await.with_context(|| format!("binding {ip}:{port}"))?;
    println!("podstub: listening on {ip}:{port}");
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            term.recv().await;
        })
        .await?;
    println!("podstub: stopped by SIGTERM");
    Ok(())
}

async fn info() -> Json<serde_json::Value> {
    let env: serde_json::Map<String, serde_json::Value> = std::env::vars().map(|(k, v)| (k, v.into())).collect();
    Json(serde_json::json!({ "args": std::env::args().collect::<Vec<_>>(), "env": env }))
}

async fn file(Path(path): Path<String>) -> (StatusCode, Vec<u8>) {
    match std::fs::read(format!("/{path}")) {
        Ok(content) => (StatusCode::OK, content),
        Err(e) => (StatusCode::NOT_FOUND, e.to_string().into_bytes()),
    }
}

/// Exits once the parent (the kubelet's process) is gone.
async fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if std::os::unix::process::parent_id() != parent {
            println!("podstub: parent is gone; exiting");
            std::process::exit(0);
        }
    }
}
