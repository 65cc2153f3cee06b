//! Signed grants as a node receives them in a Proposal: decoded and
//! verified against an issuer key. Whatever the bytes, no panic; a grant
//! that verifies is well-formed, is for a member, and verifies only once.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_contract::fuzz_checks::grant(data));
