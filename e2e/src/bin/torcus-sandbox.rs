//! `torcus-sandbox up | status | down`: a local Kubernetes with Torcus in it.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    torcus_e2e::sandbox::Args::parse().run().await
}
