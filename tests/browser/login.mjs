// Signs in through sidekey-proxy's sign-in page in Debian's headless chromium.
// Usage: node tests/browser/login.mjs <protected-url> <user> <password> <expected-text>
// Prints a JSON result; exits non-zero on failure. With SIDEKEY_COOKIE_OUT=<file>, also
// writes the proxy's session cookies (named SIDEKEY_COOKIE_NAME, default _oauth2_proxy, and
// its chunks) as one Cookie header value, for load generators.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [url, user, password, expected] = process.argv.slice(2);
const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sidekey-chromium-'));
// A fresh profile per run (launchPersistentContext passes it as --user-data-dir).
const context = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  // Loopback only: no background traffic, no lookups beyond 127.0.0.1 and localhost.
  args: [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
    '--disable-sync', '--disable-extensions', '--no-first-run', '--disable-quic',
    '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost',
  ],
});
const steps = [];
try {
  const page = await context.newPage();
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
  await Promise.all([page.waitForURL((u) => u.toString().startsWith(url)), page.click('#allow')]);
  const text = await page.textContent('body');
  if (!text.includes(expected)) throw new Error(`upstream page lacks ${expected}: ${text.slice(0, 500)}`);
  steps.push('upstream page shows the identity');
  const jar = await context.cookies();
  const cookies = jar.map((c) => c.name);
  if (process.env.SIDEKEY_COOKIE_OUT) {
    const name = process.env.SIDEKEY_COOKIE_NAME || '_oauth2_proxy';
    const mine = jar.filter((c) => c.name === name || c.name.startsWith(`${name}_`));
    fs.writeFileSync(process.env.SIDEKEY_COOKIE_OUT, mine.map((c) => `${c.name}=${c.value}`).join('; '));
  }
  console.log(JSON.stringify({ ok: true, finalUrl: page.url(), steps, cookies }));
} catch (err) {
  console.log(JSON.stringify({ ok: false, error: String(err), steps }));
  process.exitCode = 1;
} finally {
  await context.close();
  fs.rmSync(profile, { recursive: true, force: true });
}
