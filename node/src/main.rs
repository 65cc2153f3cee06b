//! `torcus-node`: one party of a Torcus signing cluster.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = torcus_node::Args::parse();
    args.init_tracing();
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
