//! Session control messages (Proposal, Ack, Start, PresignProposal, Abort)
//! as a node reads them from a peer: an error, or a message that keeps its
//! meaning through its own encoding.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_contract::fuzz_checks::control(data));
