"""A mail hub that takes XOAUTH2 and OAUTHBEARER: aiosmtpd (an implementation
we did not write) with STARTTLS, AUTH only under TLS, and each bearer token
checked against the authorization server's RFC 7662 introspection endpoint
over HTTPS, as a resource server does. A refused token is answered as the
mechanisms say: a 334 challenge with the error JSON (Google's for XOAUTH2,
RFC 7628 §3.2.2 for OAUTHBEARER), then 535 5.7.8 after the client's reply;
with --no-error-json, 535 5.7.3 at once (Microsoft 365).
PLAIN/LOGIN work too, for a password entry (HUB_PASSWORD for --user).

usage: oauth_hub.py DIR --cert C --key K --introspect URL --ca CA [--user U]
  the hub's introspection client secret in HUB_INTROSPECT_SECRET.
Prints "hub listening on 127.0.0.1:PORT". Messages are DIR/*.json (as
sink.py); every AUTH attempt is a line of DIR/auth.jsonl.
"""
import argparse, base64, hashlib, json, os, socket, ssl, sys, threading, urllib.parse, urllib.request

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword, MISSING

sys.path.insert(0, os.path.dirname(__file__))
from sink import Sink  # noqa: E402


class Hub(Sink):
    def __init__(self, out, introspect, ca, secret):
        super().__init__(out)
        self.introspect_url, self.secret = introspect, secret
        self.ctx = ssl.create_default_context(cafile=ca)
        self.lock = threading.Lock()
        self.no_error_json = False

    def record(self, **event):
        with self.lock, open(os.path.join(self.out, "auth.jsonl"), "a") as f:
            f.write(json.dumps(event) + "\n")

    def active(self, token):
        body = urllib.parse.urlencode({"token": token, "token_type_hint": "access_token"}).encode()
        req = urllib.request.Request(self.introspect_url, data=body, method="POST")
        basic = base64.b64encode(f"hub:{self.secret}".encode()).decode()
        req.add_header("Authorization", "Basic " + basic)
        with urllib.request.urlopen(req, context=self.ctx, timeout=10) as r:
            return json.load(r).get("active") is True

    async def bearer(self, server, args, mech, parse, error_json):
        if len(args) < 2:
            blob = await server.challenge_auth("")
            if blob is MISSING:
                return AuthResult(success=False, handled=True)
        else:
            blob = base64.b64decode(args[1])
        user, token = parse(blob.decode())
        ok = bool(token) and self.active(token)
        self.record(mech=mech, user=user, ok=ok,
                    token_sha=hashlib.sha256((token or "").encode()).hexdigest()[:16])
        if ok:
            return AuthResult(success=True, auth_data=f"{mech}:{user}")
        if self.no_error_json:
            # Microsoft 365 answers a bad token with 535 at once, no JSON.
            return AuthResult(success=False, handled=False,
                              message="535 5.7.3 Authentication unsuccessful")
        reply = await server.challenge_auth(json.dumps(error_json))
        self.record(mech=mech, error_reply=None if reply is MISSING else reply.decode("latin-1"))
        if reply is MISSING:
            return AuthResult(success=False, handled=True)
        return AuthResult(success=False, handled=False)

    async def auth_XOAUTH2(self, server, args):
        def parse(msg):
            kv = dict(p.split("=", 1) for p in msg.split("\x01") if "=" in p)
            return kv.get("user"), kv.get("auth", "").removeprefix("Bearer ")
        return await self.bearer(server, args, "XOAUTH2", parse,
                                 {"status": "401", "schemes": "bearer", "scope": "https://mail.example/"})

    async def auth_OAUTHBEARER(self, server, args):
        def parse(msg):
            gs2, _, rest = msg.partition("\x01")
            user = gs2.split(",")[1].removeprefix("a=") if gs2.count(",") >= 2 else None
            kv = dict(p.split("=", 1) for p in rest.split("\x01") if "=" in p)
            return user, kv.get("auth", "").removeprefix("Bearer ")
        return await self.bearer(server, args, "OAUTHBEARER", parse, {"status": "invalid_token"})


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--introspect", required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--user")
    ap.add_argument("--only", help="offer only these bearer mechanisms (space-separated)")
    ap.add_argument("--no-error-json", action="store_true",
                    help="refuse a token with 535 5.7.3 at once, as Microsoft 365 does")
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    hub = Hub(a.out, a.introspect, a.ca, os.environ["HUB_INTROSPECT_SECRET"])
    hub.no_error_json = a.no_error_json
    if a.only:
        for m in ("XOAUTH2", "OAUTHBEARER"):
            if m not in a.only.split():
                delattr(Hub, "auth_" + m)
    password = os.environ.get("HUB_PASSWORD")

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and a.user is not None \
            and auth_data.login.decode() == a.user and auth_data.password.decode() == password
        hub.record(mech=mechanism, user=a.user, ok=ok)
        return AuthResult(success=ok, handled=False)

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(a.cert, a.key)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    c = Controller(hub, hostname="127.0.0.1", port=port, tls_context=tls,
                   authenticator=authenticator, auth_required=True, auth_require_tls=True)
    c.start()
    print(f"hub listening on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
