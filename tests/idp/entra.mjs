// Microsoft Entra ID, as far as sidekey's tests need it — EMULATED where Entra itself must
// be, real everywhere else.
//
// Real: every tenant is a real oidc-provider instance (authorization, login, consent, code and
// refresh grants, ID tokens, JWKS), mounted on Entra's paths:
//   /<tenant>/v2.0/.well-known/openid-configuration
//   /<tenant>/oauth2/v2.0/authorize | token | logout      /<tenant>/discovery/v2.0/keys
// `common` and `organizations` serve Entra's multi-tenant discovery document (issuer
// `…/{tenantid}/v2.0`) and route sign-ins to the `home` tenant.
//
// Emulated (Entra cannot be reached from a test machine):
//   1. The token endpoint's federated-credential check, as Microsoft documents it for workload
//      identity federation: a `client_assertion` whose `iss` is not the client id is a
//      federated token. Its signature is verified against the JWKS of the issuer named in a
//      federated identity credential registered for the client (fetched from that issuer's
//      discovery document, like Entra does for a cluster's OIDC issuer), then `iss`, `sub`,
//      `aud` and `exp` are matched. Failures answer with Entra's AADSTS error codes. On success
//      the request is handed to the real provider with the client's internal credential.
//   2. Microsoft Graph `GET /v1.0/me/transitiveMemberOf/microsoft.graph.group`, paged with
//      `@odata.nextLink`, authorized by an access token the real provider issued.
//   `GET /_test/stats` reports what the emulation saw, for assertions.
//
// Config: { tenants: [tid...], home: tid, federated: [{client_id, issuer, subject, audience}],
//           graphPageSize: 100 }
// Users may carry: oid, upn, overage (Entra's groups-overage markers instead of `groups`),
//   graphGroups: [ids] or graphGroupCount: N, graphError: HTTP status Graph answers with.
import crypto from 'node:crypto';
import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';

const JWT_BEARER = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';
const ROUTES = {
  authorization: '/oauth2/v2.0/authorize',
  token: '/oauth2/v2.0/token',
  jwks: '/discovery/v2.0/keys',
  end_session: '/oauth2/v2.0/logout',
  userinfo: '/oidc/userinfo',
};

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => { size += c.length; if (size > 56 * 1024) req.destroy(); else chunks.push(c); });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(res, status, body) {
  res.statusCode = status;
  res.setHeader('content-type', 'application/json; charset=utf-8');
  res.end(JSON.stringify(body));
}

// The shape of Entra's token endpoint errors.
function aadsts(res, status, error, code, message) {
  const traceId = crypto.randomUUID();
  json(res, status, {
    error,
    error_description: `AADSTS${code}: ${message} Trace ID: ${traceId} Correlation ID: ${crypto.randomUUID()} Timestamp: ${new Date().toISOString().replace('T', ' ').slice(0, 19)}Z`,
    error_codes: [code],
    timestamp: new Date().toISOString(),
    trace_id: traceId,
    error_uri: `https://login.microsoftonline.com/error?code=${code}`,
  });
}

export class EntraFrontDoor {
  constructor({ base, config, users, clients, makeProvider, interaction }) {
    this.base = base;
    this.config = config;
    this.users = users;
    this.interaction = interaction;
    this.tenants = config.tenants || ['11111111-1111-1111-1111-111111111111'];
    this.home = config.home || this.tenants[0];
    this.federated = config.federated || [];
    this.pageSize = config.graphPageSize || 100;
    this.jwks = new Map();
    this.stats = { token: [], graph: 0 };
    // Each client gets an internal secret the proxy never sees: only a verified federated
    // assertion (or the client's own credential, if the test configured one) unlocks it.
    this.clients = clients.map((c) => ({
      token_endpoint_auth_method: 'client_secret_post',
      ...c,
      client_secret: c.client_secret || crypto.randomBytes(24).toString('hex'),
    }));
    this.providers = new Map();
    for (const tenant of this.tenants) {
      const provider = makeProvider(`${base}/${tenant}/v2.0`, { prefix: `/${tenant}`, tenant, routes: ROUTES, clients: this.clients });
      this.providers.set(tenant, { provider, callback: provider.callback() });
    }
    this.issuer = `${base}/${this.tenants[0]}/v2.0`;
  }

  async handle(req, res) {
    try {
      const url = new URL(req.url, this.base);
      if (url.pathname === '/_test/stats') return json(res, 200, this.stats);
      if (url.pathname.startsWith('/v1.0/')) return await this.graph(req, res, url);
      const [, segment, ...rest] = url.pathname.split('/');
      const multi = segment === 'common' || segment === 'organizations';
      const tenant = multi ? this.home : segment;
      const target = this.providers.get(tenant);
      if (!target) return aadsts(res, 400, 'invalid_tenant', 90002, `Tenant '${segment}' not found.`);
      let path = `/${rest.join('/')}`;
      if (path === '/v2.0/.well-known/openid-configuration') {
        if (multi) return json(res, 200, this.multiTenantDiscovery(segment));
        path = '/.well-known/openid-configuration';
      }
      if (path.startsWith('/interaction/')) return this.interaction(target.provider, req, res);
      if (req.method === 'POST' && path === ROUTES.token) {
        const params = Object.fromEntries(new URLSearchParams(await readBody(req)));
        if (!(await this.checkClientCredential(params, tenant, res))) return undefined;
        req.body = params; // oidc-provider reads an already-parsed body from req.body
      }
      req.originalUrl = `/${tenant}${path}${url.search}`;
      req.url = `${path}${url.search}`;
      return target.callback(req, res);
    } catch (err) {
      console.error('entra emulation error', err);
      return json(res, 500, { error: 'server_error', error_description: String(err.message || err) });
    }
  }

  multiTenantDiscovery(segment) {
    const at = (p) => `${this.base}/${segment}${p}`;
    return {
      issuer: `${this.base}/{tenantid}/v2.0`,
      authorization_endpoint: at(ROUTES.authorization),
      token_endpoint: at(ROUTES.token),
      jwks_uri: at(ROUTES.jwks),
      end_session_endpoint: at(ROUTES.end_session),
      response_types_supported: ['code', 'id_token', 'code id_token', 'id_token token'],
      subject_types_supported: ['pairwise'],
      id_token_signing_alg_values_supported: ['RS256'],
      token_endpoint_auth_methods_supported: ['client_secret_post', 'private_key_jwt', 'client_secret_basic'],
      scopes_supported: ['openid', 'profile', 'email', 'offline_access'],
      claims_supported: ['sub', 'iss', 'aud', 'exp', 'iat', 'nonce', 'tid', 'oid', 'preferred_username', 'email', 'name'],
      tenant_region_scope: null,
    };
  }

  // Entra's federated identity credential check. Returns true when the request may go on
  // to the real provider (with the body rewritten to the client's internal credential).
  async checkClientCredential(params, tenant, res) {
    const client = this.clients.find((c) => c.client_id === params.client_id);
    if (!client) {
      aadsts(res, 400, 'unauthorized_client', 700016, `Application with identifier '${params.client_id}' was not found in the directory '${tenant}'.`);
      return false;
    }
    const record = { grant_type: params.grant_type, assertion: null };
    this.stats.token.push(record);
    if (params.client_assertion_type !== JWT_BEARER) {
      if (!params.client_secret) {
        aadsts(res, 401, 'invalid_client', 7000218, "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.");
        return false;
      }
      return true; // a client secret: the real provider checks it
    }
    let claims;
    try {
      claims = decodeJwt(params.client_assertion || '');
    } catch {
      aadsts(res, 400, 'invalid_request', 50027, 'JWT token is invalid or is malformed.');
      return false;
    }
    record.assertion = { iss: claims.iss, sub: claims.sub, jti: claims.jti };
    if (claims.iss === client.client_id) return true; // private_key_jwt: the real provider verifies it
    const credentials = this.federated.filter((f) => f.client_id === client.client_id && f.issuer === claims.iss);
    if (credentials.length === 0) {
      aadsts(res, 400, 'invalid_request', 700211, `No matching federated identity record found for presented assertion issuer '${claims.iss}'. Please note that the matching is done using a case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion.`);
      return false;
    }
    try {
      await jwtVerify(params.client_assertion, await this.issuerKeys(claims.iss), { algorithms: ['RS256', 'ES256'], clockTolerance: 0 });
    } catch (err) {
      if (err.code === 'ERR_JWT_EXPIRED' || err.code === 'ERR_JWT_CLAIM_VALIDATION_FAILED') {
        const when = (s) => (s ? new Date(s * 1000).toISOString().replace('T', ' ').slice(0, 19) : 'unknown');
        aadsts(res, 400, 'invalid_client', 700024, `Client assertion is not within its valid time range. Current time: ${when(Date.now() / 1000)}, assertion valid from ${when(claims.nbf || claims.iat)}, expiry time of assertion ${when(claims.exp)}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .`);
      } else {
        aadsts(res, 401, 'invalid_client', 700027, `Client assertion failed signature validation. (${err.code || err.message})`);
      }
      return false;
    }
    if (!credentials.some((f) => f.subject === claims.sub)) {
      aadsts(res, 400, 'invalid_client', 700213, `No matching federated identity record found for presented assertion subject '${claims.sub}'. Please check your federated identity credential Subject, Audience and Issuer against the presented assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation`);
      return false;
    }
    const auds = [].concat(claims.aud || []);
    if (!credentials.some((f) => f.subject === claims.sub && auds.includes(f.audience || 'api://AzureADTokenExchange'))) {
      aadsts(res, 400, 'invalid_client', 700212, `No matching federated identity record found for presented assertion audience '${auds.join(',')}'. Please note that the matching is done using a case-sensitive comparison. Check your federated identity credential Subject, Audience and Issuer against the presented assertion.`);
      return false;
    }
    delete params.client_assertion;
    delete params.client_assertion_type;
    params.client_secret = client.client_secret;
    return true;
  }

  async issuerKeys(issuer) {
    if (!this.jwks.has(issuer)) {
      const doc = await (await fetch(`${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`)).json();
      this.jwks.set(issuer, createRemoteJWKSet(new URL(doc.jwks_uri)));
    }
    return this.jwks.get(issuer);
  }

  // Microsoft Graph: the signed-in user's groups (ids only), paged.
  async graph(req, res, url) {
    this.stats.graph += 1;
    const graphError = (status, code, message) => json(res, status, { error: { code, message } });
    if (req.method !== 'GET' || url.pathname !== '/v1.0/me/transitiveMemberOf/microsoft.graph.group') {
      return graphError(404, 'Request_ResourceNotFound', `Resource '${url.pathname}' does not exist.`);
    }
    const token = (req.headers.authorization || '').replace(/^Bearer /, '');
    let accountId;
    for (const { provider } of this.providers.values()) {
      const at = token && (await provider.AccessToken.find(token));
      if (at && !at.isExpired) accountId = at.accountId;
    }
    const user = accountId && this.users[accountId];
    if (!user) return graphError(401, 'InvalidAuthenticationToken', 'Access token is empty, expired or invalid.');
    if (user.graphError) return graphError(user.graphError, 'serviceNotAvailable', 'Graph is unavailable (emulated failure).');
    const ids = user.graphGroups
      || Array.from({ length: user.graphGroupCount || 0 }, (_, i) => `00000000-0000-4000-8000-${String(i).padStart(12, '0')}`);
    const top = Math.min(Number(url.searchParams.get('$top')) || this.pageSize, this.pageSize);
    const skip = Number(url.searchParams.get('$skiptoken')) || 0;
    const page = ids.slice(skip, skip + top).map((id) => ({ '@odata.type': '#microsoft.graph.group', id }));
    const body = { '@odata.context': `${this.base}/v1.0/$metadata#directoryObjects(id)`, value: page };
    if (skip + top < ids.length) {
      const next = new URL(url);
      next.searchParams.set('$skiptoken', String(skip + top));
      body['@odata.nextLink'] = next.href;
    }
    return json(res, 200, body);
  }
}
