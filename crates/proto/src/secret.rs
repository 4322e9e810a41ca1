//! Stored secrets on the wire (`authrelay.credentials.v1.Secret`) and back:
//! one conversion for credential-store, which sends and imports them, and
//! sasl-auth, which receives them.

use authrelay_sasl::StoredSecret;

use crate::credentials::v1 as pb;

impl From<&StoredSecret> for pb::Secret {
    fn from(s: &StoredSecret) -> pb::Secret {
        use pb::secret::Kind;
        let scram =
            |salt: &[u8], iterations: u32, stored_key: &[u8], server_key: &[u8]| pb::Scram {
                salt: salt.to_vec(),
                iterations,
                stored_key: stored_key.to_vec(),
                server_key: server_key.to_vec(),
            };
        let kind = match s {
            StoredSecret::Password { phc } => Kind::Password(pb::PasswordHash { phc: phc.clone() }),
            StoredSecret::CramMd5 { inner, outer } => Kind::CramMd5(pb::CramMd5 {
                inner: inner.to_vec(),
                outer: outer.to_vec(),
            }),
            StoredSecret::DigestMd5 {
                ha1,
                ha1_qualified,
                ha1_offered,
            } => Kind::DigestMd5(pb::DigestMd5 {
                ha1: ha1.to_vec(),
                ha1_qualified: ha1_qualified.map(|h| h.to_vec()).unwrap_or_default(),
                ha1_offered: ha1_offered
                    .iter()
                    .map(|(realm, h)| pb::OfferedRealmHa1 {
                        realm: realm.clone(),
                        ha1: h.to_vec(),
                    })
                    .collect(),
            }),
            StoredSecret::ScramSha1 {
                salt,
                iterations,
                stored_key,
                server_key,
            } => Kind::ScramSha1(scram(salt, *iterations, stored_key, server_key)),
            StoredSecret::ScramSha256 {
                salt,
                iterations,
                stored_key,
                server_key,
            } => Kind::ScramSha256(scram(salt, *iterations, stored_key, server_key)),
        };
        pb::Secret { kind: Some(kind) }
    }
}

/// Checked for shape, since the wire types are looser than the stored ones
/// (a `bytes` field has no length); the error says what is wrong, never
/// with any of the secret's bytes.
impl TryFrom<pb::Secret> for StoredSecret {
    type Error = &'static str;

    fn try_from(s: pb::Secret) -> Result<StoredSecret, &'static str> {
        use pb::secret::Kind;
        fn words(v: &[u32]) -> Result<[u32; 4], &'static str> {
            v.try_into().map_err(|_| "CRAM-MD5 context is not 4 words")
        }
        fn key<const N: usize>(k: &[u8]) -> Result<[u8; N], &'static str> {
            k.try_into().map_err(|_| "SCRAM key of the wrong length")
        }
        fn scram_ok(s: &pb::Scram) -> Result<(), &'static str> {
            if s.salt.is_empty() || s.iterations == 0 {
                return Err("SCRAM secret without salt or iterations");
            }
            Ok(())
        }
        Ok(match s.kind.ok_or("empty")? {
            Kind::Password(p) => {
                // Only Argon2 PHC strings: sasl-auth verifies nothing else.
                if !["$argon2id$", "$argon2i$", "$argon2d$"]
                    .iter()
                    .any(|prefix| p.phc.starts_with(prefix))
                {
                    return Err("password hash is not an Argon2 PHC string");
                }
                StoredSecret::Password { phc: p.phc }
            }
            Kind::CramMd5(c) => StoredSecret::CramMd5 {
                inner: words(&c.inner)?,
                outer: words(&c.outer)?,
            },
            Kind::DigestMd5(d) => StoredSecret::DigestMd5 {
                ha1: d
                    .ha1
                    .as_slice()
                    .try_into()
                    .map_err(|_| "DIGEST-MD5 HA1 is not 16 bytes")?,
                // Empty when only a bare HA1 was imported.
                ha1_qualified: match d.ha1_qualified.as_slice() {
                    [] => None,
                    h => Some(
                        h.try_into()
                            .map_err(|_| "DIGEST-MD5 qualified HA1 is not 16 bytes")?,
                    ),
                },
                ha1_offered: d
                    .ha1_offered
                    .iter()
                    .map(|o| {
                        let h: [u8; 16] = o
                            .ha1
                            .as_slice()
                            .try_into()
                            .map_err(|_| "DIGEST-MD5 offered-realm HA1 is not 16 bytes")?;
                        Ok((o.realm.clone(), h))
                    })
                    .collect::<Result<_, &'static str>>()?,
            },
            Kind::ScramSha1(x) => {
                scram_ok(&x)?;
                StoredSecret::ScramSha1 {
                    stored_key: key(&x.stored_key)?,
                    server_key: key(&x.server_key)?,
                    salt: x.salt,
                    iterations: x.iterations,
                }
            }
            Kind::ScramSha256(x) => {
                scram_ok(&x)?;
                StoredSecret::ScramSha256 {
                    stored_key: key(&x.stored_key)?,
                    server_key: key(&x.server_key)?,
                    salt: x.salt,
                    iterations: x.iterations,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use authrelay_sasl::{SecretFamily, SecretParams, derive_secret};

    use super::*;

    #[test]
    fn every_family_goes_over_the_wire_and_back_unchanged() {
        let params = SecretParams {
            scram_iterations: 4096,
            argon2_m_cost_kib: 8,
            argon2_t_cost: 1,
            argon2_p_cost: 1,
            // The address hashed in another offered realm crosses the wire too.
            digest_realms: vec!["host.example".into()],
        };
        for family in SecretFamily::ALL {
            let secret = derive_secret(family, "test", "mailserver.foo.com", b"pw", &params);
            let wire = pb::Secret::from(&secret);
            assert!(StoredSecret::try_from(wire).unwrap() == secret, "{family}");
        }
    }

    #[test]
    fn a_secret_of_the_wrong_shape_is_refused_saying_what_is_wrong() {
        use pb::secret::Kind;
        let with = |kind| pb::Secret { kind: Some(kind) };
        let cases = [
            (pb::Secret { kind: None }, "empty"),
            (
                with(Kind::Password(pb::PasswordHash {
                    phc: "$1$md5crypt".into(),
                })),
                "Argon2",
            ),
            (
                with(Kind::CramMd5(pb::CramMd5 {
                    inner: vec![1, 2, 3],
                    outer: vec![1, 2, 3, 4],
                })),
                "4 words",
            ),
            (
                with(Kind::DigestMd5(pb::DigestMd5 {
                    ha1: vec![0; 16],
                    ha1_qualified: vec![0; 15],
                    ..Default::default()
                })),
                "qualified HA1",
            ),
            (
                with(Kind::DigestMd5(pb::DigestMd5 {
                    ha1: vec![0; 16],
                    ha1_qualified: vec![0; 16],
                    ha1_offered: vec![pb::OfferedRealmHa1 {
                        realm: "r".into(),
                        ha1: vec![0; 17],
                    }],
                })),
                "offered-realm HA1",
            ),
            (
                with(Kind::ScramSha256(pb::Scram {
                    salt: vec![],
                    iterations: 4096,
                    stored_key: vec![0; 32],
                    server_key: vec![0; 32],
                })),
                "without salt",
            ),
            (
                with(Kind::ScramSha1(pb::Scram {
                    salt: vec![1],
                    iterations: 4096,
                    stored_key: vec![0; 32],
                    server_key: vec![0; 20],
                })),
                "wrong length",
            ),
        ];
        for (wire, why) in cases {
            let err = StoredSecret::try_from(wire).unwrap_err();
            assert!(err.contains(why), "{err} lacks {why}");
        }
    }
}
