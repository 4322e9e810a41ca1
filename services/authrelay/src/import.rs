//! `authrelay user import`: users from a Dovecot passwd-file or a Cyrus
//! sasldb2 dump, so nobody has to re-enter a password to move here.
//!
//! What a line gives depends on what it holds: a clear-text password gives
//! every family (the store derives them, as for `user add`); a stored
//! CRAM-MD5 context, SCRAM keys, DIGEST-MD5 HA1 or Argon2 hash gives that
//! family alone, imported as is (ImportUser). One-way crypt hashes verify
//! no SASL mechanism we run and are skipped, each with its reason.

use std::path::PathBuf;

use authrelay_config::Config;
use authrelay_proto::credentials::v1 as cpb;
use authrelay_proto::credentials::v1::credential_store_client::CredentialStoreClient;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;

use super::{admin_request, status_error};

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum Format {
    /// Dovecot passwd-file: `user[@domain]:{SCHEME}value[:uid:gid:…]`.
    Dovecot,
    /// Cyrus sasldb2 as text: `db_dump -p` output (keys `user\00realm\00userPassword`)
    /// or `user@realm: userPassword: password` lines.
    Sasldb,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    #[arg(long, value_enum)]
    format: Format,
    /// Realm for entries that name none; default: the configured default realm.
    #[arg(long, short = 'u')]
    realm: Option<String>,
    /// Mechanisms for users imported from a clear-text password; default: configured.
    #[arg(long = "mech", value_delimiter = ',')]
    mechanisms: Vec<String>,
    /// Replace users that exist already (default: skip them).
    #[arg(long)]
    replace: bool,
    /// The file to read (it holds passwords or password equivalents: keep it private).
    file: PathBuf,
}

/// What one entry of the file gives.
#[derive(Debug, PartialEq)]
pub enum Credential {
    /// A clear-text password: the store derives every configured family.
    Password(Vec<u8>),
    /// Secrets derived elsewhere, stored as they are.
    Secrets(Vec<cpb::Secret>),
}

#[derive(Debug, PartialEq)]
pub struct Entry {
    pub line: usize,
    pub name: String,
    pub realm: String,
    pub credential: Credential,
}

#[derive(Debug, PartialEq)]
pub struct Skip {
    pub line: usize,
    pub who: String,
    pub reason: String,
}

fn split_login(login: &str, default_realm: &str) -> (String, String) {
    // NAME@REALM splits at the last '@', as a login does.
    match login.rsplit_once('@') {
        Some((n, r)) => (n.to_owned(), r.to_owned()),
        None => (login.to_owned(), default_realm.to_owned()),
    }
}

fn secret(kind: cpb::secret::Kind) -> Credential {
    Credential::Secrets(vec![cpb::Secret { kind: Some(kind) }])
}

/// Dovecot's `{SCHEME}value` → what it gives, or why not.
fn dovecot_scheme(scheme: &str, value: &str, has_realm: bool) -> Result<Credential, String> {
    use cpb::secret::Kind;
    let upper = scheme.to_ascii_uppercase();
    // Dovecot allows an encoding suffix on any scheme: {PLAIN.B64}, {CRAM-MD5.HEX}.
    let (base, encoding) = match upper.rsplit_once('.') {
        Some((b, e @ ("B64" | "BASE64" | "HEX"))) => (b.to_owned(), Some(e)),
        _ => (upper.clone(), None),
    };
    let decoded = |default_hex: bool| -> Result<Vec<u8>, String> {
        match encoding {
            Some("HEX") => hex::decode(value).map_err(|_| "value is not hex".to_owned()),
            Some(_) => B64
                .decode(value)
                .map_err(|_| "value is not base64".to_owned()),
            None if default_hex => hex::decode(value).map_err(|_| "value is not hex".to_owned()),
            None => Ok(value.as_bytes().to_vec()),
        }
    };
    match base.as_str() {
        "PLAIN" | "CLEAR" | "CLEARTEXT" => Ok(Credential::Password(decoded(false)?)),
        // Dovecot's hmac_md5_get_cram_context(): the outer MD5 state, then
        // the inner one, each as four little-endian 32-bit words.
        "CRAM-MD5" | "HMAC-MD5" => {
            let b = decoded(true)?;
            if b.len() != 32 {
                return Err("CRAM-MD5 context is not 32 bytes".into());
            }
            let words = |s: &[u8]| -> Vec<u32> {
                s.chunks_exact(4)
                    .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect()
            };
            Ok(secret(Kind::CramMd5(cpb::CramMd5 {
                outer: words(&b[..16]),
                inner: words(&b[16..]),
            })))
        }
        // Dovecot computes MD5(user:realm:password) from the login split at
        // its last '@' — our NAME@REALM — and with an empty realm without one.
        "DIGEST-MD5" if has_realm => {
            let b = decoded(true)?;
            if b.len() != 16 {
                return Err("DIGEST-MD5 hash is not 16 bytes".into());
            }
            // Only the bare form: `user@realm` logins need the password.
            Ok(secret(Kind::DigestMd5(cpb::DigestMd5 {
                ha1: b,
                ..Default::default()
            })))
        }
        "DIGEST-MD5" => Err(
            "DIGEST-MD5 hash of a login without @realm was made with an empty realm, which no user here has"
                .into(),
        ),
        // Dovecot: "iterations,salt,StoredKey,ServerKey", all base64 but the count.
        "SCRAM-SHA-1" | "SCRAM-SHA-256" => {
            let parts: Vec<&str> = value.split(',').collect();
            let [iter, salt, stored, server] = parts.as_slice() else {
                return Err("SCRAM value is not iterations,salt,StoredKey,ServerKey".into());
            };
            let b = |s: &str| B64.decode(s).map_err(|_| "SCRAM field is not base64".to_owned());
            let scram = cpb::Scram {
                iterations: iter
                    .parse()
                    .map_err(|_| "SCRAM iteration count is not a number".to_owned())?,
                salt: b(salt)?,
                stored_key: b(stored)?,
                server_key: b(server)?,
            };
            Ok(secret(if base == "SCRAM-SHA-1" {
                Kind::ScramSha1(scram)
            } else {
                Kind::ScramSha256(scram)
            }))
        }
        "ARGON2ID" | "ARGON2I" => Ok(secret(Kind::Password(cpb::PasswordHash {
            phc: value.to_owned(),
        }))),
        other => Err(format!(
            "scheme {{{other}}} is a one-way hash that verifies no SASL mechanism here; the user must set a new password"
        )),
    }
}

pub fn parse_dovecot(text: &str, default_realm: &str) -> (Vec<Entry>, Vec<Skip>) {
    let (mut entries, mut skips) = (Vec::new(), Vec::new());
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let l = raw.trim_end_matches('\r');
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let mut fields = l.splitn(3, ':');
        let login = fields.next().unwrap_or_default();
        let Some(pass) = fields.next() else {
            skips.push(Skip {
                line,
                who: login.to_owned(),
                reason: "no password field".into(),
            });
            continue;
        };
        let (name, realm) = split_login(login, default_realm);
        let who = format!("{name}@{realm}");
        let result = match pass.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((scheme, value)) => dovecot_scheme(scheme, value, login.contains('@')),
            None if pass.is_empty() => Err("empty password field".into()),
            None => Err(
                "no {SCHEME} prefix, and dovecot's default_pass_scheme is not known here".into(),
            ),
        };
        match result {
            Ok(credential) => entries.push(Entry {
                line,
                name,
                realm,
                credential,
            }),
            Err(reason) => skips.push(Skip { line, who, reason }),
        }
    }
    (entries, skips)
}

/// `db_dump -p` escapes every non-printable byte as `\XX` and `\` as `\\`.
fn db_dump_unescape(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'\\') {
                out.push(b'\\');
                i += 2;
            } else {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 3;
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn sasldb_property(
    line: usize,
    name: &str,
    realm: &str,
    prop: &str,
    value: Option<Vec<u8>>,
    entries: &mut Vec<Entry>,
    skips: &mut Vec<Skip>,
) {
    let who = format!("{name}@{realm}");
    match (prop, value) {
        ("userPassword", Some(v)) if !v.is_empty() => entries.push(Entry {
            line,
            name: name.to_owned(),
            realm: realm.to_owned(),
            credential: Credential::Password(v),
        }),
        ("userPassword", _) => skips.push(Skip {
            line,
            who,
            reason: "no password in this listing (sasldblistusers2 prints none; dump the database with `db_dump -p`)".into(),
        }),
        (other, _) => skips.push(Skip {
            line,
            who,
            reason: format!("property {other} is not a password"),
        }),
    }
}

pub fn parse_sasldb(text: &str) -> (Vec<Entry>, Vec<Skip>) {
    let (mut entries, mut skips) = (Vec::new(), Vec::new());
    let is_db_dump = text.lines().any(|l| l.trim() == "HEADER=END");
    if is_db_dump {
        // After HEADER=END: a key line and a value line, each led by one space.
        let mut in_data = false;
        let mut pending: Option<(usize, String)> = None;
        for (i, l) in text.lines().enumerate() {
            let line = i + 1;
            let l = l.trim_end_matches('\r');
            if l == "HEADER=END" {
                in_data = true;
                continue;
            }
            if l == "DATA=END" {
                in_data = false;
                continue;
            }
            if !in_data {
                continue;
            }
            let Some(body) = l.strip_prefix(' ') else {
                continue;
            };
            match pending.take() {
                None => pending = Some((line, body.to_owned())),
                Some((kline, key)) => {
                    let (Some(k), Some(v)) = (db_dump_unescape(&key), db_dump_unescape(body))
                    else {
                        skips.push(Skip {
                            line: kline,
                            who: key,
                            reason: "bad \\XX escape".into(),
                        });
                        continue;
                    };
                    // Cyrus sasldb key: user NUL realm NUL property.
                    let parts: Vec<&[u8]> = k.split(|&b| b == 0).collect();
                    let [n, r, p] = parts.as_slice() else {
                        skips.push(Skip {
                            line: kline,
                            who: String::from_utf8_lossy(&k).replace('\0', "\\00"),
                            reason: "key is not user\\00realm\\00property".into(),
                        });
                        continue;
                    };
                    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
                    sasldb_property(
                        kline,
                        &s(n),
                        &s(r),
                        &s(p),
                        Some(v),
                        &mut entries,
                        &mut skips,
                    );
                }
            }
        }
        return (entries, skips);
    }
    for (i, l) in text.lines().enumerate() {
        let line = i + 1;
        let l = l.trim_end_matches('\r');
        if l.trim().is_empty() || l.trim_start().starts_with('#') {
            continue;
        }
        let mut parts = l.splitn(3, ':');
        let login = parts.next().unwrap_or_default().trim();
        let prop = parts.next().map(str::trim).unwrap_or_default();
        // The password is everything after "prop:" less one separating space.
        let value = parts
            .next()
            .map(|v| v.strip_prefix(' ').unwrap_or(v).as_bytes().to_vec());
        let Some((name, realm)) = login.rsplit_once('@') else {
            skips.push(Skip {
                line,
                who: login.to_owned(),
                reason: "not user@realm: property".into(),
            });
            continue;
        };
        sasldb_property(line, name, realm, prop, value, &mut entries, &mut skips);
    }
    (entries, skips)
}

pub async fn run(
    cfg: &Config,
    client: &mut CredentialStoreClient<tonic::transport::Channel>,
    a: ImportArgs,
) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&a.file)
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    let default_realm = a.realm.clone().unwrap_or_else(|| cfg.default_realm.clone());
    let (entries, mut skips) = match a.format {
        Format::Dovecot => parse_dovecot(&text, &default_realm),
        Format::Sasldb => parse_sasldb(&text),
    };
    let eps = cfg.endpoints.credential_store.as_slice();
    let mut imported = 0usize;
    for e in entries {
        let who = format!("{}@{}", e.name, e.realm);
        let result = match e.credential {
            Credential::Password(password) => client
                .put_user(admin_request(
                    cfg,
                    cpb::PutUserRequest {
                        name: e.name.clone(),
                        realm: e.realm.clone(),
                        password,
                        mechanisms: a.mechanisms.clone(),
                        create_only: !a.replace,
                        keep_mechanisms: false,
                    },
                )?)
                .await
                .map(|r| r.into_inner().mechanisms),
            Credential::Secrets(secrets) => client
                .import_user(admin_request(
                    cfg,
                    cpb::ImportUserRequest {
                        name: e.name.clone(),
                        realm: e.realm.clone(),
                        secrets,
                        replace: a.replace,
                    },
                )?)
                .await
                .map(|r| r.into_inner().mechanisms),
        };
        match result {
            Ok(mechs) => {
                imported += 1;
                println!(
                    "imported user: {} realm: {} mechs: {}",
                    e.name,
                    e.realm,
                    mechs.join(" ")
                );
            }
            Err(s) => match s.code() {
                tonic::Code::AlreadyExists => skips.push(Skip {
                    line: e.line,
                    who,
                    reason: "exists already (use --replace)".into(),
                }),
                tonic::Code::InvalidArgument => skips.push(Skip {
                    line: e.line,
                    who,
                    reason: s.message().to_owned(),
                }),
                // The store is unreachable or refuses us: stop, do not skip.
                _ => return Err(status_error("user import", eps, s)),
            },
        }
    }
    skips.sort_by_key(|s| s.line);
    for s in &skips {
        println!("skipped line {} ({}): {}", s.line, s.who, s.reason);
    }
    println!("{imported} imported, {} skipped", skips.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use authrelay_sasl::{SecretFamily, SecretParams, StoredSecret, derive_secret};

    #[test]
    fn dovecot_cram_md5_context_matches_doveadm_output() {
        // `doveadm pw -s CRAM-MD5` for "tprzo.40", as published in a setup script.
        let (e, s) = parse_dovecot(
            "loulou@domaine.tld:{CRAM-MD5}017ec858afebdc0a0bf7ab508169465750335f608ae201ca22b333b0aaa84f3a:::::\n",
            "x",
        );
        assert!(s.is_empty(), "{s:?}");
        let Credential::Secrets(sec) = &e[0].credential else {
            panic!()
        };
        let Some(cpb::secret::Kind::CramMd5(c)) = &sec[0].kind else {
            panic!()
        };
        let StoredSecret::CramMd5 { inner, outer } = derive_secret(
            SecretFamily::CramMd5,
            "",
            "",
            b"tprzo.40",
            &SecretParams::default(),
        ) else {
            panic!()
        };
        assert_eq!(
            (c.inner.as_slice(), c.outer.as_slice()),
            (&inner[..], &outer[..])
        );
        assert_eq!(
            (e[0].name.as_str(), e[0].realm.as_str()),
            ("loulou", "domaine.tld")
        );
    }

    #[test]
    fn dovecot_plain_scram_and_skipped_crypt_lines() {
        let text = "# comment\n\
            bob:{PLAIN}secret:1000:1000::/home/bob::\n\
            carol@example.org:{CLEAR.B64}c2VjcmV0\n\
            dave@example.org:{SCRAM-SHA-256}4096,c2FsdA==,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=,AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n\
            erin@example.org:{SHA512-CRYPT}$6$abc$def\n\
            frank@example.org:nohash\n";
        let (e, s) = parse_dovecot(text, "default.realm");
        assert_eq!(e.len(), 3, "{e:?}");
        assert_eq!(e[0].credential, Credential::Password(b"secret".to_vec()));
        assert_eq!(e[0].realm, "default.realm");
        assert_eq!(e[1].credential, Credential::Password(b"secret".to_vec()));
        assert!(matches!(&e[2].credential, Credential::Secrets(v)
            if matches!(&v[0].kind, Some(cpb::secret::Kind::ScramSha256(x)) if x.iterations == 4096 && x.salt == b"salt")));
        assert_eq!(s.len(), 2);
        assert!(s[0].reason.contains("SHA512-CRYPT"), "{s:?}");
        assert!(s[1].reason.contains("no {SCHEME}"), "{s:?}");
    }

    #[test]
    fn sasldb_db_dump_and_listing_forms() {
        let dump = "VERSION=3\nformat=print\ntype=hash\ndb_pagesize=4096\nHEADER=END\n \
            test\\00mailserver.foo.com\\00userPassword\n tanstaaf\\5c\\\\x\n \
            test\\00mailserver.foo.com\\00cmusaslsecretOTP\n abc\nDATA=END\n";
        let (e, s) = parse_sasldb(dump);
        assert_eq!(e.len(), 1, "{e:?} {s:?}");
        assert_eq!(e[0].name, "test");
        assert_eq!(e[0].realm, "mailserver.foo.com");
        assert_eq!(
            e[0].credential,
            Credential::Password(b"tanstaaf\\\\x".to_vec())
        );
        assert!(s[0].reason.contains("cmusaslsecretOTP"));

        let listing = "test@mailserver.foo.com: userPassword\nann@r.example: userPassword: p:w\n";
        let (e, s) = parse_sasldb(listing);
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].credential, Credential::Password(b"p:w".to_vec()));
        assert!(s[0].reason.contains("db_dump -p"), "{s:?}");
    }
}
