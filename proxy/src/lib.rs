//! sidekey-proxy: an OpenID Connect authenticating reverse proxy and forward-auth endpoint
//! that reads oauth2-proxy's configuration unchanged.
//!
//! A browser without a session is sent through the provider's authorization-code flow
//! (state, nonce, PKCE); the result is an encrypted session cookie. Requests with a valid,
//! authorized session are forwarded to the upstream with identity headers; client-sent
//! copies of those headers are always stripped first.
//!
//! The modules, bottom-up (each uses only those above it in this list or in its own group):
//!
//! - Leaves: [`secret`] (values that never print) · [`jwt`] (unverified JWT payloads) ·
//!   [`worker`] (which server worker a thread is) · [`body`] (the response body type) ·
//!   [`pages`] (the HTML) · [`redirect`] (the one redirect validator) · [`routes`] (path
//!   normalization and skip/API rules) · [`forwarded`] (what a front end says the request
//!   was) · [`authz`] (who may sign in) · [`tls`] (the HTTPS listener's certificate) ·
//!   [`http_client`] (outbound HTTPS to the provider) · [`head_deadline`], [`idle_timeout`]
//!   (connection deadlines).
//! - Credentials and configuration: [`client_auth`] (client secret or JWT assertion) ·
//!   [`entra`] (Entra ID specifics) · [`config`] (the option table, loading, validation) ·
//!   [`logging`], [`metrics`].
//! - Sessions and the provider: [`session`] (codec, cookies, Redis store) · [`oidc`] (the
//!   relying party) · [`refresh`] (single-flight token refresh) · [`bearer`] (API clients'
//!   JWTs) · [`headers`] (identity headers) · [`upgrade`] (protocol switches) ·
//!   [`upstream`] (forwarding).
//! - The request path and the process: [`app`] (one request, end to end) · [`server`]
//!   (listeners, connections, shutdown) · [`launch`] ([`run`]: start-up and the workers).

#![forbid(unsafe_code)]

pub mod app;
pub mod authz;
pub mod bearer;
pub mod body;
pub mod client_auth;
pub mod config;
pub mod entra;
pub mod forwarded;
pub mod head_deadline;
pub mod headers;
pub mod http_client;
pub mod idle_timeout;
pub mod jwt;
pub mod launch;
pub mod logging;
pub mod metrics;
pub mod oidc;
pub mod pages;
pub mod redirect;
pub mod refresh;
pub mod routes;
pub mod secret;
pub mod server;
pub mod session;
pub mod tls;
pub mod upgrade;
pub mod upstream;
pub mod worker;

pub use launch::{PROVIDER_TIMEOUT, run};
