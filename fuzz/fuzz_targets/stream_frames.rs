//! Length-prefixed frames one after another, as QUIC streams and TCP
//! connections deliver them: each frame read writes back to its bytes.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_node::fuzz_checks::stream_frames(data));
