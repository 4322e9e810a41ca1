//! `authrelay serve` without Redis: overrides and suspensions saved to a
//! file in the data directory, so a restart keeps them (in a deployment
//! Redis keeps them, and this is off).

use authrelay_state::account;

use super::AccountLimits;

/// What `saved_at` holds.
#[derive(Default, serde::Serialize, serde::Deserialize)]
struct Saved {
    suspensions: std::collections::BTreeMap<String, account::Suspension>,
    overrides: std::collections::BTreeMap<String, std::collections::BTreeMap<String, u64>>,
}

impl AccountLimits {
    /// Load what an earlier process saved (in-process store only).
    pub async fn restore(&self) -> Result<(), anyhow::Error> {
        let Some(path) = &self.saved_at else {
            return Ok(());
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => anyhow::bail!("{}: {e}", path.display()),
        };
        authrelay_telemetry::private_fs::private_file(path)?;
        let saved: Saved = serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (account, s) in &saved.suspensions {
            self.state.restore_suspension(account, s).await?;
        }
        for (account, o) in saved.overrides {
            let set: Vec<(String, u64)> = o.into_iter().collect();
            self.state
                .set_account_overrides(&account, &set, &[], true)
                .await?;
        }
        Ok(())
    }

    /// Write overrides and suspensions to `saved_at` (in-process store
    /// only): a temporary file, synced, renamed over the old one.
    pub(super) async fn save(&self) {
        let Some(path) = &self.saved_at else { return };
        let _one_at_a_time = self.saving.lock().await;
        let result = async {
            let mut saved = Saved {
                suspensions: self.state.suspensions().await?.into_iter().collect(),
                ..Saved::default()
            };
            let prefix = account::keys::overrides("");
            for key in self.state.keys(&prefix).await? {
                let account = &key[prefix.len()..];
                let o = self.state.account_overrides(account).await?;
                if !o.is_empty() {
                    saved.overrides.insert(account.to_owned(), o);
                }
            }
            let tmp = path.with_extension("json.new");
            let mut f = authrelay_telemetry::private_fs::open_private_file(&tmp)?;
            use std::io::Write as _;
            f.write_all(&serde_json::to_vec_pretty(&saved)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, path)?;
            Ok::<_, anyhow::Error>(())
        }
        .await;
        if let Err(e) = result {
            tracing::error!(file = %path.display(), error = %e, "account limits not saved: a restart would forget the latest change");
        }
    }
}
