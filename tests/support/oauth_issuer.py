#!/usr/bin/env python3
"""An OAuth 2.0 / OpenID Connect token issuer on loopback, over HTTPS, for
tests/tests/oauth_server.rs: real keys made here with joserfc, a JWKS and
discovery documents built from them, and access tokens signed with them.

    oauth_issuer.py DIR

Writes DIR/issuer-ca.pem (the private CA its certificate chains to) and
prints `issuer listening on https://127.0.0.1:PORT`. Endpoints:

  GET  /jwks                                   the public keys (Cache-Control: max-age=300)
  GET  /.well-known/openid-configuration       discovery for issuer https://127.0.0.1:PORT
  GET  /strict/.well-known/openid-configuration  discovery for issuer …/strict (same keys)
  POST /mint    {"claims": {...}, "alg": "RS256"|"ES256"|"EdDSA", "kid": optional,
                 "rogue": bool}  -> a signed JWT; rogue = signed by a key the JWKS
                 does not hold, under the kid of one it does (a forged signature)
  POST /rotate  -> a new RSA key replaces the old one in the JWKS; {"kid": new}
  GET  /stats   -> {"jwks_fetches": N}

The test drives it; nothing here knows what the relay will answer.
"""

import datetime
import ipaddress
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey

DIR = sys.argv[1]
LOCK = threading.Lock()
STATE = {"jwks_fetches": 0, "generation": 1}


def new_rsa(kid):
    return RSAKey.generate_key(2048, parameters={"kid": kid, "use": "sig", "alg": "RS256"})


KEYS = {
    "RS256": new_rsa("rsa-1"),
    "ES256": ECKey.generate_key("P-256", parameters={"kid": "ec-1", "use": "sig", "alg": "ES256"}),
    "EdDSA": OKPKey.generate_key("Ed25519", parameters={"kid": "ed-1", "use": "sig"}),
}
ROGUE = {
    "RS256": RSAKey.generate_key(2048),
    "ES256": ECKey.generate_key("P-256"),
    "EdDSA": OKPKey.generate_key("Ed25519"),
}


def make_tls(dir_):
    """A private CA and a server certificate for 127.0.0.1 signed by it."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "authrelay test issuer CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = os.path.join(dir_, "issuer-ca.pem")
    with open(ca_path, "wb") as f:
        f.write(ca.public_bytes(serialization.Encoding.PEM))
    chain = os.path.join(dir_, "issuer-cert.pem")
    with open(chain, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    keyfile = os.path.join(dir_, "issuer-key.pem")
    with open(keyfile, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, keyfile)
    return ctx


class Handler(BaseHTTPRequestHandler):
    def log_message(self, fmt, *args):  # keep stderr for errors
        sys.stderr.write("issuer: " + (fmt % args) + "\n")

    def send_json(self, obj, status=200, headers=()):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def base(self):
        return "https://127.0.0.1:%d" % self.server.server_address[1]

    def do_GET(self):
        if self.path == "/jwks":
            with LOCK:
                STATE["jwks_fetches"] += 1
                keys = [k.as_dict(private=False) for k in KEYS.values()]
            self.send_json({"keys": keys}, headers=[("Cache-Control", "public, max-age=300")])
        elif self.path in ("/.well-known/openid-configuration", "/strict/.well-known/openid-configuration"):
            issuer = self.base() + self.path[: -len("/.well-known/openid-configuration")]
            self.send_json({"issuer": issuer, "jwks_uri": self.base() + "/jwks"})
        elif self.path == "/stats":
            with LOCK:
                self.send_json(dict(STATE))
        else:
            self.send_json({"error": "not found"}, status=404)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        req = json.loads(self.rfile.read(length) or b"{}")
        if self.path == "/mint":
            alg = req.get("alg", "RS256")
            with LOCK:
                key = KEYS[alg]
                kid = req.get("kid", key.kid)
                signer = ROGUE[alg] if req.get("rogue") else key
            header = {"alg": alg, "typ": "JWT", "kid": kid}
            token = jwt.encode(header, req["claims"], signer, algorithms=[alg])
            self.send_json({"token": token})
        elif self.path == "/rotate":
            with LOCK:
                STATE["generation"] += 1
                KEYS["RS256"] = new_rsa("rsa-%d" % STATE["generation"])
                kid = KEYS["RS256"].kid
            self.send_json({"kid": kid})
        else:
            self.send_json({"error": "not found"}, status=404)


def main():
    ctx = make_tls(DIR)
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print("issuer listening on https://127.0.0.1:%d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
