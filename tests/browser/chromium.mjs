// Debian's headless chromium for the browser tests, with a fresh profile per run
// (launchPersistentContext passes it as --user-data-dir). Name resolution is cut to
// loopback and the hosts asked for: no background traffic, no other lookups.
// `close()` ends the browser and removes the profile.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export async function launch({ extraHosts = [], ignoreCerts = false } = {}) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'sidekey-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
      '--disable-sync', '--disable-extensions', '--no-first-run', '--disable-quic',
      `--host-resolver-rules=MAP * ~NOTFOUND, ${['127.0.0.1', 'localhost', ...extraHosts].map((h) => `EXCLUDE ${h}`).join(', ')}`,
      ...(ignoreCerts ? ['--ignore-certificate-errors'] : []),
    ],
  });
  const close = async () => {
    await context.close();
    fs.rmSync(profile, { recursive: true, force: true });
  };
  return { context, close };
}
