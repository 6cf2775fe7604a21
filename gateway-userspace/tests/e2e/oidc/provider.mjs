// The OIDC provider of the oidc e2e tests: npm's oauth2-mock-server (a real authorization server:
// discovery, JWKS, authorization code with PKCE S256 checked at the token endpoint, refresh,
// end_session), started as a library so a test can steer it:
// - GET /authorize without `username` answers a login form (the headless browser fills it);
//   with `username` the mock issues the code, and that user becomes the tokens' `sub`;
// - the token endpoint requires the configured client id and secret (HTTP Basic or form);
// - access tokens carry `aud` = "gateway-api" and live `access_ttl` seconds;
// - POST /test/control {"access_ttl": n, "fail_refresh": bool}; GET /test/stats.
//
// oauth2-mock-server 8.2 (pinned by xtask/npm/package-lock.json) supports the machine's node 20.
//
// Usage: node provider.mjs <port> <oauth2-mock-server module dir> <client id> <client secret> [user]
// With [user], /authorize logs that user in without a form (`cargo xtask bench auth`).

import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const [port, moduleDir, clientId, clientSecret, autoUser] = process.argv.slice(2);
const { OAuth2Issuer, OAuth2Service } = await import(pathToFileURL(path.join(moduleDir, 'dist', 'index.mjs')).href);

const control = { access_ttl: 3600, fail_refresh: false };
const stats = { authorize: 0, token_requests: 0, token: {}, token_refused: 0, bad_client: 0, pkce_checked: 0, end_session: 0 };
const codeUser = new Map();
const refreshUser = new Map();

const issuer = new OAuth2Issuer();
issuer.url = `http://127.0.0.1:${port}`;
await issuer.keys.generate('RS256');
const service = new OAuth2Service(issuer);

function userFor(req) {
  const body = req.body ?? {};
  if (body.grant_type === 'authorization_code') return codeUser.get(body.code);
  if (body.grant_type === 'refresh_token') return refreshUser.get(body.refresh_token);
  return undefined;
}

service.on('beforeAuthorizeRedirect', (redirect, req) => {
  const code = redirect.url.searchParams.get('code');
  if (code && req.query.username) codeUser.set(code, String(req.query.username));
});

service.on('beforeTokenSigning', (token, req) => {
  const user = userFor(req);
  if (user) token.payload.sub = user;
  if (!('aud' in token.payload)) {
    // An access token: for the API behind the gateway, with the lifetime the test set.
    token.payload.aud = 'gateway-api';
    token.payload.exp = token.payload.iat + control.access_ttl;
  }
});

service.on('beforeResponse', (response, req) => {
  const body = req.body ?? {};
  if (!clientOk(req, body)) {
    stats.bad_client += 1;
    response.statusCode = 401;
    response.body = { error: 'invalid_client' };
    return;
  }
  stats.token[body.grant_type] = (stats.token[body.grant_type] ?? 0) + 1;
  if (body.grant_type === 'refresh_token' && (control.fail_refresh || !refreshUser.has(body.refresh_token))) {
    response.statusCode = 400;
    response.body = { error: 'invalid_grant', error_description: 'refresh token refused' };
    return;
  }
  if (body.grant_type === 'authorization_code' && 'code_verifier' in body) stats.pkce_checked += 1;
  const user = userFor(req);
  if (response.body.refresh_token && user) refreshUser.set(response.body.refresh_token, user);
  if (body.grant_type === 'refresh_token') refreshUser.delete(body.refresh_token); // rotation
  response.body.expires_in = control.access_ttl;
});

function clientOk(req, form) {
  // RFC 6749 2.3.1: HTTP Basic (form-encoded parts) or the form's client_id and client_secret.
  const auth = req.headers.authorization ?? '';
  if (auth.startsWith('Basic ')) {
    const [id, secret] = Buffer.from(auth.slice(6), 'base64').toString().split(':').map(decodeURIComponent);
    return id === clientId && secret === clientSecret;
  }
  return form.client_id === clientId && form.client_secret === clientSecret;
}

function loginForm(url, res) {
  const hidden = [...url.searchParams]
    .map(([k, v]) => `<input type="hidden" name="${escape(k)}" value="${escape(v)}">`)
    .join('');
  res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
  res.end(`<!doctype html><title>Log in</title><form method="get" action="/authorize">${hidden}
<label>User <input id="username" name="username"></label><button id="login" type="submit">Log in</button></form>`);
}

function escape(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

const server = http.createServer((req, res) => {
  const url = new URL(req.url, issuer.url);
  if (url.pathname === '/test/stats') {
    res.writeHead(200, { 'content-type': 'application/json' });
    return res.end(JSON.stringify(stats));
  }
  if (url.pathname === '/test/control' && req.method === 'POST') {
    let data = '';
    req.on('data', (c) => (data += c));
    req.on('end', () => {
      Object.assign(control, JSON.parse(data || '{}'));
      res.writeHead(204);
      res.end();
    });
    return;
  }
  if (url.pathname === '/authorize') {
    if (!url.searchParams.get('username')) {
      if (!autoUser) return loginForm(url, res);
      url.searchParams.set('username', autoUser);
      req.url = url.pathname + url.search;
    }
    stats.authorize += 1;
  }
  if (url.pathname === '/endsession') stats.end_session += 1;
  if (url.pathname === '/token') {
    stats.token_requests += 1;
    res.on('finish', () => {
      if (res.statusCode >= 400) stats.token_refused += 1;
    });
  }
  service.requestHandler(req, res);
});
server.listen(Number(port), '127.0.0.1', () => console.log(`oidc provider listening on ${issuer.url}`));
