//! Registry requests as the operator reads them from a node: the signed
//! envelope, then the message its payload holds.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_contract::fuzz_checks::registry_message(data));
