use super::*;

fn load_str(toml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let dir = std::env::temp_dir().join(format!("authrelay-config-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{}.toml", toml.len() + env.len() * 7919));
    std::fs::write(&path, toml).unwrap();
    let env = env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned()));
    Config::load_with_env(Some(&path), env)
}

#[test]
fn defaults_are_valid() {
    let cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
    assert_eq!(cfg.frontend.listeners[0].address.port(), 2587);
    assert!(cfg.offered_mechanisms().len() >= 6);
}

#[test]
fn sendmail_style_mechanism_list_is_accepted() {
    let cfg = load_str(
        "[sasl]\nmechanisms = \"DIGEST-MD5 CRAM-MD5 LOGIN\"\ntrusted = \"DIGEST-MD5 CRAM-MD5 LOGIN\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.sasl.mechanisms.as_slice(),
        ["DIGEST-MD5", "CRAM-MD5", "LOGIN"]
    );
}

#[test]
fn unknown_mechanism_is_refused_naming_key_and_value() {
    let err = load_str(
        "[sasl]\nmechanisms = [\"PLAIN\", \"NTLM\"]\ntrusted = []\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "sasl.mechanisms");
    assert_eq!(err.value, "NTLM");
    assert!(err.to_string().contains("unknown SASL mechanism"));
}

#[test]
fn trusted_must_be_offered() {
    let err = load_str(
        "[sasl]\nmechanisms = [\"PLAIN\"]\ntrusted = [\"CRAM-MD5\"]\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "sasl.trusted");
}

#[test]
fn environment_overrides_file() {
    let cfg = load_str(
        "[frontend]\nmax_recipients = 10\n",
        &[
            ("AUTHRELAY__FRONTEND__MAX_RECIPIENTS", "42"),
            ("AUTHRELAY__REDIS__URL", "redis://127.0.0.1:1/"),
            ("AUTHRELAY__ENDPOINTS__SASL_AUTH", "http://a:1,http://b:2"),
        ],
    )
    .unwrap();
    assert_eq!(cfg.frontend.max_recipients, 42);
    assert_eq!(cfg.redis.url, "redis://127.0.0.1:1/");
    assert_eq!(cfg.endpoints.sasl_auth.len(), 2);
}

#[test]
fn wrong_type_names_the_key() {
    let err = load_str("[frontend]\nmax_recipients = \"many\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("max_recipients"), "{err}");
}

#[test]
fn unknown_key_is_refused() {
    let err = load_str("[frontend]\nmax_recipiants = 5\n", &[]).unwrap_err();
    assert!(err.to_string().contains("max_recipiants"), "{err}");
}

#[test]
fn line_length_below_rfc_minimum_is_refused() {
    let err = load_str("[frontend]\nmax_line_length = 100\n", &[]).unwrap_err();
    assert_eq!(err.key, "frontend.max_line_length");
    assert!(err.reason.contains("RFC 5321"));
}

#[test]
fn postgres_backend_needs_url() {
    let err = load_str("[credential_store]\nbackend = \"postgres\"\n", &[]).unwrap_err();
    assert_eq!(err.key, "credential_store.database_url");
}

#[test]
fn postgres_backend_needs_an_encryption_key_file() {
    let pg = "[credential_store]\nbackend = \"postgres\"\ndatabase_url = \"postgres://u@h/db\"\n";
    let err = load_str(pg, &[]).unwrap_err();
    assert_eq!(err.key, "credential_store.encryption_key_file");
    assert!(err.to_string().contains("postgres"), "{err}");
    let with_key = format!("{pg}encryption_key_file = \"/run/secrets/credential-store.key\"\n");
    assert!(load_str(&with_key, &[]).is_ok());
    // The file backend needs none: it seals with a key it generates.
    assert!(load_str("[credential_store]\nbackend = \"file\"\n", &[]).is_ok());
}

#[test]
fn bad_trusted_network_is_refused() {
    let err = load_str("[frontend]\ntrusted_networks = [\"10.0.0.0/33\"]\n", &[]).unwrap_err();
    assert_eq!(err.key, "frontend.trusted_networks");
    let err = load_str("[frontend]\nxtrace_networks = [\"loopback\"]\n", &[]).unwrap_err();
    assert_eq!(
        (err.key.as_str(), err.value.as_str()),
        ("frontend.xtrace_networks", "loopback")
    );
}

#[test]
fn missing_file_is_refused() {
    let err = Config::load_with_env(
        Some(Path::new("/nonexistent/authrelay.toml")),
        std::iter::empty(),
    )
    .unwrap_err();
    assert_eq!(err.reason, "no such file");
}

#[test]
fn effective_config_round_trips_through_toml() {
    let cfg = Config::default();
    let text = cfg.to_toml();
    let back: Config = toml::from_str(&text).unwrap();
    assert_eq!(
        back.frontend.max_message_size,
        cfg.frontend.max_message_size
    );
}

#[test]
fn internal_tls_is_off_by_default_and_https_endpoints_need_it() {
    let cfg = Config::load_with_env(None, std::iter::empty()).unwrap();
    assert!(!cfg.internal_tls.enabled);
    let err = load_str(
        "[endpoints]\nsasl_auth = \"https://sasl-auth-headless:7341\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "endpoints.sasl_auth");
    assert!(err.reason.contains("internal_tls.enabled"), "{err}");
}

#[test]
fn internal_tls_enabled_needs_cert_key_ca_files_and_https_endpoints() {
    let dir = std::env::temp_dir().join(format!("authrelay-config-mtls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(dir.join(f), "pem").unwrap();
    }
    let d = dir.display();
    let https = "AUTHRELAY__ENDPOINTS__";
    let env_ok: Vec<(String, String)> = [
        ("AUTHRELAY__INTERNAL_TLS__ENABLED", "true".to_owned()),
        ("AUTHRELAY__INTERNAL_TLS__CERT", format!("{d}/tls.crt")),
        ("AUTHRELAY__INTERNAL_TLS__KEY", format!("{d}/tls.key")),
        ("AUTHRELAY__INTERNAL_TLS__CA", format!("{d}/ca.crt")),
        (
            "AUTHRELAY__INTERNAL_TLS__HEALTH_LISTEN",
            "0.0.0.0:7349".to_owned(),
        ),
        (
            "AUTHRELAY__ENDPOINTS__SASL_AUTH",
            "https://sasl-auth-headless:7341".to_owned(),
        ),
        (
            "AUTHRELAY__ENDPOINTS__CREDENTIAL_STORE",
            "https://credential-store-headless:7342".to_owned(),
        ),
        (
            "AUTHRELAY__ENDPOINTS__RELAY_QUEUE",
            "https://relay-queue-headless:7343".to_owned(),
        ),
        (
            "AUTHRELAY__ENDPOINTS__FRONTEND",
            "https://smtp-frontend-admin:7340".to_owned(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let cfg = Config::load_with_env(None, env_ok.clone()).unwrap();
    assert!(cfg.internal_tls.enabled);
    assert_eq!(
        cfg.internal_tls.health_listen,
        Some("0.0.0.0:7349".parse().unwrap())
    );

    // A plain http:// peer cannot answer a server that demands a certificate.
    let mut env = env_ok.clone();
    env.retain(|(k, _)| k != &format!("{https}RELAY_QUEUE"));
    let err = Config::load_with_env(None, env).unwrap_err();
    assert_eq!(err.key, "endpoints.relay_queue");
    assert!(err.reason.contains("https://"), "{err}");

    // A plain Unix socket would be a way around mutual TLS.
    let mut env = env_ok.clone();
    env.push((
        "AUTHRELAY__SASL_AUTH__LISTEN_UNIX".into(),
        "/run/authrelay/sasl-auth.sock".into(),
    ));
    let err = Config::load_with_env(None, env).unwrap_err();
    assert_eq!(err.key, "sasl_auth.listen_unix", "{err}");
    assert!(err.reason.contains("mutual TLS"), "{err}");

    // A missing Secret mount is named before any pod starts.
    let mut env = env_ok.clone();
    env.retain(|(k, _)| k != "AUTHRELAY__INTERNAL_TLS__CA");
    let err = Config::load_with_env(None, env).unwrap_err();
    assert_eq!(err.key, "internal_tls.ca");
    let mut env = env_ok;
    env.push((
        "AUTHRELAY__INTERNAL_TLS__KEY".into(),
        format!("{d}/missing.key"),
    ));
    let err = Config::load_with_env(None, env).unwrap_err();
    assert_eq!(err.key, "internal_tls.key");
    assert_eq!(err.reason, "no such file");
}

#[test]
fn unix_socket_endpoints_and_listeners_are_checked() {
    let cfg = load_str(
        "[endpoints]\nsasl_auth = \"unix:/run/authrelay/sasl-auth.sock\"\n\
         [sasl_auth]\nlisten = \"127.0.0.1:7341\"\nlisten_unix = \"/run/authrelay/sasl-auth.sock\"\n",
        &[],
    )
    .unwrap();
    assert_eq!(
        cfg.sasl_auth.listen_unix.as_deref(),
        Some(Path::new("/run/authrelay/sasl-auth.sock"))
    );
    let err = load_str("[endpoints]\nsasl_auth = \"unix:run/sasl.sock\"\n", &[]).unwrap_err();
    assert_eq!(err.key, "endpoints.sasl_auth");
    assert!(err.reason.contains("absolute path"), "{err}");
    let err = load_str(
        "[endpoints]\nsasl_auth = [\"unix:/run/a.sock\", \"http://10.0.0.1:7341\"]\n",
        &[],
    )
    .unwrap_err();
    assert!(err.reason.contains("only one"), "{err}");
    let err = load_str("[credential_store]\nlisten_unix = \"cs.sock\"\n", &[]).unwrap_err();
    assert_eq!(err.key, "credential_store.listen_unix");
    let err = load_str("[endpoints]\ncredential_store = \"ftp://x\"\n", &[]).unwrap_err();
    assert!(err.reason.contains("unix:/path"), "{err}");
}

const ISSUER: &str = "[[sasl.oauth.issuers]]\nissuer = \"https://login.example.com\"\naudience = \"smtp.example.com\"\n";

#[test]
fn oauthbearer_without_an_issuer_is_refused() {
    let err = load_str(
        "[sasl]\nmechanisms = \"OAUTHBEARER PLAIN\"\ntrusted = \"PLAIN\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "sasl.mechanisms");
    assert_eq!(err.value, "OAUTHBEARER");
    assert!(err.reason.contains("sasl.oauth.issuers"), "{}", err.reason);
}

#[test]
fn bearer_mechanisms_are_offered_only_on_tls_even_with_plaintext_allowed() {
    let cfg = load_str(
        &format!(
            "[sasl]\nmechanisms = \"OAUTHBEARER XOAUTH2 PLAIN\"\ntrusted = \"OAUTHBEARER XOAUTH2 PLAIN\"\nallow_plaintext_without_tls = true\n{ISSUER}"
        ),
        &[],
    )
    .unwrap();
    use authrelay_sasl::Mechanism as M;
    assert_eq!(cfg.mechanisms_for(false, false, false), [M::Plain]);
    assert_eq!(
        cfg.mechanisms_for(true, false, false),
        [M::OAuthBearer, M::XOAuth2, M::Plain]
    );
    assert_eq!(cfg.sasl.oauth.issuers[0].user_claim(), "email");
    assert_eq!(
        cfg.sasl.oauth.issuers[0].discovery_url(),
        "https://login.example.com/.well-known/openid-configuration"
    );
}

#[test]
fn hmac_and_none_algorithms_are_refused() {
    for alg in ["HS256", "none"] {
        let err = load_str(
            &format!("[sasl.oauth]\nalgorithms = \"RS256 {alg}\"\n{ISSUER}"),
            &[],
        )
        .unwrap_err();
        assert_eq!(err.key, "sasl.oauth.algorithms");
        assert_eq!(err.value, alg);
        assert!(err.reason.contains("never accepted"), "{}", err.reason);
    }
}

#[test]
fn issuer_needs_https_and_an_audience() {
    let err = load_str(
        "[[sasl.oauth.issuers]]\nissuer = \"http://login.example.com\"\naudience = \"x\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "sasl.oauth.issuers[0].issuer");
    let err = load_str(
        "[[sasl.oauth.issuers]]\nissuer = \"https://login.example.com\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "sasl.oauth.issuers[0].audience");
}

#[test]
fn per_user_limits_default_on_and_are_checked() {
    let cfg = load_str("", &[]).unwrap();
    assert!(cfg.limits.per_user.enabled);
    assert_eq!(cfg.limits.per_user.get("messages_per_hour"), Some(200));
    let cfg = load_str(
        "[limits.per_user]\nmessages_per_hour = 5\nsuspend_factor = 0\n",
        &[("AUTHRELAY__LIMITS__PER_USER__RECIPIENTS_PER_DAY", "7")],
    )
    .unwrap();
    assert_eq!(cfg.limits.per_user.messages_per_hour, 5);
    assert_eq!(cfg.limits.per_user.recipients_per_day, 7);
    let err = load_str("[limits.per_user]\nsuspend_factor = 1\n", &[]).unwrap_err();
    assert_eq!(err.key, "limits.per_user.suspend_factor");
    let err = load_str("[limits.per_user]\nmessages_per_day = 2000000000\n", &[]).unwrap_err();
    assert_eq!(err.key, "limits.per_user.messages_per_day");
    let err = load_str("[limits.per_user]\nmessages_per_minute = 1\n", &[]).unwrap_err();
    assert!(err.to_string().contains("messages_per_minute"), "{err}");
}

#[test]
fn redis_url_with_credentials_is_refused_without_echoing_them() {
    for url in [
        "redis://:hunter2-secret@127.0.0.1:6379/",
        "redis://authrelay:hunter2-secret@redis:6379/0",
        "unix:///run/redis.sock?db=0&pass=hunter2-secret",
        "ftp://x:hunter2-secret@redis/",
    ] {
        let err = load_str(&format!("[redis]\nurl = \"{url}\"\n"), &[]).unwrap_err();
        assert_eq!(err.key, "redis.url", "{url}");
        assert!(err.reason.contains("redis.password_file"), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}

#[test]
fn redis_password_file_is_read_and_checked() {
    let dir = std::env::temp_dir().join(format!("authrelay-redis-pw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("redis-password");
    std::fs::write(&file, "s3cret-from-file\n").unwrap();
    let toml = format!(
        "[redis]\nurl = \"redis://127.0.0.1:1/\"\nusername = \"authrelay\"\npassword_file = \"{}\"\n",
        file.display()
    );
    let cfg = load_str(&toml, &[]).unwrap();
    assert_eq!(cfg.redis.username, "authrelay");
    assert_eq!(
        cfg.redis.read_password().unwrap().as_deref(),
        Some("s3cret-from-file")
    );

    std::fs::write(&file, "\n").unwrap();
    let err = cfg.redis.read_password().unwrap_err();
    assert!(err.contains("empty"), "{err}");

    let missing = toml.replace("redis-password", "absent");
    let err = load_str(&missing, &[]).unwrap_err();
    assert_eq!(err.key, "redis.password_file");
    assert!(err.reason.contains("no such file"), "{err}");

    let no_url = toml.replace("url = \"redis://127.0.0.1:1/\"\n", "");
    let err = load_str(&no_url, &[]).unwrap_err();
    assert_eq!(err.key, "redis.password_file");

    let err = load_str(
        "[redis]\nurl = \"redis://127.0.0.1:1/\"\nusername = \"authrelay\"\n",
        &[],
    )
    .unwrap_err();
    assert_eq!(err.key, "redis.username");
}

#[test]
fn admission_defaults_scale_with_cpus_and_read_from_file_and_environment() {
    let cfg = load_str("", &[]).unwrap();
    let a = &cfg.frontend.admission;
    assert_eq!(a.sessions_for(2), 16);
    assert_eq!(a.sessions_for(0), 8, "no CPU count still gates");
    assert_eq!(a.behind, Duration::from_micros(250));
    assert_eq!(a.greeting_hold, Duration::from_secs(1));
    let cfg = load_str(
        "[frontend.admission]\nsessions = 5\nbehind = \"2ms\"\n",
        &[("AUTHRELAY__FRONTEND__ADMISSION__GREETING_HOLD", "0s")],
    )
    .unwrap();
    let a = &cfg.frontend.admission;
    assert_eq!(a.sessions_for(64), 5);
    assert_eq!(a.behind, Duration::from_millis(2));
    assert!(a.greeting_hold.is_zero());
}

#[test]
fn brute_force_counters_read_as_zero_are_trusted_a_second_by_default() {
    let cfg = load_str("", &[]).unwrap();
    assert_eq!(cfg.sasl.limits.clean_ttl, Duration::from_secs(1));
    let cfg = load_str("[sasl.limits]\nclean_ttl = \"0s\"\n", &[]).unwrap();
    assert!(cfg.sasl.limits.clean_ttl.is_zero());
}

#[test]
fn sealed_exchanges_are_claimed_in_the_replica_unless_shared_is_asked_for() {
    let cfg = load_str("", &[]).unwrap();
    assert_eq!(cfg.sasl.exchange_claims, crate::ExchangeClaims::Replica);
    let cfg = load_str("[sasl]\nexchange_claims = \"shared\"\n", &[]).unwrap();
    assert_eq!(cfg.sasl.exchange_claims, crate::ExchangeClaims::Shared);
    let err = load_str("[sasl]\nexchange_claims = \"cluster\"\n", &[]).unwrap_err();
    assert!(err.to_string().contains("exchange_claims"), "{err}");
}
