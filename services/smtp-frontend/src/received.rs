//! The trace header this server prepends (RFC 5321 §4.4), with the RFC 3848
//! protocol type that says whether the client used TLS and AUTH.

use std::net::IpAddr;

/// RFC 3848: SMTP, ESMTP, ESMTPA, ESMTPS, ESMTPSA.
pub fn protocol(esmtp: bool, tls: bool, authenticated: bool) -> &'static str {
    match (esmtp, tls, authenticated) {
        (false, _, _) => "SMTP",
        (true, false, false) => "ESMTP",
        (true, false, true) => "ESMTPA",
        (true, true, false) => "ESMTPS",
        (true, true, true) => "ESMTPSA",
    }
}

pub struct ReceivedInfo<'a> {
    pub helo: &'a str,
    pub client_ip: IpAddr,
    pub hostname: &'a str,
    pub esmtp: bool,
    /// (version, cipher suite), e.g. ("TLSv1.3", "TLS13_AES_256_GCM_SHA384").
    pub tls: Option<(&'a str, &'a str)>,
    /// (authenticated id, mechanism, bits), shown when policy allows.
    pub auth: Option<(&'a str, &'a str, u32)>,
    pub authenticated: bool,
    pub id: &'a str,
    /// Named only for a single recipient, so a Bcc is not revealed.
    pub single_recipient: Option<&'a str>,
    pub date: time::OffsetDateTime,
}

/// The header with folded continuation lines, ending in CRLF.
pub fn header(i: &ReceivedInfo<'_>) -> String {
    let helo = sanitize(i.helo);
    let mut h = format!("Received: from {helo} ([{}])", i.client_ip);
    if let Some((version, cipher)) = i.tls {
        h.push_str(&format!(
            "\r\n\t(using {} with cipher {})",
            sanitize(version),
            sanitize(cipher)
        ));
    }
    if let Some((id, mech, bits)) = i.auth {
        h.push_str(&format!(
            "\r\n\t(authenticated as {} with {} bits={})",
            sanitize(id),
            sanitize(mech),
            bits
        ));
    }
    h.push_str(&format!(
        "\r\n\tby {} (authrelay) with {} id {}",
        i.hostname,
        protocol(i.esmtp, i.tls.is_some(), i.authenticated),
        i.id
    ));
    if let Some(rcpt) = i.single_recipient {
        h.push_str(&format!("\r\n\tfor <{}>", sanitize(rcpt)));
    }
    let date = i
        .date
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default();
    h.push_str(&format!(";\r\n\t{date}\r\n"));
    h
}

/// Client-supplied text goes into a header: keep it printable and free of
/// anything that could end the header or open a comment.
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() || c == '(' || c == ')' || c == ';' {
                '?'
            } else {
                c
            }
        })
        .take(255)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_types_follow_rfc3848() {
        assert_eq!(protocol(true, true, true), "ESMTPSA");
        assert_eq!(protocol(true, false, true), "ESMTPA");
        assert_eq!(protocol(true, true, false), "ESMTPS");
        assert_eq!(protocol(false, false, false), "SMTP");
    }

    #[test]
    fn header_names_the_authenticated_user() {
        let h = header(&ReceivedInfo {
            helo: "johnc",
            client_ip: "192.0.2.1".parse().unwrap(),
            hostname: "mailserver.foo.com",
            esmtp: true,
            tls: Some(("TLSv1.3", "TLS13_AES_128_GCM_SHA256")),
            auth: Some(("test@mailserver.foo.com", "PLAIN", 0)),
            authenticated: true,
            id: "Q1234",
            single_recipient: Some("johnc@foo.com"),
            date: time::macros::datetime!(2026-11-25 17:00 UTC),
        });
        assert!(h.starts_with("Received: from johnc ([192.0.2.1])\r\n"));
        assert!(h.contains("(authenticated as test@mailserver.foo.com with PLAIN bits=0)"));
        assert!(h.contains("with ESMTPSA id Q1234"));
        assert!(h.contains("for <johnc@foo.com>;"));
        assert!(h.ends_with("Wed, 25 Nov 2026 17:00:00 +0000\r\n"));
    }

    #[test]
    fn hostile_helo_cannot_break_the_header() {
        let h = header(&ReceivedInfo {
            helo: "evil\r\nBcc: x@y",
            client_ip: "192.0.2.1".parse().unwrap(),
            hostname: "h",
            esmtp: true,
            tls: None,
            auth: None,
            authenticated: false,
            id: "Q",
            single_recipient: None,
            date: time::macros::datetime!(2026-11-25 17:00 UTC),
        });
        assert!(!h.contains("\r\nBcc"));
    }
}
