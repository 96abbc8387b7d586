//! The path the access rules match: normalized once, with no way left to mean another path
//! (no dot segments, no empty segments, no backslashes, no controls), and the path sent
//! upstream decodes back to exactly what the rules saw.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sidekey_proxy::routes::{encode, normalize};

fuzz_target!(|data: &[u8]| {
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let Ok(path) = normalize(raw) else { return };
    assert!(path.starts_with('/'), "{raw:?} -> {path:?}");
    let inner = path.strip_suffix('/').unwrap_or(&path);
    assert!(
        path == "/" || inner[1..].split('/').all(|s| !s.is_empty() && s != "." && s != ".."),
        "{raw:?} -> {path:?}"
    );
    assert!(!path.contains('\\') && !path.chars().any(char::is_control), "{raw:?} -> {path:?}");
    let upstream = encode(&path);
    assert_eq!(normalize(&upstream).as_deref(), Ok(path.as_str()), "{raw:?}: upstream {upstream:?}");
});
