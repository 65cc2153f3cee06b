//! The cluster configuration a node reads at start-up (written by the
//! operator into a Secret, so hostile to a node if the Secret was
//! tampered with): an error, or a configuration whose check runs.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_contract::fuzz_checks::cluster_config(data));
