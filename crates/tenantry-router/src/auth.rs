//! Bearer JWTs: HS256 with the shared secret, RS256/EdDSA with public keys chosen by
//! `kid`. The algorithm is pinned per key (a token cannot choose it), and `exp`, `iss`,
//! `aud`, `sub` are required, `nbf` checked.

use std::collections::{BTreeMap, HashMap};
use std::future::{ready, Ready};
use std::sync::Arc;

use actix_web::{web, FromRequest, HttpRequest};
use dashmap::DashMap;
use jsonwebtoken::{
    decode, decode_header, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use crate::{ApiError, AppState, ErrorCode};

/// The claims Tenantry reads. `tenant` is required for the tenant API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    pub exp: u64,
    pub iss: String,
    pub aud: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Space-separated scopes; `admin` (on a token of the admin trust root) opens the admin API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
    /// The tenant's id: binds the token to one incarnation of the slug.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<uuid::Uuid>,
}

impl Claims {
    pub fn has_scope(&self, wanted: &str) -> bool {
        self.scope
            .as_deref()
            .is_some_and(|s| s.split_whitespace().any(|x| x == wanted))
    }

    /// Whether the token may reach this incarnation of its slug: the tenant created at
    /// `created_at_s` (Unix seconds, rounded down) with id `tenant`. A slug can be reused
    /// after its tenant is deleted, and a token of the earlier tenant must never reach the
    /// later one: a token names the tenant's id, or was issued (`iat`) no earlier than the
    /// tenant's creation.
    pub fn reaches(&self, tenant: uuid::Uuid, created_at_s: i64) -> Result<(), &'static str> {
        match (self.tenant_id, self.iat) {
            (Some(id), _) if id == tenant => Ok(()),
            (Some(_), _) => Err(
                "the token names another tenant id: it was issued for an earlier tenant with this slug; get a new token",
            ),
            (None, Some(iat)) if i64::try_from(iat).is_ok_and(|iat| iat >= created_at_s) => Ok(()),
            (None, Some(_)) => Err(
                "the token was issued before this tenant was created (for an earlier tenant with this slug); get a new token",
            ),
            (None, None) => Err(
                "the token carries neither tenant_id nor iat, so it cannot be told apart from a token for an earlier tenant with this slug; get a new token",
            ),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuthSetupError {
    #[error("configuration key `auth.public_keys.{0}`: not an RSA or Ed25519 public key in PEM")]
    BadKey(String),
    #[error("no token key is configured: set auth.hs256_secret or auth.public_keys")]
    NoKeys,
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// Why a token was refused; every case answers 401 `unauthorized`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    Missing,
    Malformed,
    Expired,
    NotYetValid,
    WrongIssuerOrAudience,
    BadSignature,
    UnknownKey,
}

impl Rejection {
    fn message(self) -> &'static str {
        match self {
            Self::Missing => "send a bearer token: Authorization: Bearer <JWT>",
            Self::Malformed => "the bearer token is not a valid JWT with the required claims (sub, tenant, exp, iss, aud)",
            Self::Expired => "the token has expired; get a new one",
            Self::NotYetValid => "the token is not valid yet (nbf)",
            Self::WrongIssuerOrAudience => "the token's issuer or audience is not this service's",
            Self::BadSignature => "the token's signature does not verify",
            Self::UnknownKey => "the token names a key (kid) or algorithm this service does not accept",
        }
    }
}

impl From<Rejection> for ApiError {
    fn from(r: Rejection) -> Self {
        ApiError::new(ErrorCode::Unauthorized, r.message())
    }
}

struct Key {
    key: DecodingKey,
    validation: Validation,
}

/// Verifies tokens.
pub struct Authenticator {
    hs256: Option<Key>,
    by_kid: HashMap<String, Key>,
    /// Tokens whose signature and claims verified, by their text: a client sends the
    /// same token with every request until it expires, and an RS256 or EdDSA check costs
    /// tens of microseconds. `exp` and `nbf` are checked again on every use. Bounded:
    /// emptied when full.
    verified: DashMap<Box<str>, Arc<Claims>>,
}

/// How long a token may be past `exp` (or before `nbf`): clock skew between issuers and us.
const LEEWAY_S: u64 = 30;
/// Tokens kept verified, at most, and the longest token kept (a bound on memory).
const VERIFIED_CAP: usize = 10_000;
const VERIFIED_MAX_LEN: usize = 2048;

fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The time checks of a token verified earlier.
fn still_valid(claims: &Claims, now: u64) -> Result<(), Rejection> {
    if claims.exp.saturating_add(LEEWAY_S) <= now {
        return Err(Rejection::Expired);
    }
    if claims
        .nbf
        .is_some_and(|nbf| nbf > now.saturating_add(LEEWAY_S))
    {
        return Err(Rejection::NotYetValid);
    }
    Ok(())
}

fn validation(alg: Algorithm, issuer: &str, audience: &str) -> Validation {
    let mut v = Validation::new(alg);
    v.set_issuer(&[issuer]);
    v.set_audience(&[audience]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = LEEWAY_S;
    v
}

impl Authenticator {
    pub fn new(
        issuer: &str,
        audience: &str,
        hs256_secret: Option<&SecretString>,
        public_keys: &BTreeMap<String, String>,
    ) -> Result<Self, AuthSetupError> {
        let hs256 = hs256_secret.map(|s| Key {
            key: DecodingKey::from_secret(s.expose_secret().as_bytes()),
            validation: validation(Algorithm::HS256, issuer, audience),
        });
        let mut by_kid = HashMap::new();
        for (kid, pem) in public_keys {
            let (key, alg) = if let Ok(k) = DecodingKey::from_rsa_pem(pem.as_bytes()) {
                (k, Algorithm::RS256)
            } else if let Ok(k) = DecodingKey::from_ed_pem(pem.as_bytes()) {
                (k, Algorithm::EdDSA)
            } else {
                return Err(AuthSetupError::BadKey(kid.clone()));
            };
            by_kid.insert(
                kid.clone(),
                Key {
                    key,
                    validation: validation(alg, issuer, audience),
                },
            );
        }
        if hs256.is_none() && by_kid.is_empty() {
            return Err(AuthSetupError::NoKeys);
        }
        Ok(Self {
            hs256,
            by_kid,
            verified: DashMap::new(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Arc<Claims>, Rejection> {
        if let Some(claims) = self.verified.get(token).map(|c| c.clone()) {
            still_valid(&claims, now_s())?;
            return Ok(claims);
        }
        let claims = Arc::new(self.verify_signed(token)?);
        if token.len() <= VERIFIED_MAX_LEN {
            if self.verified.len() >= VERIFIED_CAP {
                let now = now_s();
                self.verified.retain(|_, c| still_valid(c, now).is_ok());
                if self.verified.len() >= VERIFIED_CAP {
                    self.verified.clear();
                }
            }
            self.verified.insert(token.into(), claims.clone());
        }
        Ok(claims)
    }

    fn verify_signed(&self, token: &str) -> Result<Claims, Rejection> {
        let header = decode_header(token).map_err(|_| Rejection::Malformed)?;
        // The key decides the algorithm: a kid names a public key; no kid means the shared secret.
        let key = match &header.kid {
            Some(kid) => self.by_kid.get(kid),
            None => self.hs256.as_ref(),
        }
        .ok_or(Rejection::UnknownKey)?;
        if !key.validation.algorithms.contains(&header.alg) {
            return Err(Rejection::UnknownKey);
        }
        decode::<Claims>(token, &key.key, &key.validation)
            .map(|data| data.claims)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::ExpiredSignature => Rejection::Expired,
                    K::ImmatureSignature => Rejection::NotYetValid,
                    K::InvalidIssuer | K::InvalidAudience => Rejection::WrongIssuerOrAudience,
                    K::InvalidSignature => Rejection::BadSignature,
                    K::InvalidAlgorithm => Rejection::UnknownKey,
                    _ => Rejection::Malformed,
                }
            })
    }
}

/// Signs an HS256 token (`tenantry token issue`, tests, development).
pub fn issue_hs256(secret: &SecretString, claims: &Claims) -> Result<String, AuthSetupError> {
    encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.expose_secret().as_bytes()),
    )
    .map_err(|e| AuthSetupError::Sign(e.to_string()))
}

fn bearer(req: &HttpRequest) -> Result<&str, Rejection> {
    let value = req
        .headers()
        .get(actix_web::http::header::AUTHORIZATION)
        .ok_or(Rejection::Missing)?
        .to_str()
        .map_err(|_| Rejection::Malformed)?;
    let token = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(Rejection::Missing)?
        .trim();
    if token.is_empty() || token.len() > 8192 {
        return Err(Rejection::Malformed);
    }
    Ok(token)
}

fn app_state(req: &HttpRequest) -> Result<&web::Data<AppState>, ApiError> {
    req.app_data::<web::Data<AppState>>()
        .ok_or_else(|| ApiError::internal(&"application state missing"))
}

/// A request authenticated for the tenant API: a valid token naming a tenant.
#[derive(Debug, Clone)]
pub struct TenantAuth {
    pub claims: Arc<Claims>,
    pub tenant: String,
    /// Where the resolved tenant is noted for metering.
    pub(crate) billed: crate::meter::Billed,
}

impl FromRequest for TenantAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        let verified = app_state(req).and_then(|state| Ok(state.auth.verify(bearer(req)?)?));
        ready(verified.and_then(|claims| {
            // A tenant claim that is no slug names no tenant: refused before any lookup.
            let tenant = claims
                .tenant
                .clone()
                .filter(|t| tenantry_types::Slug::parse(t).is_ok())
                .ok_or(ApiError::from(Rejection::Malformed))?;
            let billed = actix_web::HttpMessage::extensions(req)
                .get::<crate::meter::Billed>()
                .cloned()
                .unwrap_or_default();
            Ok(TenantAuth {
                claims,
                tenant,
                billed,
            })
        }))
    }
}

/// A request authenticated for the admin API: a valid token of the admin trust root
/// (`auth.admin.*`) with scope `admin`. A token of the tenants' trust root is refused
/// (403) whatever its scope.
#[derive(Debug, Clone)]
pub struct AdminAuth {
    pub claims: Arc<Claims>,
}

fn admin(req: &HttpRequest) -> Result<AdminAuth, ApiError> {
    let state = app_state(req)?;
    let token = bearer(req)?;
    let Some(admin) = state.admin_auth.as_deref() else {
        return Err(ApiError::new(
            ErrorCode::Unauthorized,
            "the admin API is closed: no admin token key is configured (auth.admin.hs256_secret or auth.admin.public_keys)",
        ));
    };
    let claims = match admin.verify(token) {
        Ok(claims) => claims,
        // Said plainly, so that an operator who used the wrong key knows.
        Err(_) if state.auth.verify(token).is_ok() => {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                "this is a tenant token; the admin API takes only tokens of the admin trust root (auth.admin.*), whatever their scope",
            ))
        }
        Err(rejection) => return Err(rejection.into()),
    };
    if !claims.has_scope("admin") {
        return Err(ApiError::new(
            ErrorCode::Forbidden,
            "the admin API needs a token with scope \"admin\"",
        ));
    }
    Ok(AdminAuth { claims })
}

impl FromRequest for AdminAuth {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _: &mut actix_web::dev::Payload) -> Self::Future {
        ready(admin(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn claims() -> Claims {
        Claims {
            sub: "user-1".into(),
            tenant: Some("acme".into()),
            exp: now() + 600,
            iss: "tenantry".into(),
            aud: "tenantry-api".into(),
            nbf: None,
            iat: Some(now()),
            scope: None,
            tenant_id: None,
        }
    }

    #[test]
    fn a_token_reaches_one_incarnation() {
        let id = uuid::Uuid::now_v7();
        let created = now() as i64;
        let by_id = Claims {
            tenant_id: Some(id),
            iat: None,
            ..claims()
        };
        assert!(by_id.reaches(id, created).is_ok());
        assert!(by_id.reaches(uuid::Uuid::now_v7(), created).is_err());
        // A slug-only token: its iat decides, to the second.
        assert!(claims().reaches(id, created).is_ok());
        let older = Claims {
            iat: Some(created as u64 - 1),
            ..claims()
        };
        assert!(older.reaches(id, created).is_err());
        let undated = Claims {
            iat: None,
            ..claims()
        };
        assert!(undated.reaches(id, created).is_err());
        // An id decides over an iat.
        let both = Claims {
            tenant_id: Some(uuid::Uuid::now_v7()),
            ..claims()
        };
        assert!(both.reaches(id, created).is_err());
    }

    #[test]
    fn a_verified_token_is_served_from_the_cache_but_still_expires() {
        let a = auth();
        let token = sign(&claims());
        let first = a.verify(&token).unwrap();
        let again = a.verify(&token).unwrap();
        assert!(Arc::ptr_eq(&first, &again), "verified once, then cached");
        // A cached token is refused once past exp (and the leeway), or before nbf.
        let c = claims();
        assert_eq!(still_valid(&c, c.exp + LEEWAY_S), Err(Rejection::Expired));
        assert_eq!(still_valid(&c, c.exp + LEEWAY_S - 1), Ok(()));
        let later = Claims {
            nbf: Some(now() + 600),
            ..claims()
        };
        assert_eq!(still_valid(&later, now()), Err(Rejection::NotYetValid));
        // A token that fails is never cached: the same text fails again.
        let mut forged = token.clone();
        forged.push('x');
        assert!(a.verify(&forged).is_err());
        assert!(a.verify(&forged).is_err());
        assert_eq!(a.verified.len(), 1);
    }

    fn auth() -> Authenticator {
        Authenticator::new(
            "tenantry",
            "tenantry-api",
            Some(&SecretString::from(SECRET.to_owned())),
            &BTreeMap::new(),
        )
        .unwrap()
    }

    fn sign(c: &Claims) -> String {
        issue_hs256(&SecretString::from(SECRET.to_owned()), c).unwrap()
    }

    #[test]
    fn a_good_token_passes() {
        let c = auth().verify(&sign(&claims())).unwrap();
        assert_eq!(c.tenant.as_deref(), Some("acme"));
    }

    #[test]
    fn the_attack_battery_is_refused() {
        use base64::Engine;
        let b64 = |v: &serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
        };
        let good = sign(&claims());
        let parts: Vec<&str> = good.split('.').collect();
        let payload = serde_json::to_value(claims()).unwrap();

        let mut expired = claims();
        expired.exp = now() - 3600;
        let mut future = claims();
        future.nbf = Some(now() + 3600);
        let mut wrong_iss = claims();
        wrong_iss.iss = "evil".into();
        let mut wrong_aud = claims();
        wrong_aud.aud = "other-api".into();
        let mut tampered_payload = payload.clone();
        tampered_payload["tenant"] = "victim".into();
        let mut exp_string = payload.clone();
        exp_string["exp"] = serde_json::Value::String((now() + 600).to_string());
        let mut no_exp = payload.clone();
        no_exp.as_object_mut().unwrap().remove("exp");
        let mut no_sub = payload.clone();
        no_sub.as_object_mut().unwrap().remove("sub");
        let other_secret = issue_hs256(
            &SecretString::from("another-secret-that-is-long-enough-too!!".to_owned()),
            &claims(),
        )
        .unwrap();
        let with_kid = {
            let mut h = Header::new(Algorithm::HS256);
            h.kid = Some("nope".into());
            encode(&h, &claims(), &EncodingKey::from_secret(SECRET.as_bytes())).unwrap()
        };
        let hs384 = encode(
            &Header::new(Algorithm::HS384),
            &claims(),
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap();

        let battery: Vec<(&str, String)> = vec![
            (
                "alg none",
                format!(
                    "{}.{}.",
                    b64(&serde_json::json!({"alg": "none", "typ": "JWT"})),
                    parts[1]
                ),
            ),
            (
                "alg none, no dot",
                format!("{}.{}", b64(&serde_json::json!({"alg": "none"})), parts[1]),
            ),
            ("wrong key", other_secret),
            ("expired", sign(&expired)),
            ("not yet valid", sign(&future)),
            ("wrong issuer", sign(&wrong_iss)),
            ("wrong audience", sign(&wrong_aud)),
            (
                "tampered payload",
                format!("{}.{}.{}", parts[0], b64(&tampered_payload), parts[2]),
            ),
            (
                "exp as a string",
                format!("{}.{}.{}", parts[0], b64(&exp_string), parts[2]),
            ),
            ("exp as a string, re-signed", {
                let h = b64(&serde_json::json!({"alg": "HS256", "typ": "JWT"}));
                let body = b64(&exp_string);
                // A valid HMAC over a payload whose exp is a string.
                let key = EncodingKey::from_secret(SECRET.as_bytes());
                let sig = jsonwebtoken::crypto::sign(
                    format!("{h}.{body}").as_bytes(),
                    &key,
                    Algorithm::HS256,
                )
                .unwrap();
                format!("{h}.{body}.{sig}")
            }),
            (
                "missing exp",
                format!("{}.{}.{}", parts[0], b64(&no_exp), parts[2]),
            ),
            (
                "missing sub",
                format!("{}.{}.{}", parts[0], b64(&no_sub), parts[2]),
            ),
            ("unknown kid", with_kid),
            ("other HMAC algorithm", hs384),
            ("garbage", "not.a.jwt".into()),
            ("empty", String::new()),
        ];
        for (name, token) in battery {
            assert!(auth().verify(&token).is_err(), "{name} was accepted");
        }
    }

    const RSA_PRIVATE: &str = include_str!("../tests/keys/rsa.pem");
    const RSA_PUBLIC: &str = include_str!("../tests/keys/rsa.pub");
    const ED_PRIVATE: &str = include_str!("../tests/keys/ed.pem");
    const ED_PUBLIC: &str = include_str!("../tests/keys/ed.pub");

    fn with_public_keys() -> Authenticator {
        let keys: BTreeMap<String, String> = [
            ("rsa-2026".to_owned(), RSA_PUBLIC.to_owned()),
            ("ed-2026".to_owned(), ED_PUBLIC.to_owned()),
        ]
        .into();
        Authenticator::new("tenantry", "tenantry-api", None, &keys).unwrap()
    }

    fn signed(alg: Algorithm, kid: Option<&str>, key: &EncodingKey) -> String {
        let mut h = Header::new(alg);
        h.kid = kid.map(str::to_owned);
        encode(&h, &claims(), key).unwrap()
    }

    #[test]
    fn public_keys_by_kid_with_the_algorithm_pinned() {
        let auth = with_public_keys();
        let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).unwrap();
        // Both keys at once (rotation).
        auth.verify(&signed(Algorithm::RS256, Some("rsa-2026"), &rsa))
            .unwrap();
        auth.verify(&signed(Algorithm::EdDSA, Some("ed-2026"), &ed))
            .unwrap();
        // A key under another key's kid, or without a kid, or an unknown kid.
        assert!(auth
            .verify(&signed(Algorithm::EdDSA, Some("rsa-2026"), &ed))
            .is_err());
        assert!(auth.verify(&signed(Algorithm::RS256, None, &rsa)).is_err());
        assert!(auth
            .verify(&signed(Algorithm::RS256, Some("old"), &rsa))
            .is_err());
        // HS/RS confusion: an HMAC made with the public key's text as the secret.
        let confused = EncodingKey::from_secret(RSA_PUBLIC.as_bytes());
        assert_eq!(
            auth.verify(&signed(Algorithm::HS256, Some("rsa-2026"), &confused))
                .unwrap_err(),
            Rejection::UnknownKey
        );
        // And no shared secret is configured at all: HS256 has no key.
        assert!(auth
            .verify(&signed(Algorithm::HS256, None, &confused))
            .is_err());
    }

    #[test]
    fn a_bad_public_key_names_its_kid() {
        let keys: BTreeMap<String, String> = [(
            "k1".to_owned(),
            "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----".to_owned(),
        )]
        .into();
        let e = Authenticator::new("i", "a", None, &keys)
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("auth.public_keys.k1"), "{e}");
        assert!(Authenticator::new("i", "a", None, &BTreeMap::new()).is_err());
    }

    #[test]
    fn scopes() {
        let mut c = claims();
        c.scope = Some("read admin".into());
        assert!(c.has_scope("admin") && !c.has_scope("adm"));
    }
}
