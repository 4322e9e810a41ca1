//! One call to an OAuth2 token endpoint (RFC 6749 §4.4.2 client
//! credentials, §6 refresh) and the reading of its answer (§5.1, §5.2).
//! The reading is on bytes, tested without a socket.

use std::path::Path;
use std::time::Duration;

use authrelay_config::{ClientAuthMethod, OAuthGrant, TokenSourceConfig};

use super::{Secret, TokenError};

/// What a successful token response gave us.
#[derive(Debug)]
pub struct Issued {
    pub access_token: Secret,
    /// `expires_in`; absent: [`DEFAULT_LIFETIME`].
    pub lifetime: Duration,
    /// A rotated refresh token (RFC 6749 §6: the server MAY issue a new one,
    /// and then the old one may no longer work).
    pub refresh_token: Option<Secret>,
}

/// `expires_in` is only RECOMMENDED (RFC 6749 §5.1); without it the token is
/// used for five minutes, and a hub's refusal before that fetches another.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(300);

/// Reads a token endpoint's answer. Nothing of the body goes into an error
/// but the §5.2 `error` code and a bounded `error_description`: a success
/// body holds tokens.
pub fn parse_response(status: u16, body: &[u8]) -> Result<Issued, TokenError> {
    if !(200..300).contains(&status) {
        #[derive(serde::Deserialize)]
        struct OAuthError {
            error: String,
            #[serde(default)]
            error_description: String,
        }
        return Err(match serde_json::from_slice::<OAuthError>(body) {
            Ok(e) => TokenError::Refused {
                status,
                error: printable(&e.error, 64),
                description: printable(&e.error_description, 200),
            },
            Err(_) => TokenError::Endpoint(format!("HTTP {status} without an OAuth2 error body")),
        });
    }
    #[derive(serde::Deserialize)]
    struct Success {
        access_token: String,
        token_type: String,
        #[serde(default)]
        expires_in: Option<serde_json::Value>,
        #[serde(default)]
        refresh_token: Option<String>,
    }
    let ok: Success = serde_json::from_slice(body).map_err(|e| {
        // serde's message may quote a value; its category and column do not.
        TokenError::Malformed(format!(
            "token response is not the JSON of RFC 6749 §5.1 ({:?} error at column {})",
            e.classify(),
            e.column()
        ))
    })?;
    if !ok.token_type.eq_ignore_ascii_case("bearer") {
        return Err(TokenError::Malformed(format!(
            "token_type {:?} is not Bearer",
            printable(&ok.token_type, 32)
        )));
    }
    if ok.access_token.is_empty() {
        return Err(TokenError::Malformed("empty access_token".into()));
    }
    // A number per the RFC; some endpoints (older Azure AD v1) send a string.
    let seconds = match &ok.expires_in {
        Some(serde_json::Value::Number(n)) => n.as_u64(),
        Some(serde_json::Value::String(s)) => s.parse().ok(),
        _ => None,
    };
    Ok(Issued {
        access_token: Secret::new(ok.access_token),
        lifetime: seconds.map_or(DEFAULT_LIFETIME, Duration::from_secs),
        refresh_token: ok.refresh_token.filter(|t| !t.is_empty()).map(Secret::new),
    })
}

/// At most `max` characters of `s`, control characters dropped: it goes
/// into a log line.
fn printable(s: &str, max: usize) -> String {
    s.chars().filter(|c| !c.is_control()).take(max).collect()
}

/// An HTTPS client for one token endpoint (see `authrelay_https::client`:
/// HTTPS only, no redirects, which would carry the secret elsewhere).
pub fn http_client(
    cfg: &TokenSourceConfig,
    timeout: Duration,
) -> Result<reqwest::Client, anyhow::Error> {
    Ok(authrelay_https::client(cfg.ca_file.as_deref(), timeout)?)
}

/// Reads the client secret file at each fetch: a rotated Secret is taken
/// without a restart.
pub fn read_client_secret(file: &Path) -> Result<Secret, TokenError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| TokenError::Config(format!("client_secret_file {}: {e}", file.display())))?;
    let secret = text.trim_end_matches(['\r', '\n']);
    if secret.is_empty() {
        return Err(TokenError::Config(format!(
            "client_secret_file {} is empty",
            file.display()
        )));
    }
    Ok(Secret::new(secret.to_owned()))
}

/// POSTs the grant and reads the answer.
pub async fn request(
    http: &reqwest::Client,
    cfg: &TokenSourceConfig,
    refresh_token: Option<&Secret>,
) -> Result<Issued, TokenError> {
    let secret = cfg
        .client_secret_file
        .as_deref()
        .map(read_client_secret)
        .transpose()?;
    let mut form: Vec<(&str, &str)> = Vec::with_capacity(6);
    match cfg.grant {
        OAuthGrant::ClientCredentials => form.push(("grant_type", "client_credentials")),
        OAuthGrant::RefreshToken => {
            let rt = refresh_token.ok_or(TokenError::NoRefreshToken)?;
            form.push(("grant_type", "refresh_token"));
            form.push(("refresh_token", rt.expose()));
        }
    }
    if !cfg.scope.is_empty() {
        form.push(("scope", &cfg.scope));
    }
    let mut req = http
        .post(cfg.token_url.trim())
        .header(reqwest::header::ACCEPT, "application/json");
    match (cfg.client_auth, &secret) {
        (ClientAuthMethod::Basic, Some(s)) => {
            // RFC 6749 §2.3.1: id and secret form-urlencoded before Basic.
            req = req.basic_auth(form_encode(&cfg.client_id), Some(form_encode(s.expose())));
        }
        (ClientAuthMethod::Post, Some(s)) => {
            form.push(("client_id", &cfg.client_id));
            form.push(("client_secret", s.expose()));
        }
        // A public client (refresh token without a secret) names itself.
        (_, None) => form.push(("client_id", &cfg.client_id)),
    }
    // reqwest's Display names the URL, never the body or headers.
    let resp = req
        .form(&form)
        .send()
        .await
        .map_err(|e| TokenError::Endpoint(error_chain(&e)))?;
    let status = resp.status().as_u16();
    // Token responses are small; a bound keeps a hostile endpoint from
    // filling memory.
    let body = read_bounded(resp, 64 * 1024).await?;
    parse_response(status, &body)
}

fn error_chain(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if e.is_timeout() {
        text = format!("timed out ({text})");
    }
    // std::error::Error::source carries the cause (connection refused, TLS).
    let mut src = std::error::Error::source(e);
    while let Some(s) = src {
        text.push_str(": ");
        text.push_str(&s.to_string());
        src = s.source();
    }
    text
}

async fn read_bounded(mut resp: reqwest::Response, max: usize) -> Result<Vec<u8>, TokenError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| TokenError::Endpoint(format!("reading the answer: {e}")))?
    {
        if body.len() + chunk.len() > max {
            return Err(TokenError::Endpoint(format!(
                "answer larger than {max} bytes"
            )));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// `application/x-www-form-urlencoded` of one value (RFC 6749 Appendix B).
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'*' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6749_5_1_example_response_is_read() {
        let body = br#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"example","expires_in":3600}"#;
        assert!(matches!(
            parse_response(200, body),
            Err(TokenError::Malformed(m)) if m.contains("not Bearer")
        ));
        let body = br#"{"access_token":"2YotnFZFEjr1zCsicMWpAA","token_type":"Bearer","expires_in":3600,"refresh_token":"tGzv3JOkF0XG5Qx2TlKWIA"}"#;
        let t = parse_response(200, body).unwrap();
        assert_eq!(t.access_token.expose(), "2YotnFZFEjr1zCsicMWpAA");
        assert_eq!(t.lifetime, Duration::from_secs(3600));
        assert_eq!(t.refresh_token.unwrap().expose(), "tGzv3JOkF0XG5Qx2TlKWIA");
    }

    #[test]
    fn expires_in_as_a_string_or_absent_is_accepted() {
        let t = parse_response(
            200,
            br#"{"access_token":"a","token_type":"bearer","expires_in":"599"}"#,
        )
        .unwrap();
        assert_eq!(t.lifetime, Duration::from_secs(599));
        let t = parse_response(200, br#"{"access_token":"a","token_type":"Bearer"}"#).unwrap();
        assert_eq!(t.lifetime, DEFAULT_LIFETIME);
        assert!(t.refresh_token.is_none());
    }

    #[test]
    fn rfc6749_5_2_error_is_reported_by_code_and_description() {
        let e = parse_response(
            400,
            br#"{"error":"invalid_grant","error_description":"AADSTS70008: expired\n"}"#,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "token endpoint refused (HTTP 400): invalid_grant: AADSTS70008: expired"
        );
        let e = parse_response(503, b"<html>down</html>").unwrap_err();
        assert!(matches!(e, TokenError::Endpoint(_)), "{e}");
    }

    #[test]
    fn a_malformed_success_body_never_quotes_the_token() {
        let e = parse_response(
            200,
            br#"{"access_token":"SECRET-TOKEN-xyz","token_type":5}"#,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("SECRET-TOKEN"), "{e}");
        let e = parse_response(
            200,
            br#"{"access_token":"SECRET-TOKEN-xyz","token_type":"mac"}"#,
        )
        .unwrap_err();
        assert!(!e.to_string().contains("SECRET-TOKEN"), "{e}");
    }

    #[test]
    fn basic_credentials_are_form_encoded_first() {
        assert_eq!(form_encode("a b+c/d:é"), "a+b%2Bc%2Fd%3A%C3%A9");
    }
}
