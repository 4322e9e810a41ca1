"""One SMTP session, step by step, with Python's smtplib (a client we did not write).

usage: smtp_steps.py '{"port": 2587, "user": "alice@realm", "steps": [["mail", "a@x"], ...]}'
The password comes from $SMTP_PASSWORD, never argv. STARTTLS, then AUTH PLAIN
(unless "user" is absent), then the steps:
  ["mail", FROM]  ["rcpt", TO]  ["data", BODY]  ["rset"]  ["noop"]
  ["wait", SECONDS]   wait for a reply the server sends unasked (a 421)
Prints one JSON object per line, flushed as it happens, so a test can hold the
session open and watch it: {"step": "auth", "code": 235, "text": "..."} ...;
"code": -1 when the server had closed the connection. Ends with {"step": "end"}.
"""
import json, os, smtplib, ssl, sys


def emit(step, code, text):
    print(json.dumps({"step": step, "code": code, "text": text}), flush=True)


plan = json.loads(sys.argv[1])
s = smtplib.SMTP(plan.get("host", "127.0.0.1"), plan["port"], timeout=30)
s.ehlo("client.example")
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo("client.example")
if plan.get("user"):
    s.user, s.password = plan["user"], os.environ["SMTP_PASSWORD"]
    try:
        code, text = s.auth("PLAIN", s.auth_plain)
    except smtplib.SMTPAuthenticationError as e:
        code, text = e.smtp_code, e.smtp_error
    emit("auth", code, text.decode())
for step in plan.get("steps", []):
    what = step[0]
    try:
        if what == "mail":
            code, text = s.mail(step[1])
        elif what == "rcpt":
            code, text = s.rcpt(step[1])
        elif what == "data":
            code, text = s.data(step[1])
        elif what == "rset":
            code, text = s.rset()
        elif what == "noop":
            code, text = s.noop()
        elif what == "wait":
            s.sock.settimeout(float(step[1]))
            code, text = s.getreply()
            s.sock.settimeout(30)
        else:
            raise ValueError(f"unknown step {what}")
        emit(what, code, text.decode(errors="replace"))
    except smtplib.SMTPServerDisconnected as e:
        # smtplib turns a read timeout into a disconnection too: a wait
        # that timed out saw nothing (and smtplib has closed the socket).
        emit(what, 0 if what == "wait" and "timed out" in str(e) else -1, str(e))
        break
    except smtplib.SMTPDataError as e:
        emit(what, e.smtp_code, e.smtp_error.decode(errors="replace"))
try:
    s.quit()
except Exception:
    pass
print(json.dumps({"step": "end"}), flush=True)
