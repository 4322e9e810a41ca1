"""Drive Python's smtplib (an SMTP client we did not write) from a JSON plan.

usage: client.py '{"port": 2587, "starttls": true, "mech": "PLAIN", "user": "...",
                   "from": "...", "to": ["..."], "body": "..."}'
The password comes from $SMTP_PASSWORD, never argv; for "mech": "XOAUTH2" or
"OAUTHBEARER" it is the bearer token, sent in the mechanism's message with
"user" (smtplib's auth() with an authobject, as Google documents it), and
the challenges the server sends (RFC 7628 error JSON) are reported.
Prints one JSON object:
{"ehlo": [...], "auth": [code, text] | null, "challenges": [...],
 "send": {"ok": bool, "code": int, "error": str}}
"""
import json, os, smtplib, ssl, sys

plan = json.loads(sys.argv[1])
result = {"ehlo": None, "auth": None, "send": None}
host = plan.get("host", "127.0.0.1")
try:
    if plan.get("ssl"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        s = smtplib.SMTP_SSL(host, plan["port"], context=ctx, timeout=30)
    else:
        s = smtplib.SMTP(host, plan["port"], timeout=30)
    s.ehlo("client.example")
    if plan.get("starttls"):
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if plan.get("tls_max") == "1.2":
            ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        s.starttls(context=ctx)
        s.ehlo("client.example")
        result["tls_version"] = s.sock.version()
    result["ehlo"] = sorted(s.esmtp_features.keys())
    result["auth_offered"] = s.esmtp_features.get("auth", "").split()
    if plan.get("mech"):
        s.user, s.password = plan["user"], os.environ["SMTP_PASSWORD"]
        mech = plan["mech"].upper()
        challenges = result["challenges"] = []

        def bearer(challenge=None):
            if challenge is None:
                if mech == "XOAUTH2":
                    return "user=%s\x01auth=Bearer %s\x01\x01" % (s.user, s.password)
                return "n,a=%s,\x01auth=Bearer %s\x01\x01" % (s.user, s.password)
            challenges.append(challenge.decode(errors="replace"))
            # RFC 7628 §3.2.3: a kvsep answers the error; XOAUTH2 answers empty.
            return "" if mech == "XOAUTH2" else "\x01"

        obj = {"PLAIN": s.auth_plain, "LOGIN": s.auth_login, "CRAM-MD5": s.auth_cram_md5,
               "XOAUTH2": bearer, "OAUTHBEARER": bearer}[mech]
        try:
            code, text = s.auth(mech, obj, initial_response_ok=plan.get("initial_response", True))
            result["auth"] = [code, text.decode()]
        except smtplib.SMTPAuthenticationError as e:
            result["auth"] = [e.smtp_code, e.smtp_error.decode()]
    if plan.get("to") and (result["auth"] is None or result["auth"][0] == 235):
        try:
            refused = s.sendmail(plan["from"], plan["to"], plan.get("body", "Subject: test\r\n\r\nhello\r\n"))
            result["send"] = {"ok": True, "code": 250, "refused": {k: list(v[:1]) for k, v in refused.items()}}
        except smtplib.SMTPRecipientsRefused as e:
            result["send"] = {"ok": False, "code": list(e.recipients.values())[0][0], "error": str(e)}
        except smtplib.SMTPResponseException as e:
            result["send"] = {"ok": False, "code": e.smtp_code, "error": e.smtp_error.decode()}
    try:
        s.quit()
    except Exception:
        pass
except Exception as e:  # report, do not hide: the test asserts on it
    result["error"] = f"{type(e).__name__}: {e}"
print(json.dumps(result))
