//! Making console users (`paygate users create`, the demo users of `paygate dev`): the
//! email checked, the password checked against the policy and hashed, the row written.

use paygate_core::db::console_users::{self, ConsoleUser, CreateError, Role};

use crate::password::{self, PasswordError};

#[derive(Debug, thiserror::Error)]
pub enum NewUserError {
    #[error("the email must look like name@domain and be at most 254 characters")]
    Email,
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Create(#[from] CreateError),
    #[error("hashing was interrupted: {0}")]
    Join(String),
}

/// A plausible email: one `@` with text on both sides, a dot in the domain, no spaces,
/// 3..=254 characters. Whether it receives mail is not the console's business.
pub fn check_email(email: &str) -> Result<&str, NewUserError> {
    let email = email.trim();
    let ok = (3..=254).contains(&email.len())
        && !email.chars().any(|c| c.is_whitespace() || c.is_control())
        && matches!(email.split_once('@'), Some((local, domain))
            if !local.is_empty() && domain.contains('.') && !domain.contains('@')
               && !domain.starts_with('.') && !domain.ends_with('.'));
    if ok {
        Ok(email)
    } else {
        Err(NewUserError::Email)
    }
}

/// Creates a user with `password` (hashed on the blocking pool).
pub async fn create(
    pool: &sqlx::PgPool,
    email: &str,
    password: &str,
    role: Role,
) -> Result<ConsoleUser, NewUserError> {
    let email = check_email(email)?.to_owned();
    password::check_policy(password)?;
    let password = password.to_owned();
    let hash = tokio::task::spawn_blocking(move || password::hash(&password))
        .await
        .map_err(|e| NewUserError::Join(e.to_string()))??;
    Ok(console_users::create(pool, &email, &hash, role).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_for_shape() {
        for good in ["a@b.co", " ops@paygate.test ", "first.last+tag@example.com"] {
            assert!(check_email(good).is_ok(), "{good}");
        }
        for bad in [
            "", "a@b", "@b.co", "a@.co", "a@b.co.", "a b@c.de", "a@b@c.de", "nobody",
        ] {
            assert!(check_email(bad).is_err(), "{bad}");
        }
    }
}
