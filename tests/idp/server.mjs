// A real OpenID provider (the npm package oidc-provider) for sidekey's tests and demo.
//
// Usage: node tests/idp/server.mjs '<json config>'
// Config (all optional): { port, host, tls: {cert, key}, clients: [{client_id, client_secret, redirect_uris, ...}],
//   users: {id: {password, email, email_verified, groups, preferred_username, name}},
//   ttl: {IdToken, AccessToken, AuthorizationCode, RefreshToken} (seconds),
//   rotateRefreshToken: true to issue a new refresh token at every refresh,
//   entra: see ./entra.mjs — Entra ID-shaped tenants, federated credentials and Graph }
// Prints one JSON line {"issuer": "...", "port": N, "base": "..."} on stdout once it is listening.
// Login and consent are plain HTML forms, so both an HTTP client and a browser can drive them.
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import { execFileSync } from 'node:child_process';
import crypto from 'node:crypto';
import Provider from 'oidc-provider';
import { EntraFrontDoor } from './entra.mjs';

const config = JSON.parse(process.argv[2] || process.env.IDP_CONFIG || '{}');
const host = config.host || '127.0.0.1';

const DEFAULT_USERS = {
  alice: { password: 'alice-password', email: 'alice@example.com', email_verified: true, groups: ['admins', 'devs'], preferred_username: 'alice', name: 'Alice Example' },
  bob: { password: 'bob-password', email: 'bob@other.org', email_verified: true, groups: ['devs'], preferred_username: 'bob', name: 'Bob Other' },
  carol: { password: 'carol-password', email: 'carol@example.com', email_verified: false, groups: [], preferred_username: 'carol', name: 'Carol Unverified' },
  mallory: { password: 'mallory-password', email: 'mallory@evil.com@example.com', email_verified: true, groups: ['admins'], preferred_username: 'mallory', name: 'Mallory' },
};
const users = config.users || DEFAULT_USERS;
// The signing key comes from openssl when it is there: Node 20's generateKeyPairSync can
// deadlock later, in the garbage collector's destructor of its key-generation job (seen as an
// IdP that never printed its first line, its main thread parked in ~KeyGenJob).
function rsaKey() {
  try {
    const pem = execFileSync('openssl', ['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048'], { stdio: ['ignore', 'pipe', 'ignore'] });
    return crypto.createPrivateKey(pem);
  } catch {
    return crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  }
}
const privateKey = rsaKey();
const signingKey = { ...privateKey.export({ format: 'jwk' }), kid: crypto.randomUUID(), alg: 'RS256', use: 'sig' };

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const page = (title, body) => `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${esc(title)}</title></head><body><h1>${esc(title)}</h1>${body}</body></html>`;

function readForm(req) {
  return new Promise((resolve, reject) => {
    let data = '';
    req.setEncoding('utf8');
    req.on('data', (c) => { data += c; if (data.length > 1e5) req.destroy(); });
    req.on('end', () => resolve(Object.fromEntries(new URLSearchParams(data))));
    req.on('error', reject);
  });
}

// With `tls: {cert, key}` (PEM file paths) it serves https: a relying party that refuses
// plain http to anything but loopback (sidekey-proxy does) can then reach it on a bridge
// address, trusting the test CA that signed `cert`.
const server = config.tls
  ? https.createServer({ cert: fs.readFileSync(config.tls.cert), key: fs.readFileSync(config.tls.key) })
  : http.createServer();
await new Promise((resolve) => server.listen(config.port || 0, host, resolve));
const port = server.address().port;
const base = `${config.tls ? 'https' : 'http'}://${host}:${port}`;

// The claims a user's tokens carry. `tenant` is set for Entra-shaped tenants, whose tokens
// also carry tid/oid/upn, and — for a user with `overage` — Entra's groups-overage markers
// (`_claim_names`/`_claim_sources`) instead of a groups claim.
function claimsFor(id, u, tenant) {
  const c = { sub: id, email: u.email, email_verified: u.email_verified, groups: u.groups, preferred_username: u.preferred_username, name: u.name };
  if (tenant) {
    c.tid = tenant;
    c.oid = u.oid || crypto.createHash('sha256').update(id).digest('hex').replace(/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/, '$1-$2-$3-$4-$5');
    if (u.upn) c.upn = u.upn;
    if (u.overage) {
      delete c.groups;
      c._claim_names = { groups: 'src1' };
      c._claim_sources = { src1: { endpoint: `https://graph.windows.net/${tenant}/users/${c.oid}/getMemberObjects` } };
    }
  }
  for (const [k, v] of Object.entries(c)) if (v === undefined) delete c[k];
  return c;
}

// `prefix` is the path the provider is mounted at ('' or '/<tenant>'); `routes` its endpoints.
function makeProvider(issuer, { prefix = '', tenant, routes, clients = config.clients || [] } = {}) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [signingKey] },
    cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
    findAccount: (ctx, id) => {
      const u = users[id];
      if (!u) return undefined;
      return { accountId: id, claims: () => claimsFor(id, u, tenant) };
    },
    claims: {
      openid: ['sub', 'tid', 'oid', 'upn', '_claim_names', '_claim_sources'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'groups'],
    },
    conformIdTokenClaims: false,
    clockTolerance: 0,
    features: {
      devInteractions: { enabled: false },
      // Sign-out confirmation as a plain form with a stable id, so a browser test can click it.
      rpInitiatedLogout: {
        enabled: true,
        logoutSource: (ctx, form) => {
          ctx.body = page('Sign out', `${form}<p>Sign out of the test identity provider?</p><button id="logout-yes" type="submit" form="op.logoutForm" name="logout" value="yes">Yes, sign me out</button>`);
        },
      },
    },
    pkce: { required: () => false },
    scopes: ['openid', 'email', 'profile', 'offline_access'],
    ttl: {
      AccessToken: config.ttl?.AccessToken ?? 3600,
      AuthorizationCode: config.ttl?.AuthorizationCode ?? 60,
      IdToken: config.ttl?.IdToken ?? 3600,
      RefreshToken: config.ttl?.RefreshToken ?? 86400,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
    },
    interactions: { url: (ctx, interaction) => `${prefix}/interaction/${interaction.uid}` },
    // Every refresh spends its refresh token: a second use of an old one is refused (and
    // oidc-provider then revokes the grant), as with strict providers.
    ...(config.rotateRefreshToken ? { rotateRefreshToken: () => true } : {}),
    ...(routes ? { routes } : {}),
    renderError: (ctx, out) => {
      ctx.type = 'html';
      ctx.body = page('Error', `<pre>${esc(JSON.stringify(out))}</pre>`);
    },
  });
  provider.on('server_error', (ctx, err) => console.error('idp server_error', err));
  return provider;
}

async function interaction(provider, req, res) {
  try {
    const url = new URL(req.url, base);
    const parts = url.pathname.split('/').filter(Boolean);
    const prefix = url.pathname.slice(0, url.pathname.indexOf('/interaction/')); // '' or /<tenant>
    parts.splice(0, parts.indexOf('interaction')); // interaction, uid, [action]
    const details = await provider.interactionDetails(req, res);
    const { uid, prompt, params } = details;
    if (req.method === 'GET') {
      res.setHeader('content-type', 'text/html; charset=utf-8');
      if (prompt.name === 'login') {
        res.end(page('Sign in to the test IdP', `<p>Client: ${esc(params.client_id)}</p>
<form method="post" action="${prefix}/interaction/${uid}/login" id="login">
<label>User <input name="login" id="username" autofocus></label>
<label>Password <input name="password" id="password" type="password"></label>
<button type="submit" id="submit">Sign in</button></form>`));
      } else {
        res.end(page('Authorize', `<p>${esc(params.client_id)} asks for: ${esc(params.scope)}</p>
<form method="post" action="${prefix}/interaction/${uid}/confirm" id="consent"><button type="submit" id="allow">Allow</button></form>`));
      }
      return;
    }
    const form = await readForm(req);
    if (parts[2] === 'login') {
      const u = users[form.login];
      if (!u || u.password !== form.password) {
        res.statusCode = 200;
        res.setHeader('content-type', 'text/html; charset=utf-8');
        res.end(page('Sign in to the test IdP', `<p id="error">Invalid user or password</p>
<form method="post" action="${prefix}/interaction/${uid}/login"><input name="login"><input name="password" type="password"><button type="submit">Sign in</button></form>`));
        return;
      }
      await provider.interactionFinished(req, res, { login: { accountId: form.login } }, { mergeWithLastSubmission: false });
      return;
    }
    if (parts[2] === 'confirm') {
      const { session: { accountId }, grantId } = details;
      const grant = grantId ? await provider.Grant.find(grantId) : new provider.Grant({ accountId, clientId: params.client_id });
      const missing = prompt.details;
      if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
      if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
      if (missing.missingResourceScopes) {
        for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) grant.addResourceScope(indicator, scopes.join(' '));
      }
      await provider.interactionFinished(req, res, { consent: { grantId: await grant.save() } }, { mergeWithLastSubmission: true });
      return;
    }
    res.statusCode = 404;
    res.end('not found');
  } catch (err) {
    res.statusCode = 400;
    res.setHeader('content-type', 'text/plain');
    res.end(`interaction failed: ${err.message}`);
  }
}

let issuer;
if (config.entra) {
  // Entra-shaped tenants; see entra.mjs for what is emulated and why.
  const door = new EntraFrontDoor({ base, config: config.entra, users, clients: config.clients || [], makeProvider, interaction });
  issuer = door.issuer;
  server.on('request', (req, res) => door.handle(req, res));
} else {
  issuer = config.issuer || base;
  const provider = makeProvider(issuer);
  const callback = provider.callback();
  // Token endpoint outcomes by grant type, for assertions: GET /_test/stats.
  const stats = { grants: {}, grant_errors: {} };
  const count = (bucket, ctx) => {
    const type = ctx.oidc?.params?.grant_type || 'unknown';
    bucket[type] = (bucket[type] || 0) + 1;
  };
  provider.on('grant.success', (ctx) => count(stats.grants, ctx));
  provider.on('grant.error', (ctx) => count(stats.grant_errors, ctx));
  server.on('request', (req, res) => {
    if (req.url === '/_test/stats') {
      res.setHeader('content-type', 'application/json');
      return res.end(JSON.stringify(stats));
    }
    if (req.url.startsWith('/interaction/')) return interaction(provider, req, res);
    return callback(req, res);
  });
}

process.stdout.write(JSON.stringify({ issuer, port, base }) + '\n');
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
