//! TCP frame bodies as party 1 checks them: accepted only when signed by
//! the sender they name, exactly as they are.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| torcus_node::fuzz_checks::tcp_frame(data));
