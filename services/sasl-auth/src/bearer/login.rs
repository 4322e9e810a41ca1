//! The OAUTHBEARER/XOAUTH2 step of an exchange: limits, the token check,
//! the user it names, and the RFC 7628 error a refused client gets.

use authrelay_sasl::oauth::{BearerMessage, ErrorStatus};
use authrelay_sasl::{SecretFamily, ServerExchange, Step};

use super::Refusal;
use crate::{AuthError, SaslService, split_login};

impl SaslService {
    /// Check `msg`'s token and resume the exchange with its verdict.
    /// Returns the next step (success) and the user `(name, realm)`; a
    /// refused token is counted like a wrong password and ends the
    /// exchange with [`AuthError::TokenRefused`].
    pub(crate) async fn bearer_step(
        &self,
        exchange: &mut ServerExchange,
        msg: BearerMessage,
        client_ip: &str,
        ip_pending: bool,
        claim: Option<(&str, std::time::Duration)>,
    ) -> Result<(Step, (String, String)), AuthError> {
        let mech = exchange.mechanism();
        let claimed = msg
            .authzid
            .as_deref()
            .map(|a| split_login(a, None, &self.cfg.default_realm));
        let checked = self
            .counters
            .check(
                &self.cfg,
                client_ip,
                ip_pending,
                claimed.as_ref().map(|(n, r)| (n.as_str(), r.as_str())),
                claim,
                mech,
            )
            .await?;
        let token = msg.token.expose();
        match self.check_token(token, msg.authzid.as_deref()).await {
            Ok((name, realm)) => {
                let mut step = exchange.resume_token(Ok(format!("{name}@{realm}")));
                // The authzid was held against the token's user (in either
                // spelling): nothing is left for proxy rights to decide.
                if let Step::Success(o) = &mut step {
                    o.authzid = None;
                }
                Ok((step, (name, realm)))
            }
            Err(Refusal::Invalid(why)) => {
                exchange.resume_token(Err(why));
                self.counters
                    .record_failure(&self.cfg, client_ip, claimed.as_ref(), checked)
                    .await;
                Err(AuthError::TokenRefused {
                    why,
                    mechanism: mech,
                    authcid: msg.authzid.clone().unwrap_or_default(),
                    error_json: self.token_error_json(token),
                })
            }
            Err(Refusal::Unavailable(e)) => Err(AuthError::Dependency(e)),
        }
    }

    /// A bearer token's user as `(name, realm)`, checked against the
    /// issuers, the client's authzid and (if the issuer says so)
    /// credential-store.
    async fn check_token(
        &self,
        token: &str,
        authzid: Option<&str>,
    ) -> Result<(String, String), Refusal> {
        let Some(tokens) = &self.tokens else {
            return Err(Refusal::Invalid("no token issuer configured"));
        };
        let v = tokens.verify(token).await?;
        let (name, realm) = if v.user.contains('@') {
            split_login(&v.user, None, &self.cfg.default_realm)
        } else {
            let realm = v
                .realm
                .clone()
                .unwrap_or_else(|| self.cfg.default_realm.clone());
            (v.user.clone(), realm)
        };
        // RFC 7628 §3.1: the authzid names whom the client acts as; with a
        // token that can only be the token's own user.
        if let Some(a) = authzid
            && a != v.user
            && a != format!("{name}@{realm}")
        {
            return Err(Refusal::Invalid("authzid is not the token's user"));
        }
        if v.require_local_user && !self.user_exists(&name, &realm).await? {
            return Err(Refusal::Invalid("user not in credential-store"));
        }
        Ok((name, realm))
    }

    /// Whether credential-store has the user, with a secret of any family
    /// (through the secret cache, so a known user costs no call).
    async fn user_exists(&self, name: &str, realm: &str) -> Result<bool, Refusal> {
        for family in SecretFamily::ALL {
            let (found, _) = self
                .secret(name, realm, family, false)
                .await
                .map_err(|e| Refusal::Unavailable(e.to_string()))?;
            if found.is_some() {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// RFC 7628 §3.2.2: what a refused client needs to get a better token.
    fn token_error_json(&self, token: &str) -> Vec<u8> {
        let mut e = ErrorStatus::invalid_token();
        if let Some(issuer) = self.tokens.as_ref().and_then(|t| t.error_issuer(token)) {
            e.scope = issuer.scope.clone();
            // Only where we know discovery works: we use it ourselves.
            if issuer.jwks_uri.is_none() {
                e.openid_configuration = Some(issuer.discovery_url());
            }
        }
        e.to_json()
    }
}
