//! Authentication: who a request comes from.
//!
//! - The admin bearer token (under the state directory) is user `admin` in group
//!   `system:masters`, which RBAC always allows.
//! - ServiceAccount tokens are JWTs signed (ES256) with a key kept in
//!   `<state>/sa.key`, issued by the `serviceaccounts/<name>/token` subresource
//!   (TokenRequest). A valid token whose ServiceAccount still exists with the same uid
//!   authenticates as `system:serviceaccount:<ns>:<name>` with groups
//!   `system:serviceaccounts`, `system:serviceaccounts:<ns>`, `system:authenticated`,
//!   exactly as kube-apiserver's service-account authenticator does.
//! - `Impersonate-User` / `Impersonate-Group` headers (`kubectl --as`, `--as-group`)
//!   switch identity when the requester may `impersonate` the users, groups or
//!   ServiceAccounts named.

use std::path::Path;

use cellmesh_apimachinery::rbac::{self, Attributes, Decision, UserInfo};
use http::{HeaderMap, header};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::pki;
use super::store::Store;

/// The issuer and default audience of ServiceAccount tokens, as a real cluster's.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// Default lifetime of a requested token (TokenRequest's default, one hour).
pub const DEFAULT_EXPIRATION_SECONDS: i64 = 3600;

/// The minimum lifetime kube-apiserver accepts (10 minutes).
pub const MIN_EXPIRATION_SECONDS: i64 = 600;

/// Signs and verifies ServiceAccount tokens.
pub struct TokenKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenKeys(..)")
    }
}

impl TokenKeys {
    /// Loads `<state>/sa.key` or creates it (P-256, PKCS#8 PEM, mode 0600).
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join("sa.key");
        let key = match std::fs::read_to_string(&path) {
            Ok(pem) => rcgen::KeyPair::from_pem(&pem)
                .map_err(|e| anyhow::anyhow!("{} is not a PEM private key: {e}", path.display()))?,
            Err(_) => {
                std::fs::create_dir_all(state_dir)?;
                let key = rcgen::KeyPair::generate()?;
                pki::write_private(&path, key.serialize_pem().as_bytes())?;
                key
            }
        };
        Ok(Self {
            encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes())?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())?,
        })
    }
}

/// The `kubernetes.io` claim of a bound ServiceAccount token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The claims kube-apiserver puts into ServiceAccount tokens.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

impl TokenKeys {
    pub fn sign(&self, claims: &Claims) -> Result<String, ApiError> {
        jsonwebtoken::encode(&Header::new(Algorithm::ES256), claims, &self.encoding)
            .map_err(|e| ApiError::internal(format!("cannot sign token: {e}")))
    }

    /// The claims of a token with a valid signature, unexpired, for `audience`.
    pub fn verify(&self, token: &str, audience: &str) -> Option<Claims> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[audience]);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
}

/// The user a request's bearer token authenticates, or `None` (→ 401).
pub fn authenticate(
    headers: &HeaderMap,
    admin_tokens: &[String],
    keys: &TokenKeys,
    store: &Store,
) -> Option<UserInfo> {
    let token = bearer(headers)?;
    if admin_tokens
        .iter()
        .any(|known| same_secret(known.as_bytes(), token.as_bytes()))
    {
        return Some(UserInfo::authenticated("admin", &["system:masters"]));
    }
    let claims = keys.verify(token, ISSUER)?;
    let k = &claims.kubernetes;
    // A token outlives nothing: once its ServiceAccount is gone (or recreated with another
    // uid) it no longer authenticates, as bound tokens behave in Kubernetes.
    let account = store.get(
        "/serviceaccounts",
        &format!("{}/{}", k.namespace, k.serviceaccount.name),
    )?;
    let uid = account.pointer("/metadata/uid").and_then(|u| u.as_str())?;
    (uid == k.serviceaccount.uid)
        .then(|| UserInfo::service_account(&k.namespace, &k.serviceaccount.name))
}

/// Applies `Impersonate-User`/`Impersonate-Group` headers: the requester must be allowed
/// to `impersonate` each; the result is the impersonated identity.
pub fn impersonate(
    requester: UserInfo,
    headers: &HeaderMap,
    policy: impl Fn() -> rbac::Policy,
) -> Result<UserInfo, ApiError> {
    let user = headers
        .get("impersonate-user")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty());
    let groups: Vec<&str> = headers
        .get_all("impersonate-group")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let Some(user) = user else {
        if groups.is_empty() {
            return Ok(requester);
        }
        return Err(ApiError::new(
            500,
            "InternalError",
            "Internal error occurred: requested [] without impersonating a user",
        ));
    };
    let is_masters = requester.groups.iter().any(|g| g == "system:masters");
    let policy = if is_masters {
        rbac::Policy::default()
    } else {
        policy()
    };
    let check = |attrs: Attributes| -> Result<(), ApiError> {
        match rbac::authorize(&attrs, &policy) {
            Decision::Allow(_) => Ok(()),
            Decision::Deny(reason) => Err(rbac::forbidden(&attrs, &reason).into()),
        }
    };
    let service_account = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'));
    match service_account {
        Some((ns, name)) => check(Attributes::resource(
            requester.clone(),
            "impersonate",
            ns,
            "",
            "serviceaccounts",
            "",
            name,
        ))?,
        None => check(Attributes::resource(
            requester.clone(),
            "impersonate",
            "",
            "",
            "users",
            "",
            user,
        ))?,
    }
    for group in &groups {
        check(Attributes::resource(
            requester.clone(),
            "impersonate",
            "",
            "",
            "groups",
            "",
            group,
        ))?;
    }
    let mut info = match service_account {
        Some((ns, name)) if groups.is_empty() => UserInfo::service_account(ns, name),
        _ => UserInfo::authenticated(user, &groups),
    };
    info.groups.dedup();
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(now: i64, exp: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "system:serviceaccount:ns:sa".into(),
            aud: vec![ISSUER.into()],
            exp,
            iat: now,
            nbf: now,
            kubernetes: KubernetesClaim {
                namespace: "ns".into(),
                serviceaccount: ObjectRef {
                    name: "sa".into(),
                    uid: "u1".into(),
                },
                pod: None,
            },
        }
    }

    #[test]
    fn tokens_verify_with_their_key_only_and_expire() {
        let dir = tempfile::tempdir().unwrap();
        let keys = TokenKeys::load_or_create(dir.path()).unwrap();
        let now = jiff::Timestamp::now().as_second();
        let token = keys.sign(&claims(now, now + 600)).unwrap();
        assert_eq!(keys.verify(&token, ISSUER), Some(claims(now, now + 600)));
        assert!(keys.verify(&token, "other-audience").is_none());
        let again = TokenKeys::load_or_create(dir.path()).unwrap();
        assert!(again.verify(&token, ISSUER).is_some(), "the key is kept");
        let other = TokenKeys::load_or_create(tempfile::tempdir().unwrap().path()).unwrap();
        assert!(
            other.verify(&token, ISSUER).is_none(),
            "another key rejects"
        );
        let expired = keys.sign(&claims(now - 1000, now - 10)).unwrap();
        assert!(keys.verify(&expired, ISSUER).is_none());
        let mut tampered = token.clone();
        tampered.insert(token.len() / 2, 'x');
        assert!(keys.verify(&tampered, ISSUER).is_none());
    }

    #[test]
    fn impersonation_needs_permission() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "impersonate-user",
            "system:serviceaccount:ns:sa".parse().unwrap(),
        );
        let admin = UserInfo::authenticated("admin", &["system:masters"]);
        let as_sa = impersonate(admin, &headers, rbac::Policy::default).unwrap();
        assert_eq!(as_sa, UserInfo::service_account("ns", "sa"));
        let nobody = UserInfo::authenticated("bob", &[]);
        let err = impersonate(nobody, &headers, rbac::Policy::bootstrap).unwrap_err();
        assert_eq!(err.code, 403);
        assert_eq!(
            err.message,
            "serviceaccounts \"sa\" is forbidden: User \"bob\" cannot impersonate resource \"serviceaccounts\" in API group \"\" in the namespace \"ns\""
        );
        let none = HeaderMap::new();
        let same = impersonate(UserInfo::anonymous(), &none, rbac::Policy::default).unwrap();
        assert_eq!(same, UserInfo::anonymous());
    }
}
