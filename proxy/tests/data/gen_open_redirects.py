#!/usr/bin/env python3
"""Writes open_redirects.jsonl: open-redirect payloads for sidekey's redirect entry points.

Every payload must be refused (the proxy falls back to "/"), with the proxy configured with
`--whitelist-domain=.example.com --whitelist-domain=exact.org:8443`. `good.jsonl` beside it
holds targets that must still be accepted, so a validator that refuses everything fails.

Each line: {"class": ..., "payload": ...}. Run this script to regenerate; the test checks
the count and that every class is present.
"""
import json
import pathlib
from urllib.parse import quote

out = []


def add(cls, *payloads):
    for p in payloads:
        out.append({"class": cls, "payload": p})


EVIL = ["evil.com", "evil.com/", "evil.com/x?y=1", "EVIL.COM", "127.0.0.1", "[::1]", "2130706433", "0x7f000001"]

# CVE-2020-5233: "/\" and "\" prefixes a browser reads as another host.
for h in EVIL[:4]:
    add("CVE-2020-5233 backslash prefixes", f"/\\{h}", f"\\\\{h}", f"\\/{h}", f"/\\/{h}", f"\\/\\{h}", f"/\\\\{h}")

# Scheme-relative and extra slashes.
for h in EVIL:
    add("scheme-relative slashes", f"//{h}", f"///{h}", f"////{h}")

# CVE-2020-11053: whitespace (raw and encoded) between the slashes.
for ws in ["\t", " ", "\n", "\r", "\x0b", "\x0c", "%09", "%20", "%0a", "%0d", "%0b", "%0c", "%0D%0A", "%c2%a0", "%e3%80%80", "%e2%80%8b", "\u200b", "%e2%80%ae", "%c2%ad", "%ef%bb%bf", "  ", "%09%09"]:
    add("CVE-2020-11053 whitespace between slashes", f"/{ws}/evil.com", f"/{ws}\\evil.com")

# CVE-2020-4037: tabs and dots inside the leading slashes, and the dot-segment forms.
for mid in [".", "..", "%2e", "%2e%2e", ".%09", "%09.", "./", "../"]:
    add("CVE-2020-4037 dot and tab segments", f"/{mid}/evil.com", f"/{mid}\\evil.com")

# CVE-2021-21291: a whitelist entry ".example.com" must not match by suffix alone.
for host in [
    "badexample.com", "evilexample.com", "example.com.evil.com", "example.comevil.com", "evil.com/.example.com",
    "evil.com?.example.com", "evil.com#.example.com", "evil.com\\.example.com", "evil.com%2f.example.com",
    "evil.com%23.example.com", "evil.com%3f.example.com", "evil.com;.example.com", "xexample.com", "example.co",
    "examplecom", "app.example.com.evil.com", "exact.org", "exact.org:443", "sub.exact.org:8443",
]:
    for scheme in ["https://", "http://"]:
        add("CVE-2021-21291 suffix-matched whitelist", f"{scheme}{host}/")

# Scheme tricks.
add(
    "scheme tricks",
    "javascript:alert(1)", "JavaScript:alert(1)", "JAVASCRIPT:alert(1)", "javascript://example.com/%0aalert(1)",
    "java\tscript:alert(1)", "java%09script:alert(1)", "java%0ascript:alert(1)", " javascript:alert(1)",
    "%20javascript:alert(1)", "%6a%61%76%61%73%63%72%69%70%74:alert(1)", "\x01javascript:alert(1)",
    "data:text/html,<script>alert(1)</script>", "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "DATA:text/html,x", "vbscript:msgbox(1)", "file:///etc/passwd", "ftp://app.example.com/", "ws://app.example.com/",
    "wss://app.example.com/", "gopher://app.example.com/", "https:evil.com", "https:/evil.com", "http:evil.com",
    "https:\\\\evil.com", "https:\\/\\/evil.com", "http:/\\/evil.com", "https:app.example.com", "https:///evil.com",
    "https:////evil.com", "hTtPs:evil.com", "//https://evil.com", "app.example.com/",
    "evil.com", "example.com", "@evil.com", ":evil.com", "?//evil.com", "#//evil.com", "./evil.com",
)

# Userinfo: a whitelisted name before "@" is not the host.
for good in ["app.example.com", "example.com", "exact.org:8443", "app.example.com:443"]:
    for bad in ["evil.com", "evil.com/", "evil.com:443/"]:
        add("userinfo", f"https://{good}@{bad}", f"http://{good}@{bad}")
add(
    "userinfo",
    "https://user:pass@app.example.com/", "https://user@app.example.com/", "https://:@app.example.com/",
    "https://evil.com%40app.example.com/", "https://evil.com\\@app.example.com/", "https://evil.com%5C@app.example.com/",
    "https://app.example.com%40evil.com/", "https://app.example.com%2540evil.com/", "https://evil.com#@app.example.com/",
    "https://evil.com?@app.example.com/", "https://app.example.com&@evil.com/", "https://app.example.com%00@evil.com/",
)

# IDN and punycode look-alikes of example.com.
for host in [
    "exаmple.com", "examplе.com", "ехample.com", "ｅxample.com", "example．com", "example。com", "example｡com",
    "app.example.com。evil.com", "xn--exmple-cua.com", "xn--e1awd7f.com", "app.xn--exmple-cua.com", "example.com\u2024evil.com",
    "exam\u00adple.com", "exam\u200bple.com", "ⅇxample.com", "example.ｃｏｍ", "EXAMPLE.COM.evil.com", "app.example.c\u043em",
]:
    add("IDN and punycode look-alikes", f"https://{host}/", f"https://app.{host}/")

# Ports: the bare entry allows only the default port; exact.org only 8443.
for target in [
    "https://app.example.com:8443/", "https://app.example.com:80/", "http://app.example.com:443/", "https://app.example.com:0/",
    "https://app.example.com:99999/", "https://app.example.com:-1/", "https://app.example.com:443:evil.com/",
    "https://app.example.com:@evil.com/", "https://exact.org/", "https://exact.org:443/", "https://exact.org:8444/",
    "https://exact.org:08443evil/", "https://evil.com:8443/", "https://app.example.com:8443@evil.com/",
]:
    add("ports", target)

# Mixed case of the refused forms.
for target in ["//EvIl.CoM", "/\\EvIl.CoM", "HTTPS://EVIL.COM/", "HtTpS://BadExample.com/", "JaVaScRiPt:alert(1)", "HTTPS:EVIL.COM"]:
    add("mixed case", target)

# Double and triple percent-encoding of the refused prefixes.
for raw in ["//evil.com", "/\\evil.com", "/\t/evil.com", "\\\\evil.com", "https://evil.com/", "/%09/evil.com"]:
    once = quote(raw, safe="")
    twice = quote(once, safe="")
    thrice = quote(twice, safe="")
    add("double and triple encoding", once, twice, thrice)
    if raw.startswith("/"):
        add("double and triple encoding", "/" + quote(raw[1:], safe=""))
add(
    "double and triple encoding",
    "/%2F/evil.com", "/%252F/evil.com", "/%25252F/evil.com", "/%5Cevil.com", "/%255Cevil.com", "/%25255Cevil.com",
    "%2F%2Fevil.com", "%252F%252Fevil.com", "/%2f%2fevil.com", "/%252f%252fevil.com", "/%u002f/evil.com", "/%25u002f/evil.com", "/%C0%AFevil.com",
    "/%c0%ae%c0%ae/evil.com", "/%e0%80%af/evil.com",
)

# Backslashes anywhere a browser normalizes them to "/".
add(
    "backslashes",
    "\\evil.com", "\\\\\\evil.com", "/\\\\/evil.com", "https:\\evil.com", "https://app.example.com\\@evil.com/",
    "https://evil.com\\app.example.com/", "/app\\..\\..\\\\evil.com", "\\/\\/evil.com", "https://app.example.com\\.evil.com/",
)

# CR, LF, TAB and NUL anywhere: header splitting and parser disagreements.
for c, name in [("\r", "CR"), ("\n", "LF"), ("\t", "TAB"), ("\x00", "NUL"), ("%0d", "enc CR"), ("%0a", "enc LF"), ("%09", "enc TAB"), ("%00", "enc NUL")]:
    for base in ["/app", "/app/x?y=1", "https://app.example.com/x"]:
        positions = {0, 1, len(base) // 2, len(base)}
        for i in sorted(positions):
            add("CR/LF/TAB/NUL anywhere", base[:i] + c + base[i:])
    add("CR/LF/TAB/NUL anywhere", f"/app{c}Set-Cookie: x=1", f"/{c}/evil.com")

# Overlong and odd forms.
add("overlong", "/" + "a" * 5000, "https://app.example.com/" + "a" * 5000)

seen = set()
unique = []
for entry in out:
    if entry["payload"] not in seen:
        seen.add(entry["payload"])
        unique.append(entry)

here = pathlib.Path(__file__).parent
with open(here / "open_redirects.jsonl", "w") as f:
    for entry in unique:
        f.write(json.dumps(entry, ensure_ascii=False) + "\n")

good = [
    "/", "/app", "/app/x?y=1#frag", "/a/b%20c", "/search?q=a%2Fb", "/My%20Files/report.pdf", "/?rd=%2Fx",
    "https://example.com/", "https://app.example.com/x?y=1", "https://deep.app.example.com/", "HTTPS://APP.EXAMPLE.COM/x",
    "https://exact.org:8443/", "http://app.example.com/", "/search?q=100%25",
]
with open(here / "good_redirects.jsonl", "w") as f:
    for g in good:
        f.write(json.dumps({"payload": g}) + "\n")
print(f"{len(unique)} payloads, {len(good)} good targets")
