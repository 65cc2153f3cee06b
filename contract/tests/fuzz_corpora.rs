//! Every input of the fuzz targets' checked-in corpora (`fuzz/corpus/`, the
//! seeds) and every input a fuzzer ever crashed on (`fuzz/regressions/`,
//! kept once the bug is fixed), run through the same checks as the targets
//! (`torcus_contract::fuzz_checks`), on stable Rust, in every test run.

use std::path::Path;

#[test]
fn every_seed_and_every_crash_once_found_passes_its_targets_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    torcus_contract::fuzz_checks::replay_corpora(&fuzz, &torcus_contract::fuzz_checks::TARGETS);
}
