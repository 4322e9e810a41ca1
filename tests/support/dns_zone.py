"""A tiny authoritative DNS server for the MX routing tests, built on
dnslib (a DNS implementation we did not write), on loopback UDP and TCP.

usage: dns_zone.py ZONE.json
The zone is re-read on every query, so a test may change it while running:
  {"name.example.": {"MX": [[10, "mx1.name.example."]], "A": ["127.0.0.1"],
                     "AAAA": ["::1"]},
   "broken.example.": "SERVFAIL"}
A name not in the zone gets NXDOMAIN; a name without the asked type gets an
empty NOERROR answer. "MX": [[0, "."]] is a null MX (RFC 7505).
Every query is printed as "query NAME TYPE"; prints
"dns listening on 127.0.0.1:PORT" once ready.
"""
import json, socket, sys, threading

try:
    from dnslib import AAAA, A, MX, QTYPE, RCODE, RR
    from dnslib.server import BaseResolver, DNSLogger, DNSServer
except ImportError:
    sys.exit("dnslib is missing: python3 -m pip install dnslib (scripts/test.sh installs it)")


class Zone(BaseResolver):
    def __init__(self, path):
        self.path = path

    def resolve(self, request, handler):
        reply = request.reply()
        qname = str(request.q.qname).lower()
        qtype = QTYPE[request.q.qtype]
        print(f"query {qname} {qtype}", flush=True)
        with open(self.path) as f:
            zone = {k.lower(): v for k, v in json.load(f).items()}
        entry = zone.get(qname)
        if entry is None:
            reply.header.rcode = RCODE.NXDOMAIN
            return reply
        if entry == "SERVFAIL":
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        for value in entry.get(qtype, []):
            if qtype == "MX":
                rdata = MX(value[1], value[0])
            elif qtype == "A":
                rdata = A(value)
            elif qtype == "AAAA":
                rdata = AAAA(value)
            else:
                continue
            reply.add_answer(RR(qname, request.q.qtype, rdata=rdata, ttl=1))
        return reply


class Quiet(DNSLogger):
    def __init__(self):
        super().__init__(log="-request,-reply,-truncated,-data,-recv,-send,-error")


def main():
    zone = Zone(sys.argv[1])
    # One port for UDP and TCP (RFC 7766): retry until both binds succeed.
    for _ in range(50):
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        try:
            udp = DNSServer(zone, port=port, address="127.0.0.1", logger=Quiet())
        except OSError:
            continue
        try:
            tcp = DNSServer(zone, port=port, address="127.0.0.1", tcp=True, logger=Quiet())
        except OSError:
            udp.server.server_close()
            continue
        break
    else:
        sys.exit("no free port for DNS on 127.0.0.1")
    udp.start_thread()
    tcp.start_thread()
    print(f"dns listening on 127.0.0.1:{port}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
