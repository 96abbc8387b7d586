"""The h2c-capable upstream of proxy/tests/security_upgrades.rs, served by hypercorn.

Hypercorn accepts `Upgrade: h2c` (and HTTP/2 with prior knowledge) and WebSocket, as a
Python app server in production does. Every request is answered with what the app received:
its protocol, path and X-Forwarded-Email. Every request and WebSocket is also recorded;
`GET /__seen`, asked directly and never through the proxy, lists the records, so a test can
prove what did (and did not) reach the app. WebSockets echo what they receive.
"""

import json

SEEN = []


def describe(scope):
    headers = {k.decode("latin1").lower(): v.decode("latin1") for k, v in scope["headers"]}
    return {
        "type": scope["type"],
        "http_version": scope.get("http_version"),
        "method": scope.get("method", "GET"),
        "path": scope["path"],
        "x_forwarded_email": headers.get("x-forwarded-email"),
        "upgrade": headers.get("upgrade"),
    }


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        SEEN.append(describe(scope))
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            SEEN.append({"type": "websocket.message", "path": scope["path"], "text": message.get("text")})
            await send({"type": "websocket.send", "text": message.get("text") or ""})
    if scope["path"] == "/__seen":
        body = json.dumps(SEEN)
    else:
        record = describe(scope)
        SEEN.append(record)
        body = json.dumps(record)
    while (await receive()).get("more_body"):
        pass
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body.encode()})
