//! Bearer tokens and the roles they carry.
//!
//! Tokens are kept as SHA-256 digests: a lookup compares digests, so the
//! time it takes says nothing about how much of a token was right, and the
//! tokens themselves are not held in memory longer than parsing takes.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRef, FromRequestParts};
use axum::http::header;
use axum::http::request::Parts;
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::ApiError;
use crate::sandbox::Role;

/// A configured token.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who uses it (`checkout-web`, `planning-team`): recorded with every
    /// event its commands cause.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// The secret, as sent in `Authorization: Bearer <token>`.
    pub token: String,
}

impl fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenConfig")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Too short to be a secret.
    #[error("the token of `{0}` is shorter than 16 characters")]
    TooShort(String),
    /// The `system` role is the host's own.
    #[error("`{0}` has role `system`, which only the host itself uses")]
    SystemRole(String),
    /// Two names share a token.
    #[error("`{0}` and `{1}` have the same token")]
    Duplicate(String, String),
    /// Published (in the example config or `allot dev`) or too regular to
    /// be anyone's secret.
    #[error(
        "the token of `{0}` is published (in the example config or `allot dev`) or too \
         regular to be a secret: use a long random one, such as `openssl rand -hex 24` prints"
    )]
    NotSecret(String),
    /// `ALLOT_TOKENS` is not `name=role:token,…`.
    #[error("cannot read `{0}` in ALLOT_TOKENS: write `name=role:token`, separated by commas")]
    Malformed(String),
}

/// The caller of a request: the name and role of its token.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: Role,
}

impl Caller {
    /// `name (role)`, as recorded with events.
    pub fn actor(&self) -> String {
        format!("{} ({})", self.name, role_name(self.role))
    }

    /// Refuses the request unless the caller has one of these roles.
    pub fn require(&self, roles: &[Role]) -> Result<(), ApiError> {
        if roles.contains(&self.role) {
            return Ok(());
        }
        let allowed: Vec<&str> = roles.iter().map(|r| role_name(*r)).collect();
        Err(ApiError::forbidden(format!(
            "role `{}` may not do this; it takes {}",
            role_name(self.role),
            allowed.join(" or ")
        )))
    }
}

/// Roles that may reserve and read.
pub const ANYONE: &[Role] = &[Role::Checkout, Role::Planner, Role::Operator];
/// Roles that may shape capacity.
pub const PLANNING: &[Role] = &[Role::Planner, Role::Operator];
/// Roles that may manage the node.
pub const OPERATING: &[Role] = &[Role::Operator];

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Checkout => "checkout",
        Role::Planner => "planner",
        Role::Operator => "operator",
        Role::System => "system",
    }
}

/// The tokens a node accepts.
#[derive(Clone, Default)]
pub struct Tokens {
    by_digest: HashMap<[u8; 32], Caller>,
}

impl Tokens {
    /// The tokens of a config.
    pub fn new(configs: &[TokenConfig]) -> Result<Self, TokenError> {
        let mut by_digest: HashMap<[u8; 32], Caller> = HashMap::new();
        for config in configs {
            if config.token.chars().count() < 16 {
                return Err(TokenError::TooShort(config.name.clone()));
            }
            if config.role == Role::System {
                return Err(TokenError::SystemRole(config.name.clone()));
            }
            let caller = Caller {
                name: config.name.clone(),
                role: config.role,
            };
            if let Some(other) = by_digest.insert(digest(&config.token), caller) {
                return Err(TokenError::Duplicate(other.name, config.name.clone()));
            }
        }
        Ok(Self { by_digest })
    }

    /// Tokens from `name=role:token,name=role:token`, the form of the
    /// `ALLOT_TOKENS` variable.
    pub fn parse_list(list: &str) -> Result<Vec<TokenConfig>, TokenError> {
        list.split(',')
            .map(str::trim)
            .filter(|entry| !entry.is_empty())
            .map(|entry| {
                // Named by what precedes `=`, never more: the rest may be a secret.
                let malformed = || {
                    TokenError::Malformed(match entry.split_once('=') {
                        Some((name, _)) => name.trim().to_owned(),
                        None => "an entry without `=`".to_owned(),
                    })
                };
                let (name, rest) = entry.split_once('=').ok_or_else(malformed)?;
                let (role, token) = rest.split_once(':').ok_or_else(malformed)?;
                let role = serde_json::from_value(serde_json::Value::String(role.into()))
                    .map_err(|_| malformed())?;
                Ok(TokenConfig {
                    name: name.trim().to_owned(),
                    role,
                    token: token.trim().to_owned(),
                })
            })
            .collect()
    }

    /// Refuses tokens no one should serve with: ones that contain
    /// `change-me` (the example config's), `allot dev`'s, and ones with
    /// fewer than 8 different characters. For `allot serve`; the dev
    /// setup's tokens are well known on purpose, and only on loopback.
    pub fn check_secret(configs: &[TokenConfig], published: &[&str]) -> Result<(), TokenError> {
        for config in configs {
            let distinct: std::collections::HashSet<char> = config.token.chars().collect();
            if config.token.to_ascii_lowercase().contains("change-me")
                || published.contains(&config.token.as_str())
                || distinct.len() < 8
            {
                return Err(TokenError::NotSecret(config.name.clone()));
            }
        }
        Ok(())
    }

    /// The caller a token belongs to.
    pub fn caller(&self, token: &str) -> Option<&Caller> {
        self.by_digest.get(&digest(token))
    }

    /// Number of tokens.
    pub fn len(&self) -> usize {
        self.by_digest.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.by_digest.is_empty()
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl<S> FromRequestParts<S> for Caller
where
    S: Send + Sync,
    Arc<Tokens>: FromRef<S>,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthenticated("send `Authorization: Bearer <token>`"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or_else(|| {
                ApiError::unauthenticated("the Authorization header must be `Bearer <token>`")
            })?;
        Arc::<Tokens>::from_ref(state)
            .caller(token)
            .cloned()
            .ok_or_else(|| ApiError::unauthenticated("the token is not known to this node"))
    }
}

/// Roles a route takes, as a type, for [`Allowed`].
pub trait Roles: Send + Sync {
    /// The roles.
    const ROLES: &'static [Role];
}

/// Planners and operators: they shape capacity.
pub struct Planning;

impl Roles for Planning {
    const ROLES: &'static [Role] = PLANNING;
}

/// Operators: they manage the node and its plugins.
pub struct Operating;

impl Roles for Operating {
    const ROLES: &'static [Role] = OPERATING;
}

/// A caller whose role `R` allows the route, checked from the headers
/// alone. Routes with a body take this rather than [`Caller`], so that a
/// caller who may not use the route is refused before a byte of the body
/// is read: a large body sent with the wrong token costs the node nothing.
pub struct Allowed<R>(pub Caller, pub std::marker::PhantomData<R>);

impl<S, R> FromRequestParts<S> for Allowed<R>
where
    S: Send + Sync,
    Arc<Tokens>: FromRef<S>,
    R: Roles,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, state).await?;
        caller.require(R::ROLES)?;
        Ok(Self(caller, std::marker::PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_lists_are_parsed() {
        let tokens =
            Tokens::parse_list("shop=checkout:abcdefghijklmnop, ops=operator:0123456789abcdef")
                .unwrap();
        assert_eq!(tokens.len(), 2);
        assert_eq!(
            (tokens[1].name.as_str(), tokens[1].role),
            ("ops", Role::Operator)
        );
        let tokens = Tokens::new(&tokens).unwrap();
        assert_eq!(tokens.caller("abcdefghijklmnop").unwrap().name, "shop");
        assert!(tokens.caller("abcdefghijklmno").is_none());
    }

    #[test]
    fn a_bad_token_list_never_shows_the_secret() {
        for list in [
            "ops=very-secret-token-1",
            "very-secret-token-1",
            "ops=admin:very-secret-token-1",
        ] {
            let error = Tokens::parse_list(list).unwrap_err().to_string();
            assert!(!error.contains("very-secret"), "{error}");
        }
    }

    #[test]
    fn weak_duplicate_and_system_tokens_are_refused() {
        let token = |name: &str, role, token: &str| TokenConfig {
            name: name.into(),
            role,
            token: token.into(),
        };
        assert!(matches!(
            Tokens::new(&[token("a", Role::Checkout, "short")]),
            Err(TokenError::TooShort(_))
        ));
        assert!(matches!(
            Tokens::new(&[token("a", Role::System, "0123456789abcdef")]),
            Err(TokenError::SystemRole(_))
        ));
        assert!(matches!(
            Tokens::new(&[
                token("a", Role::Checkout, "0123456789abcdef"),
                token("b", Role::Planner, "0123456789abcdef"),
            ]),
            Err(TokenError::Duplicate(..))
        ));
    }
}
