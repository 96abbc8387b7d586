// The demo's protected app: a page that shows the identity headers sidekey-proxy sends it.
// Usage: node tests/demo/upstream.mjs <port>
import http from 'node:http';

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
const port = Number(process.argv[2] || 0);
const server = http.createServer((req, res) => {
  const h = req.headers;
  const rows = Object.keys(h)
    .filter((k) => k.startsWith('x-forwarded-') || k === 'authorization')
    .sort()
    .map((k) => `<tr><th>${esc(k)}</th><td><code>${esc(k.includes('token') || k === 'authorization' ? h[k].slice(0, 24) + '…' : h[k])}</code></td></tr>`)
    .join('');
  res.setHeader('content-type', 'text/html; charset=utf-8');
  res.end(`<!DOCTYPE html><html><head><meta charset="utf-8"><title>Demo app</title>
<style>body{font-family:system-ui,sans-serif;margin:3rem;color:#1d2330}th{text-align:left;padding:.3rem 1rem .3rem 0}code{background:#f0f1f4;padding:.1rem .3rem}</style></head>
<body><h1>Hello, ${esc(h['x-forwarded-preferred-username'] || h['x-forwarded-user'] || 'stranger')}!</h1>
<p>This page is the demo app behind sidekey-proxy. It never saw a password or a token it did not ask for; these are the identity headers it received for <code>${esc(req.url)}</code>:</p>
<table>${rows}</table><p><a href="/oauth2/sign_out">Sign out</a></p></body></html>`);
});
server.listen(port, '127.0.0.1', () => process.stdout.write(JSON.stringify({ port: server.address().port }) + '\n'));
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
