"""Submit a burst of numbered messages with smtplib (a client we did not
write), reconnecting after any error, and report which got a 250.

usage: burst.py '{"port": P, "user": U, "from": F, "to": T, "count": N}'
The password comes from $SMTP_PASSWORD. Each message carries "X-Seq: i".
Prints one JSON object: {"accepted": [i, ...], "refused": {i: "code text"}}.
A message counts as accepted only when sendmail() returned, i.e. after the
server's 250 to the final dot.
"""
import json, os, smtplib, sys, time

plan = json.loads(sys.argv[1])
password = os.environ["SMTP_PASSWORD"]
accepted, refused = [], {}
s = None


def connect():
    c = smtplib.SMTP("127.0.0.1", plan["port"], timeout=30)
    c.ehlo("burst.example")
    c.starttls()
    c.ehlo("burst.example")
    c.login(plan["user"], password)
    return c


for i in range(plan["count"]):
    body = f"Subject: burst {i}\r\nX-Seq: {i}\r\nMessage-ID: <burst-{i}@burst.example>\r\n\r\nmessage {i}\r\n"
    try:
        if s is None:
            s = connect()
        s.sendmail(plan["from"], [plan["to"]], body)
        accepted.append(i)
    except smtplib.SMTPResponseException as e:
        refused[i] = f"{e.smtp_code} {e.smtp_error!r}"
    except Exception as e:  # connection lost: start over with a fresh session
        refused[i] = f"{type(e).__name__}: {e}"
        try:
            s.close()
        except Exception:
            pass
        s = None
        time.sleep(0.05)
try:
    s.quit()
except Exception:
    pass
print(json.dumps({"accepted": accepted, "refused": refused}))
