//! Frame bodies as every transport and the relay decode them: an error or
//! the one envelope that encodes back to exactly these bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_contract::fuzz_checks::envelope(data));
