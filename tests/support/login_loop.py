"""Log in with Python's smtplib (a client we did not write), over and over,
from several threads at once, for a while: load that lasts while a test
changes something under it.

usage: login_loop.py '{"port": 2525, "mech": "CRAM-MD5", "user": "...",
                       "threads": 4, "seconds": 6}'
The password comes from $SMTP_PASSWORD, never argv. Prints one JSON object:
{"ok": N, "failed": N, "errors": ["first few failures"]}
"""
import json, os, smtplib, sys, threading, time

plan = json.loads(sys.argv[1])
password = os.environ["SMTP_PASSWORD"]
lock = threading.Lock()
counts = {"ok": 0, "failed": 0, "errors": []}


def worker():
    end = time.time() + plan["seconds"]
    while time.time() < end:
        try:
            with smtplib.SMTP("127.0.0.1", plan["port"], timeout=15) as s:
                s.ehlo("loop.example")
                s.user, s.password = plan["user"], password
                method = {"CRAM-MD5": s.auth_cram_md5, "PLAIN": s.auth_plain,
                          "LOGIN": s.auth_login}[plan["mech"]]
                s.auth(plan["mech"], method, initial_response_ok=False)
            with lock:
                counts["ok"] += 1
        except Exception as e:  # every failure is counted and a few kept
            with lock:
                counts["failed"] += 1
                if len(counts["errors"]) < 5:
                    counts["errors"].append(repr(e))


threads = [threading.Thread(target=worker) for _ in range(plan["threads"])]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(counts))
