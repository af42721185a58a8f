#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| corral::fuzzing::glob_pattern(data));
