//! The config file (TOML) and the command line: any input gives a config or an error,
//! never a panic.

use sidekey_proxy::config::{Config, load};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(values) = sidekey_proxy::config::load::parse_toml(text, "fuzz.toml") {
        let _ = Config::from_values(&values);
    }
    let args = std::iter::once("sidekey-proxy".to_string()).chain(text.lines().take(32).map(String::from));
    if let Ok(inv) = load(args, Vec::<(String, String)>::new()) {
        let _ = Config::from_values(&inv.values);
    }
}
