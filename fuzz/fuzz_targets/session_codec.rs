#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| sidekey_fuzz::session_codec::check(data));
