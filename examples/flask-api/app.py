"""Items API: the upstream that edge_guard protects in the demo and the tests.

This is a small Flask application written the way many internal APIs are
written in the wild, and it has the two problems the gateway exists to fix:

* CORS is wide open. ``flask_cors.CORS(app, origins="*")`` answers every
  preflight itself and sends ``Access-Control-Allow-Origin: *`` on every
  response, so any page on the web may read what this API returns.
* Bearer tokens are "read by hand". ``unverified_claims`` base64-decodes the
  JWT payload and never checks the signature, the issuer, the audience or
  the expiry. Anybody can mint a token that says ``"sub": "admin"``.

The application also trusts ``X-User-Id`` blindly. Behind edge_guard that is
fine, because the gateway deletes the header from every incoming request and
sets it only from verified claims. Reached directly, it is not.

For the tests, every request that reaches the application is recorded
(method, path, query string and the headers exactly as WSGI delivered them)
and can be read back from ``GET /_edgeguard/requests`` and cleared with
``POST /_edgeguard/reset``. That record is how a test proves that the
upstream never saw a request, or which identity headers it did see.

Usage::

    /usr/bin/python3 app.py [--host 127.0.0.1] [--port 0] [--exit-with-stdin]

Port 0 lets the kernel pick a free port. Once the socket is bound, exactly
one line ``LISTENING http://<host>:<port>`` is printed on stdout. With
``--exit-with-stdin`` the app exits when its stdin reaches end of file, so a
test harness that dies without cleaning up does not leave it running.
"""

import argparse
import base64
import binascii
import json
import os
import sys
import threading
import time

from flask import Flask, Response, jsonify, request, stream_with_context
from flask_cors import CORS
from werkzeug.datastructures import EnvironHeaders
from werkzeug.serving import make_server

RECORD_PREFIX = "/_edgeguard/"

ITEMS = [
    {"id": 1, "name": "keyboard", "price": 49},
    {"id": 2, "name": "monitor", "price": 189},
    {"id": 3, "name": "cable", "price": 7},
]

app = Flask(__name__)
# keep keys in the order written, so "user" comes first in every answer
app.json.sort_keys = False

# The problem in the wild: any origin, preflights answered by the
# extension, Access-Control-Allow-Origin: * on every response. Without
# send_wildcard, flask-cors would echo whatever Origin the request carried,
# which is just as open; the literal "*" makes the leak easy to spot.
CORS(app, origins="*", send_wildcard=True)


class RequestRecorder:
    """Keeps every request that reached the application, in order."""

    def __init__(self):
        self._lock = threading.Lock()
        self._requests = []

    def add(self, environ):
        # EnvironHeaders yields the header names the way WSGI exposes them:
        # rebuilt from HTTP_* keys, so "X-User_Id" and "X-User-Id" arrive
        # as one merged "X-User-Id" header. Tests need to see exactly that.
        headers = [[name, value] for name, value in EnvironHeaders(environ)]
        entry = {
            "method": environ.get("REQUEST_METHOD", ""),
            "path": environ.get("PATH_INFO", ""),
            "query": environ.get("QUERY_STRING", ""),
            "headers": headers,
        }
        with self._lock:
            self._requests.append(entry)

    def snapshot(self):
        with self._lock:
            return list(self._requests)

    def clear(self):
        with self._lock:
            self._requests.clear()


recorder = RequestRecorder()


class RecordingMiddleware:
    """Records requests before Flask routes them, so 404s, automatic
    OPTIONS answers and errors are recorded too."""

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        if not environ.get("PATH_INFO", "").startswith(RECORD_PREFIX):
            recorder.add(environ)
        return self.wsgi_app(environ, start_response)


app.wsgi_app = RecordingMiddleware(app.wsgi_app)


def unverified_claims():
    """Returns the JWT payload from the Authorization header, or {}.

    Deliberately naive, and the reason a gateway is needed: the payload is
    base64-decoded and trusted as is. The signature is never checked, so
    neither is who issued the token, for whom, or until when.
    """
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() != "bearer" or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except (binascii.Error, ValueError, RecursionError):
        # RecursionError: a payload nested deeper than the interpreter's
        # recursion limit ([[[...]]]) must read as "no claims", not a 500
        return {}
    return claims if isinstance(claims, dict) else {}


@app.get("/api/public/items")
def list_items():
    body = {}
    user = request.headers.get("X-User-Id")
    if user is not None:
        body["user"] = user
    sub = unverified_claims().get("sub")
    if sub is not None:
        # What the token claims, not what anybody verified.
        body["token_sub_unverified"] = sub
    body["items"] = ITEMS
    return jsonify(body)


@app.post("/api/public/items")
def create_item():
    data = request.get_json(silent=True)
    if data is None:
        return jsonify({"error": "expected a JSON body"}), 400
    return jsonify(data), 201


@app.get("/api/admin/stats")
def admin_stats():
    claims = unverified_claims()
    return jsonify(
        {
            "user": request.headers.get("X-User-Id"),
            "token_sub_unverified": claims.get("sub"),
            "token_roles_unverified": claims.get("roles"),
            "items": len(ITEMS),
            "revenue": sum(item["price"] for item in ITEMS),
        }
    )


@app.get("/api/public/stream")
def stream_items():
    chunks = request.args.get("chunks", default=5, type=int)
    delay = request.args.get("delay_ms", default=20, type=int) / 1000.0

    def generate():
        for i in range(chunks):
            yield json.dumps({"chunk": i, "of": chunks}) + "\n"
            time.sleep(delay)

    # flask-cors adds its headers before the first chunk is sent, so a
    # streamed response carries them just like a buffered one.
    return Response(
        stream_with_context(generate()), mimetype="application/x-ndjson"
    )


@app.get("/api/public/error")
def fail():
    return jsonify({"error": "database unavailable"}), 500


@app.get(RECORD_PREFIX + "requests")
def recorded_requests():
    return jsonify(recorder.snapshot())


@app.post(RECORD_PREFIX + "reset")
def reset_requests():
    recorder.clear()
    return "", 204


def exit_at_stdin_eof():
    # The parent holds the other end of stdin; when it is gone, so are we.
    sys.stdin.buffer.read()
    os._exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="exit when stdin is closed (the parent process is gone)",
    )
    args = parser.parse_args(argv)

    if args.exit_with_stdin:
        threading.Thread(target=exit_at_stdin_eof, daemon=True).start()

    server = make_server(args.host, args.port, app, threaded=True)
    host = args.host if ":" not in args.host else f"[{args.host}]"
    sys.stdout.write(f"LISTENING http://{host}:{server.port}\n")
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
