//! The AuthInfo map: how the relay authenticates to each next hop.
//!
//! The file form is sendmail's `FEATURE(authinfo)` source, one entry a line,
//! exactly as the seed writes it:
//!
//! ```text
//! AuthInfo:mailhub.foo.com "U:mailrelay" "I:mailrelay" "P:secret" "R:foo" "M:DIGEST-MD5"
//! ```
//!
//! Each quoted item is a field letter, then `:` and the value as text or `=`
//! and the value in base64 (sendmail's cf/README, "AuthInfo"): `U` the user
//! (authorization id), `I` the authentication id, `P` the password, `R` the
//! realm, `M` the mechanisms allowed, separated by spaces. `AuthInfo:` with no
//! host is the entry for every host without its own. The TOML form
//! (`[[relay_queue.authinfo]]`) says the same with the password in a file, as
//! a Kubernetes Secret is mounted.
//!
//! Ours adds `O`, an OAuth2 token source (`[relay_queue.token_sources.NAME]`)
//! in place of `P`: the entry then authenticates with XOAUTH2 or OAUTHBEARER
//! and a fresh access token from that source.
//!
//! ```text
//! AuthInfo:smtp.office365.com "U:relay@contoso.com" "O:m365" "M:XOAUTH2"
//! ```

use std::fmt;
use std::path::{Path, PathBuf};

use authrelay_sasl::Mechanism;
use base64::Engine as _;

use crate::{AuthInfoEntry, ConfigError};

/// A password. It is never printed: `Debug` redacts it and it has no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Password(String);

impl Password {
    pub fn new(s: impl Into<String>) -> Self {
        Password(s.into())
    }

    /// The password itself, for the SASL client only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// What an entry proves itself with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthSecret {
    /// `P`: for the password mechanisms.
    Password(Password),
    /// `O`: the name of a `[relay_queue.token_sources.NAME]`, for XOAUTH2
    /// and OAUTHBEARER.
    TokenSource(String),
}

/// How to authenticate to one next hop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthInfo {
    /// The next hop's host name or address; empty for the default entry.
    pub host: String,
    /// `U`: the authorization id, when it differs from the authentication id.
    pub authzid: Option<String>,
    /// `I` (or `U` when `I` is absent): who we authenticate as.
    pub authid: String,
    /// `P` or `O`.
    pub secret: AuthSecret,
    /// `R`: the DIGEST-MD5 realm, and the `@REALM` of the login for the others.
    pub realm: Option<String>,
    /// `M`: mechanisms we may use with this hop; empty = any we know that
    /// fits the secret. Listing PLAIN or LOGIN here is also what allows
    /// them without TLS; XOAUTH2 and OAUTHBEARER, never.
    pub mechanisms: Vec<Mechanism>,
}

impl AuthInfo {
    /// The token source this entry authenticates with, if any.
    pub fn token_source(&self) -> Option<&str> {
        match &self.secret {
            AuthSecret::TokenSource(name) => Some(name),
            AuthSecret::Password(_) => None,
        }
    }
}

/// `M` must fit the secret: a bearer mechanism needs a token source, a
/// password mechanism a password.
fn check_mechanisms_fit(
    secret: &AuthSecret,
    mechanisms: &[Mechanism],
    field: &str,
) -> Result<(), FieldError> {
    let token = matches!(secret, AuthSecret::TokenSource(_));
    match mechanisms.iter().find(|m| m.uses_bearer_token() != token) {
        Some(m) if token => Err(field_err(
            field,
            format!(
                "{m} needs a password; an entry with a token source (O) uses XOAUTH2 or OAUTHBEARER"
            ),
        )),
        Some(m) => Err(field_err(
            field,
            format!("{m} needs a token source (O:NAME), not a password"),
        )),
        None => Ok(()),
    }
}

/// Why an AuthInfo entry was refused; each names where and which field.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthInfoError {
    #[error("{} line {line}: field {field}: {reason}", file.display())]
    Line {
        file: PathBuf,
        line: usize,
        field: String,
        reason: String,
    },
    #[error("relay_queue.authinfo[{index}].{field}: {reason}")]
    Entry {
        index: usize,
        field: String,
        reason: String,
    },
    #[error("{}: {reason}", file.display())]
    Unreadable { file: PathBuf, reason: String },
}

impl AuthInfoError {
    /// As a configuration error naming the key, the place and why.
    pub fn to_config_error(&self) -> ConfigError {
        match self {
            AuthInfoError::Line {
                file,
                line,
                field,
                reason,
            } => ConfigError::new(
                "relay_queue.authinfo_file",
                format!("{}:{line}", file.display()),
                format!("line {line}, field {field}: {reason}"),
            ),
            AuthInfoError::Entry {
                index,
                field,
                reason,
            } => ConfigError::new(
                format!("relay_queue.authinfo[{index}].{field}"),
                "",
                reason.clone(),
            ),
            AuthInfoError::Unreadable { file, reason } => ConfigError::new(
                "relay_queue.authinfo_file",
                file.display().to_string(),
                reason.clone(),
            ),
        }
    }
}

/// Every AuthInfo entry, looked up by next-hop host.
#[derive(Clone, Debug, Default)]
pub struct AuthInfoMap {
    entries: Vec<AuthInfo>,
}

/// What went wrong with one line, before the file and line number are added.
struct FieldError {
    field: String,
    reason: String,
}

fn field_err(field: impl Into<String>, reason: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn normalise_host(host: &str) -> String {
    host.trim()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .trim_end_matches('.')
        .to_ascii_lowercase()
}

fn parse_mechanisms<'a>(
    words: impl Iterator<Item = &'a str>,
    field: &str,
) -> Result<Vec<Mechanism>, FieldError> {
    let mut out = Vec::new();
    for w in words {
        let m: Mechanism = w
            .parse()
            .map_err(|e: authrelay_sasl::UnknownMechanism| field_err(field, e.to_string()))?;
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

impl AuthInfoMap {
    /// Parses the text of an AuthInfo file; `file` names it in errors.
    pub fn parse(text: &str, file: &Path) -> Result<Self, AuthInfoError> {
        let mut map = AuthInfoMap::default();
        let mut first_line: Vec<(String, usize)> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let at = |e: FieldError| AuthInfoError::Line {
                file: file.to_owned(),
                line,
                field: e.field,
                reason: e.reason,
            };
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let entry = parse_line(trimmed).map_err(at)?;
            if let Some((_, first)) = first_line.iter().find(|(h, _)| *h == entry.host) {
                return Err(at(field_err(
                    "AuthInfo:",
                    format!("host listed twice (first on line {first})"),
                )));
            }
            first_line.push((entry.host.clone(), line));
            map.entries.push(entry);
        }
        Ok(map)
    }

    /// Reads and parses an AuthInfo file.
    pub fn load(file: &Path) -> Result<Self, AuthInfoError> {
        let text = std::fs::read_to_string(file).map_err(|e| AuthInfoError::Unreadable {
            file: file.to_owned(),
            reason: e.to_string(),
        })?;
        Self::parse(&text, file)
    }

    /// Adds the TOML entries (`[[relay_queue.authinfo]]`), reading each password file.
    pub fn add_entries(&mut self, entries: &[AuthInfoEntry]) -> Result<(), AuthInfoError> {
        for (index, e) in entries.iter().enumerate() {
            let err = |field: &str, reason: String| AuthInfoError::Entry {
                index,
                field: field.to_owned(),
                reason,
            };
            let host = normalise_host(&e.host);
            if self.entries.iter().any(|x| x.host == host) {
                return Err(err("host", format!("{:?} has an entry already", e.host)));
            }
            let (authzid, authid) = identities(&e.user, &e.authid)
                .map_err(|f| err(if e.user.is_empty() { "authid" } else { "user" }, f.reason))?;
            let secret = match (&e.password_file, e.token_source.is_empty()) {
                (Some(_), false) => {
                    return Err(err(
                        "token_source",
                        "give password_file or token_source, not both".into(),
                    ));
                }
                (None, true) => {
                    return Err(err(
                        "password_file",
                        "required (or token_source for XOAUTH2/OAUTHBEARER)".into(),
                    ));
                }
                (None, false) => AuthSecret::TokenSource(e.token_source.clone()),
                (Some(file), true) => {
                    let text = std::fs::read_to_string(file).map_err(|why| {
                        err("password_file", format!("{}: {why}", file.display()))
                    })?;
                    // A Secret mounted as a file, or `echo secret > file`, ends in a
                    // newline that is not part of the password.
                    let password = text.trim_end_matches(['\r', '\n']);
                    if password.is_empty() {
                        return Err(err("password_file", format!("{} is empty", file.display())));
                    }
                    AuthSecret::Password(Password::new(password))
                }
            };
            let mechanisms = parse_mechanisms(e.mechanisms.iter(), "mechanisms")
                .map_err(|f| err("mechanisms", f.reason))?;
            check_mechanisms_fit(&secret, &mechanisms, "mechanisms")
                .map_err(|f| err("mechanisms", f.reason))?;
            self.entries.push(AuthInfo {
                host,
                authzid,
                authid,
                secret,
                realm: Some(e.realm.clone()).filter(|r| !r.is_empty()),
                mechanisms,
            });
        }
        Ok(())
    }

    /// Every entry's token source must be configured: a typo is refused at
    /// start, not found when the first message waits for it.
    pub fn check_token_sources(
        &self,
        sources: &std::collections::BTreeMap<String, crate::TokenSourceConfig>,
    ) -> Result<(), ConfigError> {
        for e in &self.entries {
            if let Some(name) = e.token_source()
                && !sources.contains_key(name)
            {
                let host = if e.host.is_empty() {
                    "(default)"
                } else {
                    &e.host
                };
                return Err(ConfigError::new(
                    "relay_queue.token_sources",
                    name,
                    format!(
                        "the AuthInfo entry for {host} names token source {name:?}, \
                         but there is no [relay_queue.token_sources.{name}] section"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The token source of the default entry (`AuthInfo:` with no host), if any.
    pub fn lookup_default_token_source(&self) -> Option<&str> {
        self.entries
            .iter()
            .find(|e| e.host.is_empty())
            .and_then(|e| e.token_source())
    }

    /// The entry for `host`, else the default (`AuthInfo:` with no host).
    pub fn lookup(&self, host: &str) -> Option<&AuthInfo> {
        let host = normalise_host(host);
        self.entries
            .iter()
            .find(|e| e.host == host)
            .or_else(|| self.entries.iter().find(|e| e.host.is_empty()))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn entries(&self) -> &[AuthInfo] {
        &self.entries
    }
}

/// Sendmail: "You need only specify a U or I entry — they are interpreted the
/// same way". When both name the same user there is no separate authorization
/// id to send (and a server without proxy rights would refuse one).
fn identities(user: &str, authid: &str) -> Result<(Option<String>, String), FieldError> {
    match (user.is_empty(), authid.is_empty()) {
        (true, true) => Err(field_err("U", "needs U (user) or I (authentication id)")),
        (false, true) => Ok((None, user.to_owned())),
        (true, false) => Ok((None, authid.to_owned())),
        (false, false) if user == authid => Ok((None, authid.to_owned())),
        (false, false) => Ok((Some(user.to_owned()), authid.to_owned())),
    }
}

fn parse_line(line: &str) -> Result<AuthInfo, FieldError> {
    let (key, mut rest) = match line.find(char::is_whitespace) {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, ""),
    };
    let host = key
        .get(..9)
        .filter(|p| p.eq_ignore_ascii_case("AuthInfo:"))
        .map(|_| &key[9..])
        .ok_or_else(|| field_err("AuthInfo:", "the line must start with AuthInfo:HOST"))?;
    let mut fields: [Option<String>; 6] = Default::default();
    const LETTERS: [char; 6] = ['U', 'I', 'P', 'R', 'M', 'O'];
    loop {
        rest = rest.trim_start();
        if rest.is_empty() {
            break;
        }
        let Some(body) = rest.strip_prefix('"') else {
            return Err(field_err(
                "AuthInfo:",
                "each field must be quoted, like \"U:user\"",
            ));
        };
        let letter = body.chars().next().unwrap_or('?');
        let name = letter.to_string();
        let Some(end) = body.find('"') else {
            return Err(field_err(name, "no closing quote"));
        };
        let item = &body[..end];
        rest = &body[end + 1..];
        let slot = LETTERS
            .iter()
            .position(|l| l.eq_ignore_ascii_case(&letter))
            .ok_or_else(|| {
                field_err(
                    if letter.is_ascii_graphic() {
                        name.clone()
                    } else {
                        "?".to_owned()
                    },
                    "unknown field (known: U I P R M O)",
                )
            })?;
        let name = LETTERS[slot].to_string();
        let value = match item.get(1..2) {
            Some(":") => item[2..].to_owned(),
            Some("=") => {
                let raw = base64::engine::general_purpose::STANDARD
                    .decode(item[2..].trim())
                    .map_err(|_| field_err(&name, "value after = is not valid base64"))?;
                String::from_utf8(raw)
                    .map_err(|_| field_err(&name, "base64 value is not UTF-8 text"))?
            }
            _ => {
                return Err(field_err(
                    &name,
                    "the letter must be followed by : (text) or = (base64)",
                ));
            }
        };
        if fields[slot].is_some() {
            return Err(field_err(name, "given twice"));
        }
        if value.is_empty() || value.contains(['\0', '\r', '\n']) {
            return Err(field_err(name, "empty or contains NUL/CR/LF"));
        }
        fields[slot] = Some(value);
    }
    let [u, i, p, r, m, o] = fields;
    let (authzid, authid) = identities(u.as_deref().unwrap_or(""), i.as_deref().unwrap_or(""))?;
    let secret = match (p, o) {
        (Some(_), Some(_)) => {
            return Err(field_err(
                "O",
                "give P (a password) or O (a token source), not both",
            ));
        }
        (Some(p), None) => AuthSecret::Password(Password::new(p)),
        (None, Some(o)) if crate::token_source::valid_name(&o) => AuthSecret::TokenSource(o),
        (None, Some(_)) => {
            return Err(field_err(
                "O",
                "a token source name is letters, digits, '-' and '_'",
            ));
        }
        (None, None) => {
            return Err(field_err(
                "P",
                "missing (a password, or O:NAME for an OAuth2 token source, is required)",
            ));
        }
    };
    let mechanisms = match m {
        Some(m) => parse_mechanisms(m.split_whitespace(), "M")?,
        None => Vec::new(),
    };
    check_mechanisms_fit(&secret, &mechanisms, "M")?;
    Ok(AuthInfo {
        host: normalise_host(host),
        authzid,
        authid,
        secret,
        realm: r,
        mechanisms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str =
        r#"AuthInfo:mailhub.foo.com "U:mailrelay" "I:mailrelay" "P:secret" "R:foo" "M:DIGEST-MD5""#;

    fn parse(text: &str) -> Result<AuthInfoMap, AuthInfoError> {
        AuthInfoMap::parse(text, Path::new("authinfo"))
    }

    fn field_of(e: AuthInfoError) -> (usize, String) {
        match e {
            AuthInfoError::Line { line, field, .. } => (line, field),
            other => panic!("not a line error: {other}"),
        }
    }

    #[test]
    fn seed_line_as_written_is_accepted() {
        let map = parse(SEED).unwrap();
        let e = map.lookup("mailhub.foo.com").unwrap();
        assert_eq!(e.authid, "mailrelay");
        assert_eq!(e.authzid, None, "U equal to I is no separate authzid");
        assert_eq!(e.secret, AuthSecret::Password(Password::new("secret")));
        assert_eq!(e.realm.as_deref(), Some("foo"));
        assert_eq!(e.mechanisms, [Mechanism::DigestMd5]);
        assert!(map.lookup("other.example").is_none());
    }

    #[test]
    fn lookup_ignores_case_brackets_and_falls_back_to_the_default_entry() {
        let map = parse(&format!(
            "# comment\n\n{SEED}\nAuthInfo: \"I:any\" \"P:pw\"\n"
        ))
        .unwrap();
        assert_eq!(map.lookup("MAILHUB.foo.com.").unwrap().authid, "mailrelay");
        assert_eq!(map.lookup("[10.0.0.1]").unwrap().authid, "any");
    }

    #[test]
    fn base64_values_per_sendmail_are_decoded() {
        // "P=c2VjcmV0" is "secret" in base64 (sendmail cf/README).
        let map = parse(r#"AuthInfo:h "U:u" "P=c2VjcmV0" "M:CRAM-MD5 SCRAM-SHA-256""#).unwrap();
        let e = map.lookup("h").unwrap();
        assert_eq!(e.secret, AuthSecret::Password(Password::new("secret")));
        assert_eq!(e.mechanisms, [Mechanism::CramMd5, Mechanism::ScramSha256]);
    }

    #[test]
    fn different_user_and_authid_keep_the_authzid() {
        let map = parse(r#"AuthInfo:h "U:boss" "I:relay" "P:x""#).unwrap();
        let e = map.lookup("h").unwrap();
        assert_eq!(
            (e.authzid.as_deref(), e.authid.as_str()),
            (Some("boss"), "relay")
        );
    }

    #[test]
    fn malformed_lines_are_refused_naming_line_and_field() {
        let cases = [
            (r#"AuthInfo:h "U:u" "P:x" "M:DIGEST-MD5 NTLM""#, "M"),
            (r#"AuthInfo:h "U:u" "M:PLAIN""#, "P"),
            (r#"AuthInfo:h "P:x""#, "U"),
            (r#"AuthInfo:h "U:u" "P:x" "X:what""#, "X"),
            (r#"AuthInfo:h "U:u" "P:unterminated"#, "P"),
            (r#"AuthInfo:h "U:u" "P=!!notbase64" "#, "P"),
            (r#"AuthInfo:h "U:u" "U:v" "P:x""#, "U"),
            (r#"AuthInfo:h "Uu" "P:x""#, "U"),
            (r#"AuthInfo:h U:u "P:x""#, "AuthInfo:"),
            (r#"Auth:h "U:u" "P:x""#, "AuthInfo:"),
            (r#"AuthInfo:h "U:" "P:x""#, "U"),
            (r#"AuthInfo:h "U:u" "P:x" "O:hub""#, "O"),
            (r#"AuthInfo:h "U:u" "O:../etc""#, "O"),
            (r#"AuthInfo:h "U:u" "O:hub" "M:PLAIN""#, "M"),
            (r#"AuthInfo:h "U:u" "P:x" "M:XOAUTH2""#, "M"),
        ];
        for (line, field) in cases {
            let err = parse(&format!("# header\n{SEED}\n{line}\n")).unwrap_err();
            let text = err.to_string();
            assert_eq!(field_of(err), (3, field.to_owned()), "{line}");
            assert!(text.starts_with("authinfo line 3: field "), "{text}");
        }
    }

    #[test]
    fn o_names_a_token_source_instead_of_a_password() {
        let map =
            parse(r#"AuthInfo:smtp.office365.com "U:relay@contoso.com" "O:m365" "M:XOAUTH2""#)
                .unwrap();
        let e = map.lookup("smtp.office365.com").unwrap();
        assert_eq!(e.token_source(), Some("m365"));
        assert_eq!(e.authid, "relay@contoso.com");
        assert_eq!(e.mechanisms, [Mechanism::XOAuth2]);
        let mut sources = std::collections::BTreeMap::new();
        let err = map.check_token_sources(&sources).unwrap_err();
        assert!(
            err.to_string().contains("[relay_queue.token_sources.m365]"),
            "{err}"
        );
        sources.insert(
            "m365".to_owned(),
            crate::TokenSourceConfig {
                grant: crate::OAuthGrant::ClientCredentials,
                token_url: "https://login.example/token".into(),
                client_id: "id".into(),
                client_secret_file: None,
                scope: String::new(),
                client_auth: Default::default(),
                ca_file: None,
            },
        );
        map.check_token_sources(&sources).unwrap();
    }

    #[test]
    fn a_host_listed_twice_is_refused() {
        let err = parse(&format!("{SEED}\n{SEED}\n")).unwrap_err();
        assert_eq!(field_of(err.clone()), (2, "AuthInfo:".to_owned()));
        assert!(err.to_string().contains("first on line 1"), "{err}");
    }

    #[test]
    fn errors_and_debug_never_show_the_password() {
        let map = parse(r#"AuthInfo:h "U:u" "P:hunter2-secret""#).unwrap();
        assert!(!format!("{map:?}").contains("hunter2"));
        let err = parse(r#"AuthInfo:h "U:u" "P:hunter2-secret" "M:NTLM""#).unwrap_err();
        assert!(!err.to_string().contains("hunter2"));
        assert!(!format!("{err:?}").contains("hunter2"));
    }
}
