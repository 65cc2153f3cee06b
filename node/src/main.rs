//! `torcus-node`: one party of a Torcus signing cluster.

use std::time::Duration;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = torcus_node::Args::parse();
    args.init_tracing();
    if std::env::var_os("TORCUS_DIE_WITH_PARENT").is_some_and(|v| !v.is_empty() && v != "0") {
        tokio::spawn(exit_with_parent());
    }
    Ok(args.run(shutdown_signal()).await?)
}

async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// For processes started by the test harness (`TORCUS_DIE_WITH_PARENT`):
/// exits once the parent is gone, so a test that dies leaves no node behind.
/// The parent is polled, since a death signal is tied to the parent's thread.
async fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        if std::os::unix::process::parent_id() != parent {
            tracing::warn!(parent, "parent process is gone; exiting");
            std::process::exit(0);
        }
    }
}
