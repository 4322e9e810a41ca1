"""A next hop with scripted answers, for the relay-queue retry and bounce
tests: aiosmtpd (an implementation we did not write) on loopback.

usage: scripted_hub.py DIR
RCPT TO a local part starting with "defer" gets 451 4.3.0, "reject" gets
550 5.1.1; anything else is accepted and the message stored as JSON in DIR
(the same shape as sink.py). Every RCPT is appended to DIR/rcpt.log as
"EPOCH_SECONDS CODE ADDRESS", so a test can see when retries came.
Prints "hub listening on 127.0.0.1:PORT" once ready.
"""
import json, os, socket, sys, threading, time, uuid

from aiosmtpd.controller import Controller


class Hub:
    def __init__(self, out):
        self.out = out
        self.lock = threading.Lock()

    def note(self, code, address):
        with self.lock, open(os.path.join(self.out, "rcpt.log"), "a") as f:
            f.write(f"{time.time():.3f} {code} {address}\n")

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local.startswith("defer"):
            self.note(451, address)
            return "451 4.3.0 try again later"
        if local.startswith("reject"):
            self.note(550, address)
            return "550 5.1.1 no such user here"
        self.note(250, address)
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server, session, envelope):
        name = os.path.join(self.out, uuid.uuid4().hex + ".json")
        with open(name + ".tmp", "w") as f:
            json.dump({
                "mail_from": envelope.mail_from,
                "rcpt_tos": envelope.rcpt_tos,
                "data": envelope.original_content.decode("utf-8", "replace"),
            }, f)
        os.rename(name + ".tmp", name)
        return "250 2.0.0 stored"


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    c = Controller(Hub(out), hostname="127.0.0.1", port=port)
    c.start()
    print(f"hub listening on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
