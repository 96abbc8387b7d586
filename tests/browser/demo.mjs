// The demo's journey in Debian's headless chromium, as a new user walks it: sign in as the
// wrong account, be refused by name, "sign in as someone else", see the app, sign out at the
// provider too, land on "You are signed out", and find the provider asking for a password
// again. Screenshots of every page go to <screenshot-dir> (look at them when pages change).
// Usage: node tests/browser/demo.mjs <proxy-url> <screenshot-dir>
// Prints a JSON result; exits non-zero on failure.
import fs from 'node:fs';
import path from 'node:path';
import { launch } from './chromium.mjs';

const [base, shots] = process.argv.slice(2);
fs.mkdirSync(shots, { recursive: true });
const { context, close } = await launch();
const steps = [];
let n = 0;
const page = await context.newPage();
async function shot(name) {
  n += 1;
  await page.screenshot({ path: path.join(shots, `${String(n).padStart(2, '0')}-${name}.png`), fullPage: true });
}
function expect(cond, what) {
  if (!cond) throw new Error(what);
  steps.push(what);
}
async function idpLogin(user, password) {
  await page.waitForSelector('#username');
  await shot(`idp-login-${user}`);
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForLoadState('load'), page.click('#submit')]);
  await page.waitForSelector('#allow');
  await Promise.all([page.waitForLoadState('load'), page.click('#allow')]);
}

try {
  const first = await page.goto(base);
  expect(first.status() === 403 && (await page.isVisible('#sign-in')), 'the app answers with the sign-in page');
  await shot('sign-in');
  await page.click('#sign-in');
  await idpLogin('bob', 'bob-password');
  await page.waitForSelector('#switch-account');
  expect((await page.textContent('#account')) === 'bob@other.org', 'the access-denied page names the refused account');
  expect((await page.textContent('#request-id')).trim().length > 0, 'the access-denied page shows a request id');
  await shot('access-denied');

  await page.click('#switch-account');
  // prompt=login: the provider asks again instead of reusing bob's session.
  await idpLogin('alice', 'alice-password');
  await page.waitForURL((u) => u.toString().startsWith(base));
  const app = await page.textContent('body');
  expect(app.includes('Hello, alice') && app.includes('alice@example.com'), 'after switching, the app shows alice and her identity headers');
  await shot('app');

  await Promise.all([page.waitForLoadState('load'), page.click('text=Sign out')]);
  await page.waitForSelector('#logout-yes');
  expect(true, 'sign-out continues to the provider (oidc_logout)');
  await shot('idp-sign-out');
  await Promise.all([page.waitForLoadState('load'), page.click('#logout-yes')]);
  await page.waitForSelector('#sign-in-again');
  expect(new URL(page.url()).pathname === '/oauth2/signed_out', 'the provider returns to the "You are signed out" page');
  expect((await page.textContent('h1')) === 'You are signed out', 'the page says so');
  await shot('signed-out');

  await page.click('#sign-in-again');
  await page.waitForSelector('#sign-in');
  await page.click('#sign-in');
  await page.waitForSelector('#username');
  expect(true, 'signing in again asks for a password: the provider session ended too');

  const missing = await page.goto(new URL('/oauth2/no-such-page', base).toString());
  expect(missing.status() === 404 && (await page.textContent('h1')) === 'Page not found', 'an unknown /oauth2/ path gets the branded 404');
  await shot('not-found');
  console.log(JSON.stringify({ ok: true, steps, screenshots: shots }));
} catch (err) {
  await shot('failure').catch(() => {});
  console.log(JSON.stringify({ ok: false, error: String(err), steps, url: page.url(), screenshots: shots }));
  process.exitCode = 1;
} finally {
  await close();
}
