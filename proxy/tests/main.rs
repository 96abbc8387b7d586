//! The proxy against real peers: one test target, so the shared peers in `support/` (the
//! OpenID provider, the echo upstream, Redis, Tomcat, the proxy on a free port) compile and
//! link once. `cargo test -p sidekey-proxy --test proxy login::` runs one area.
//!
//! - [`login`], [`entra`], [`bearer`], [`browser`]: signing in, Entra ID, bearer tokens,
//!   Chromium.
//! - [`forward_auth`], [`front_ends`]: `/oauth2/auth` behind nginx and Caddy.
//! - [`proxying`], [`grpc`], [`tls`], [`access_routes`]: the reverse proxy itself.
//! - [`redis_sessions`]: the Redis session store.
//! - [`security_headers`], [`security_redirects`], [`security_sessions`],
//!   [`security_tokens`], [`security_upgrades`]: the attack classes of docs/security.md.
//! - [`faults`]: peers that fail, stall or vanish.
//! - [`binary`]: the built `sidekey-proxy` executable: flags, exit codes, signals.

mod support;

mod access_routes;
mod bearer;
mod binary;
mod browser;
mod entra;
mod faults;
mod forward_auth;
mod front_ends;
mod grpc;
mod login;
mod proxying;
mod redis_sessions;
mod security_headers;
mod security_redirects;
mod security_sessions;
mod security_tokens;
mod security_upgrades;
mod tls;
