// Signs in through sidekey-proxy's sign-in page in Debian's headless chromium.
// Usage: node tests/browser/login.mjs <protected-url> <user> <password> <expected-text>
// Prints a JSON result (with the final page's HTTP status and text); exits non-zero on
// failure. With SIDEKEY_COOKIE_OUT=<file>, also writes the proxy's session cookies (named
// SIDEKEY_COOKIE_NAME, default _oauth2_proxy, and its chunks) as one Cookie header value,
// for load generators.
// The browser reaches only 127.0.0.1 and localhost, plus the hosts (names or IP addresses)
// in SIDEKEY_BROWSER_HOSTS (comma-separated; the e2e tests' IdP on the node's bridge and a
// Service's ClusterIP). SIDEKEY_BROWSER_IGNORE_CERTS=1 accepts any TLS certificate (an IdP
// with a test CA). SIDEKEY_EXPECT_STATUS=403 expects the final page to answer 403 (a
// refused user) instead of the protected page.
import fs from 'node:fs';
import { launch } from './chromium.mjs';

const [url, user, password, expected] = process.argv.slice(2);
const extraHosts = (process.env.SIDEKEY_BROWSER_HOSTS || '').split(',').map((h) => h.trim()).filter(Boolean);
const expectStatus = process.env.SIDEKEY_EXPECT_STATUS ? Number(process.env.SIDEKEY_EXPECT_STATUS) : null;
const { context, close } = await launch({ extraHosts, ignoreCerts: process.env.SIDEKEY_BROWSER_IGNORE_CERTS === '1' });
const steps = [];
try {
  const page = await context.newPage();
  // The status of the last document the main frame loaded (redirects included, so the
  // final one wins).
  let status = null;
  page.on('response', (r) => {
    if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) status = r.status();
  });
  const first = await page.goto(url);
  steps.push(`protected page answered ${first.status()}`);
  await page.click('#sign-in');
  await page.waitForSelector('#username');
  steps.push('IdP login form shown');
  await page.fill('#username', user);
  await page.fill('#password', password);
  await Promise.all([page.waitForLoadState('load'), page.click('#submit')]);
  await page.waitForSelector('#allow');
  steps.push('consent form shown');
  // Back at the protected page; a refusal is answered where the provider sends the user
  // back (the callback), on the protected origin.
  const landing = expectStatus !== null ? `${new URL(url).origin}/` : url;
  await Promise.all([page.waitForURL((u) => u.toString().startsWith(landing)), page.click('#allow')]);
  const text = await page.textContent('body');
  if (expectStatus !== null && status !== expectStatus) throw new Error(`the final page answered ${status}, not ${expectStatus}: ${text.slice(0, 500)}`);
  if (!text.includes(expected)) throw new Error(`upstream page lacks ${expected}: ${text.slice(0, 500)}`);
  steps.push(expectStatus !== null ? `final page answered ${status} and names the identity` : 'upstream page shows the identity');
  const jar = await context.cookies();
  const cookies = jar.map((c) => c.name);
  if (process.env.SIDEKEY_COOKIE_OUT) {
    const name = process.env.SIDEKEY_COOKIE_NAME || '_oauth2_proxy';
    const mine = jar.filter((c) => c.name === name || c.name.startsWith(`${name}_`));
    fs.writeFileSync(process.env.SIDEKEY_COOKIE_OUT, mine.map((c) => `${c.name}=${c.value}`).join('; '));
  }
  console.log(JSON.stringify({ ok: true, finalUrl: page.url(), status, steps, cookies, body: text.slice(0, 16000) }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err), steps }));
  process.exitCode = 1;
} finally {
  await close();
}
