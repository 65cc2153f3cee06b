//! Sealed envelopes (relay and hybrid modes) as party 1 opens them: refused,
//! or the one envelope party 0 sealed.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_node::fuzz_checks::sealed_envelope(data));
