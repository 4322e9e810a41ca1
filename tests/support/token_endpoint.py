"""An OAuth2 authorization server for the end-to-end tests: Authlib's
AuthorizationServer (an implementation we did not write) in a small Flask
app over HTTPS on loopback, with the client credentials and refresh token
grants (refresh tokens rotate: each use issues a new one and revokes the
old) and RFC 7662 introspection for the hub.

usage: token_endpoint.py --port P --cert C --key K --expires-in N
  clients from the environment: OAUTH_CLIENTS = JSON list of
  {"id", "secret_env", "auth_method", "grants"}; secrets in the named variables.
Prints "token endpoint listening on 127.0.0.1:PORT" once ready.

Test-only routes (loopback): GET /_test/state (issuances, every token issued,
so a test can grep logs and disks for them), POST /_test/revoke_access (the
hub then refuses every access token issued so far), POST /_test/seed?client=ID
(a refresh token as if a user had consented).
"""
import argparse, json, os, secrets, threading, time

from flask import Flask, jsonify, request
from werkzeug.serving import make_server
from authlib.integrations.flask_oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

lock = threading.Lock()
clients = {}
by_access = {}
by_refresh = {}
issued = {"count": 0, "by_grant": {}}


class Client(ClientMixin):
    def __init__(self, cid, secret, auth_method, grant_types):
        self.client_id, self.secret = cid, secret
        self.auth_method, self.grant_types = auth_method, grant_types

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, uri):
        return False

    def check_client_secret(self, secret):
        return self.secret is not None and secrets.compare_digest(secret, self.secret)

    def check_endpoint_auth_method(self, method, endpoint):
        return method == self.auth_method

    def check_response_type(self, response_type):
        return False

    def check_grant_type(self, grant_type):
        return grant_type in self.grant_types


class Token(TokenMixin):
    def __init__(self, data, client_id, user):
        self.access_token = data["access_token"]
        self.refresh_token = data.get("refresh_token")
        self.scope = data.get("scope", "")
        self.expires_in = int(data.get("expires_in", 0))
        self.issued_at = time.time()
        self.client_id, self.user = client_id, user
        self.access_revoked = self.refresh_revoked = False

    def check_client(self, client):
        return client.client_id == self.client_id

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self):
        return self.access_revoked

    def get_user(self):
        return self.user

    def get_client(self):
        return clients.get(self.client_id)


def query_client(client_id):
    return clients.get(client_id)


def save_token(data, req):
    user = getattr(req, "user", None) or req.client.client_id
    tok = Token(data, req.client.client_id, user)
    grant = req.payload.grant_type if req.payload else "?"
    with lock:
        by_access[tok.access_token] = tok
        if tok.refresh_token:
            by_refresh[tok.refresh_token] = tok
        issued["count"] += 1
        issued["by_grant"][grant] = issued["by_grant"].get(grant, 0) + 1


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]


class RotatingRefresh(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]
    INCLUDE_NEW_REFRESH_TOKEN = True

    def authenticate_refresh_token(self, refresh_token):
        with lock:
            tok = by_refresh.get(refresh_token)
        if tok and not tok.refresh_revoked:
            return tok

    def authenticate_user(self, credential):
        return credential.user

    def revoke_old_credential(self, credential):
        credential.refresh_revoked = True


class Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic"]

    def query_token(self, token_string, token_type_hint):
        with lock:
            return by_access.get(token_string)

    def introspect_token(self, token):
        return {
            "active": True,
            "client_id": token.client_id,
            "token_type": "Bearer",
            "scope": token.scope,
            "sub": token.user,
            "exp": int(token.issued_at + token.expires_in),
            "iat": int(token.issued_at),
        }

    def check_permission(self, token, client, req):
        return client.client_id == "hub"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--expires-in", type=int, default=3600)
    a = ap.parse_args()
    for c in json.loads(os.environ.get("OAUTH_CLIENTS", "[]")):
        secret = os.environ[c["secret_env"]] if c.get("secret_env") else None
        clients[c["id"]] = Client(c["id"], secret, c.get("auth_method", "client_secret_basic"), c["grants"])

    app = Flask(__name__)
    app.config["OAUTH2_TOKEN_EXPIRES_IN"] = {
        "client_credentials": a.expires_in,
        "refresh_token": a.expires_in,
    }
    # Authlib's bearer generator makes refresh tokens only when asked to;
    # the client credentials grant never includes one (RFC 6749 §4.4.3).
    app.config["OAUTH2_REFRESH_TOKEN_GENERATOR"] = True
    server = AuthorizationServer(app, query_client=query_client, save_token=save_token)
    server.register_grant(ClientCredentials)
    server.register_grant(RotatingRefresh)
    server.register_endpoint(Introspection)

    @app.route("/token", methods=["POST"])
    def token():
        return server.create_token_response()

    @app.route("/introspect", methods=["POST"])
    def introspect():
        return server.create_endpoint_response("introspection")

    @app.route("/_test/state")
    def state():
        with lock:
            return jsonify({
                "issued": issued["count"],
                "by_grant": issued["by_grant"],
                "access_tokens": list(by_access),
                "refresh_tokens": list(by_refresh),
            })

    @app.route("/_test/revoke_access", methods=["POST"])
    def revoke_access():
        with lock:
            for t in by_access.values():
                t.access_revoked = True
        return jsonify({"ok": True})

    @app.route("/_test/seed", methods=["POST"])
    def seed():
        cid = request.args["client"]
        rt = secrets.token_urlsafe(32)
        tok = Token({"access_token": "seed-" + secrets.token_urlsafe(8), "refresh_token": rt,
                     "scope": request.args.get("scope", ""), "expires_in": 0}, cid, "user@" + cid)
        with lock:
            by_refresh[rt] = tok
        return jsonify({"refresh_token": rt})

    srv = make_server("127.0.0.1", a.port, app, threaded=True, ssl_context=(a.cert, a.key))
    print(f"token endpoint listening on 127.0.0.1:{srv.server_port}", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
