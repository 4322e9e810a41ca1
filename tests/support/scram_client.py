"""A SCRAM client we did not write (the `scramp` package) driving SMTP AUTH
over smtplib's low-level docmd(), after STARTTLS.

usage: scram_client.py '{"port": 2587, "mech": "SCRAM-SHA-256", "user": "...",
                         "initial_response": true, "cb": null | "tls-server-end-point"}'
The password comes from $SMTP_PASSWORD, never argv. Prints one JSON object:
{"auth": [code, text], "server_verified": bool, "steps": [...reply codes...]}
"""
import base64, json, os, smtplib, ssl, sys

try:
    import scramp
except ImportError:
    print(json.dumps({"error": "scramp is not installed: python3 -m pip install scramp (scripts/test.sh does)"}))
    sys.exit(0)

plan = json.loads(sys.argv[1])
result = {"auth": None, "server_verified": False, "steps": []}


def b64(s):
    return base64.b64encode(s.encode()).decode()


def unb64(b):
    return base64.b64decode(b).decode()


try:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = smtplib.SMTP(plan.get("host", "127.0.0.1"), plan["port"], timeout=30)
    s.ehlo("client.example")
    s.starttls(context=ctx)
    s.ehlo("client.example")
    result["auth_offered"] = s.esmtp_features.get("auth", "").split()
    mech = plan["mech"]
    cb = (plan["cb"], s.sock) if plan.get("cb") else None
    client = scramp.ScramClient([mech], plan["user"], os.environ["SMTP_PASSWORD"], channel_binding=cb)
    first = client.get_client_first()
    if plan.get("initial_response", True):
        code, text = s.docmd("AUTH", f"{mech} {b64(first)}")
    else:
        code, text = s.docmd("AUTH", mech)
        result["steps"].append(code)
        if code != 334:
            raise smtplib.SMTPResponseException(code, text)
        code, text = s.docmd(b64(first))
    result["steps"].append(code)
    if code == 334:
        client.set_server_first(unb64(text))
        code, text = s.docmd(b64(client.get_client_final()))
        result["steps"].append(code)
        if code == 334:
            # RFC 4954 §4: the server's final message (v=) rides on a 334;
            # scramp checks the server signature, then we send an empty line.
            client.set_server_final(unb64(text))
            result["server_verified"] = True
            code, text = s.docmd("")
            result["steps"].append(code)
    result["auth"] = [code, text.decode() if isinstance(text, bytes) else text]
    try:
        s.quit()
    except Exception:
        pass
except smtplib.SMTPResponseException as e:
    result["auth"] = [e.smtp_code, e.smtp_error.decode()]
except Exception as e:  # report, do not hide: the test asserts on it
    result["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(result))
