"""sink.py's aiosmtpd sink on a chosen loopback address and port, so several
MX hosts can share one port on 127.0.0.1, 127.0.0.3, … (Linux routes all of
127/8 to loopback).

usage: addr_sink.py DIR HOST PORT   (PORT 0: any free port)
Prints "sink listening on HOST:PORT" once ready.
"""
import os, socket, sys, threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from aiosmtpd.controller import Controller  # noqa: E402
from sink import Sink  # noqa: E402


def main():
    out, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    os.makedirs(out, exist_ok=True)
    if port == 0:
        probe = socket.socket()
        probe.bind((host, 0))
        port = probe.getsockname()[1]
        probe.close()
    c = Controller(Sink(out), hostname=host, port=port)
    c.start()
    print(f"sink listening on {host}:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
