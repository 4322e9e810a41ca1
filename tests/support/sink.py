"""A sink SMTP server for the end-to-end tests: aiosmtpd (an implementation we
did not write) on loopback, storing each message as a JSON file.

usage: sink.py DIR [--auth-user U --auth-password-env VAR]
Prints "sink listening on 127.0.0.1:PORT" once ready.
"""
import json, os, socket, sys, threading, uuid

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


class Sink:
    def __init__(self, out):
        self.out = out

    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.out, uuid.uuid4().hex + ".json")
        with open(name + ".tmp", "w") as f:
            json.dump({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.original_content.decode("utf-8", "replace"),
                "auth": session.authenticated and str(getattr(session, "auth_data", "")),
            }, f)
        os.rename(name + ".tmp", name)
        return "250 2.0.0 stored"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    user = password = None
    if "--auth-user" in sys.argv:
        user = sys.argv[sys.argv.index("--auth-user") + 1]
        password = os.environ[sys.argv[sys.argv.index("--auth-password-env") + 1]]

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login.decode() == user \
            and auth_data.password.decode() == password
        return AuthResult(success=ok, handled=False)

    kwargs = {}
    if user:
        kwargs = dict(authenticator=authenticator, auth_required=True, auth_require_tls=False)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    c = Controller(Sink(out), hostname="127.0.0.1", port=port, **kwargs)
    c.start()
    print(f"sink listening on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
