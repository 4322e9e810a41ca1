//! What a user name, a realm and a password may be. Checked before anything
//! is derived or written, so a refused request writes nothing.

use crate::StoreError;

pub const MAX_NAME: usize = 255;
pub const MAX_REALM: usize = 255;
/// Longer passwords buy nothing and make Argon2 input a DoS lever.
pub const MAX_PASSWORD: usize = 1024;

pub fn check_name(name: &str) -> Result<(), StoreError> {
    if name.is_empty() {
        return Err(StoreError::InvalidName("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(StoreError::InvalidName("longer than 255 bytes"));
    }
    if name.chars().any(char::is_control) {
        return Err(StoreError::InvalidName("contains a control character"));
    }
    if name.chars().any(char::is_whitespace) {
        return Err(StoreError::InvalidName("contains white space"));
    }
    // A login is NAME@REALM split at the last '@': a name holding '@' could
    // never be reached unambiguously.
    if name.contains('@') {
        return Err(StoreError::InvalidName(
            "contains '@' (give the realm with --realm)",
        ));
    }
    Ok(())
}

pub fn check_realm(realm: &str) -> Result<(), StoreError> {
    if realm.is_empty() {
        return Err(StoreError::InvalidRealm("empty"));
    }
    if realm.len() > MAX_REALM {
        return Err(StoreError::InvalidRealm("longer than 255 bytes"));
    }
    if realm
        .chars()
        .any(|c| c.is_control() || c.is_whitespace() || c == '@' || c == '"' || c == '\\')
    {
        return Err(StoreError::InvalidRealm(
            "contains a control character, white space, '@', '\"' or '\\'",
        ));
    }
    Ok(())
}

pub fn check_password(password: &[u8]) -> Result<(), StoreError> {
    if password.is_empty() {
        return Err(StoreError::InvalidPassword("empty"));
    }
    if password.len() > MAX_PASSWORD {
        return Err(StoreError::InvalidPassword("longer than 1024 bytes"));
    }
    if std::str::from_utf8(password).is_err() {
        return Err(StoreError::InvalidPassword("not UTF-8"));
    }
    if password.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n') {
        return Err(StoreError::InvalidPassword(
            "contains NUL, CR or LF (no SASL client could send it)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_what_cannot_log_in() {
        assert!(check_name("test").is_ok());
        for bad in ["", "a b", "a\u{7}b", "a@b", &"x".repeat(256)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn realms_refuse_separators() {
        assert!(check_realm("mailserver.foo.com").is_ok());
        for bad in ["", "a@b", "a b", "a\"b", "a\nb"] {
            assert!(check_realm(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn passwords_have_sane_bounds() {
        assert!(check_password(b"secret").is_ok());
        assert!(check_password(b"").is_err());
        assert!(check_password(&[b'x'; 1025]).is_err());
        assert!(check_password(b"a\0b").is_err());
        assert!(check_password(&[0xff, 0xfe]).is_err());
    }
}
