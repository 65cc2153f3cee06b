//! Every input of the fuzz targets' checked-in corpora (`fuzz/corpus/`, the
//! seeds) and every input a fuzzer ever crashed on (`fuzz/regressions/`,
//! kept once the bug is fixed), run through the same checks as the targets
//! (`torcus_contract::fuzz_checks`), on stable Rust, in every test run.

use std::path::Path;

#[test]
fn every_seed_and_every_crash_once_found_passes_its_targets_check() {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    for (target, check) in torcus_contract::fuzz_checks::TARGETS {
        let mut seeds = 0;
        for folder in ["corpus", "regressions"] {
            let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(target)) else { continue };
            for entry in entries {
                let path = entry.unwrap().path();
                let input = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| check(&input)).is_err() {
                    panic!("{target}: {} fails its check", path.display());
                }
                seeds += usize::from(folder == "corpus");
            }
        }
        assert!(seeds > 0, "fuzz target {target} has no seed corpus in fuzz/corpus/{target}");
    }
}
