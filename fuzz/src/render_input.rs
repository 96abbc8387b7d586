//! `sidekey-controller render` input: any YAML gives a rendering or an error naming the
//! file, never a panic.

use sidekey_controller::offline::{Input, render, to_yaml};
use sidekey_controller::render::{RenderOptions, SidecarMode};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let mut input = Input::read(&[]).expect("no files to read");
    if input.add_text("fuzz.yaml", text).is_err() {
        return;
    }
    let opts = RenderOptions {
        proxy_image: "ghcr.io/sidekey-dev/sidekey-proxy:fuzz".into(),
        mode: SidecarMode::Native,
        service_account_issuer: None,
    };
    if let Ok(rendered) = render(&input, &opts) {
        let _ = to_yaml(&rendered);
    }
}
