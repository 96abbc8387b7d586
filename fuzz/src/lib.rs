//! The properties the fuzz targets check, one module per target, each a `check(data)` that
//! panics when the property fails. The libFuzzer binaries in `fuzz_targets/` (cargo-fuzz,
//! `make fuzz`) and the corpus replay in `tests/corpus.rs` (`make test`, no instrumented
//! build) call the same functions.
//!
//! - [`session_codec`]: cookie values and `Cookie` headers from the network.
//! - [`redirect`]: the `rd` redirect validator.
//! - [`path_normalizer`]: the path the access rules match, against models of upstreams.
//! - [`config`]: the TOML config file and the command line.
//! - [`render_input`]: `sidekey-controller render` input.

pub mod config;
pub mod path_normalizer;
pub mod redirect;
pub mod render_input;
pub mod session_codec;

/// The target names, as `fuzz_targets/<name>.rs`, `seeds/<name>/` and `make fuzz` know them.
pub const TARGETS: [&str; 5] = ["session_codec", "redirect", "path_normalizer", "config", "render_input"];
