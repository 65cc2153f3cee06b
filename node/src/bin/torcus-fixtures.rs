//! `torcus-fixtures aux N...` (test builds only: the `test-util` feature)
//! writes to stdout the aux info test fixture for clusters of N parties,
//! from one real run of the aux info protocol per N over the public safe
//! primes fixture. Checked in as `node/tests/fixtures/aux-info.json`; see
//! the README there.

use std::collections::BTreeMap;

use torcus_node::engine::{Aux, Primes, raw};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    anyhow::ensure!(args.next().as_deref() == Some("aux"), "usage: torcus-fixtures aux N...");
    let primes: Vec<Primes> = serde_json::from_str(&std::fs::read_to_string(torcus_node::testing::fixture())?)?;
    let mut fixture: BTreeMap<u16, Vec<Aux>> = BTreeMap::new();
    for n in args {
        let n: u16 = n.parse()?;
        anyhow::ensure!(usize::from(n) <= primes.len(), "the primes fixture covers {} parties", primes.len());
        let started = std::time::Instant::now();
        fixture.insert(n, raw::aux_info_for_fixture(n, &primes));
        eprintln!("aux info for {n} parties in {:.1} s", started.elapsed().as_secs_f64());
    }
    println!("{}", serde_json::to_string(&fixture)?);
    Ok(())
}
