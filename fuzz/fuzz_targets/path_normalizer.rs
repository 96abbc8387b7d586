#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekey_fuzz::path_normalizer::check(data));
