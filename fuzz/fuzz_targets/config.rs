//! A config file → `Config::load_with_env` (the path every service starts by):
//! no panic; a config it accepts is printed by `config check` as TOML that
//! loads back to the same effective configuration.
#![no_main]

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

use authrelay_config::Config;
use libfuzzer_sys::fuzz_target;

fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("authrelay-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    })
}

fn load(text: &[u8], name: &str) -> Result<Config, authrelay_config::ConfigError> {
    let path = scratch().join(name);
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(text).unwrap();
    drop(f);
    Config::load_with_env(Some(&path), std::iter::empty())
}

fuzz_target!(|data: &[u8]| {
    let Ok(cfg) = load(data, "fuzzed.toml") else {
        return;
    };
    let printed = cfg.to_toml();
    let again = load(printed.as_bytes(), "printed.toml")
        .unwrap_or_else(|e| panic!("config check output does not load: {e:?}\n{printed}"));
    assert_eq!(again.to_toml(), printed);
});
