#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::lease_request(data));
