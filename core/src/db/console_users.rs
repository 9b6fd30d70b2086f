//! People who sign in to the console. The password is never stored: only its argon2id PHC
//! string, made and checked by the console crate (hashing is CPU work that does not belong
//! in a query module). A user is a merchant user (one merchant's data) or an operator.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

use super::DbError;
use crate::domain::{ConsoleUserId, MerchantId};

/// What a console user may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// One merchant's payments, balance, endpoints and keys.
    Merchant(MerchantId),
    /// Every merchant's data and the operator pages.
    Operator,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merchant(_) => "merchant",
            Self::Operator => "operator",
        }
    }

    pub fn merchant(self) -> Option<MerchantId> {
        match self {
            Self::Merchant(id) => Some(id),
            Self::Operator => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleUser {
    pub id: ConsoleUserId,
    pub email: String,
    pub role: Role,
    pub created_at: DateTime<Utc>,
}

/// A user with the hash to check a password against (sign-in only).
#[derive(Debug, Clone)]
pub struct Credentials {
    pub user: ConsoleUser,
    pub password_hash: String,
}

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error("a console user with the email {0:?} exists already")]
    EmailTaken(String),
    #[error("no merchant {0}")]
    NoSuchMerchant(MerchantId),
    #[error(transparent)]
    Db(#[from] DbError),
}

#[derive(sqlx::FromRow)]
struct UserRow {
    id: uuid::Uuid,
    email: String,
    role: String,
    merchant_id: Option<uuid::Uuid>,
    created_at: DateTime<Utc>,
    password_hash: String,
}

impl UserRow {
    fn into_credentials(self) -> Result<Credentials, DbError> {
        let role = match (self.role.as_str(), self.merchant_id) {
            ("merchant", Some(merchant)) => Role::Merchant(MerchantId::from_uuid(merchant)),
            ("operator", None) => Role::Operator,
            (other, _) => {
                return Err(DbError::Corrupt {
                    table: "console_users",
                    detail: format!("role {other:?} with merchant {:?}", self.merchant_id),
                })
            }
        };
        Ok(Credentials {
            user: ConsoleUser {
                id: ConsoleUserId::from_uuid(self.id),
                email: self.email,
                role,
                created_at: self.created_at,
            },
            password_hash: self.password_hash,
        })
    }
}

const COLUMNS: &str = "id, email, role, merchant_id, created_at, password_hash";

/// Adds a user. `password_hash` must be an argon2id PHC string (the table checks the prefix).
pub async fn create<'e>(
    exec: impl PgExecutor<'e>,
    email: &str,
    password_hash: &str,
    role: Role,
) -> Result<ConsoleUser, CreateError> {
    let row: Result<UserRow, sqlx::Error> = sqlx::query_as(&format!(
        "INSERT INTO console_users (id, email, password_hash, role, merchant_id)
         VALUES ($1, $2, $3, $4, $5) RETURNING {COLUMNS}"
    ))
    .bind(ConsoleUserId::new().as_uuid())
    .bind(email)
    .bind(password_hash)
    .bind(role.as_str())
    .bind(role.merchant().map(|m| m.as_uuid()))
    .fetch_one(exec)
    .await;
    match row {
        Ok(row) => Ok(row.into_credentials()?.user),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("console_users_email") => {
            Err(CreateError::EmailTaken(email.to_owned()))
        }
        Err(sqlx::Error::Database(e)) if e.is_foreign_key_violation() => Err(
            CreateError::NoSuchMerchant(role.merchant().unwrap_or_default()),
        ),
        Err(e) => Err(CreateError::Db(e.into())),
    }
}

/// The live (not disabled) user with this email, any case, with its hash.
pub async fn credentials<'e>(
    exec: impl PgExecutor<'e>,
    email: &str,
) -> Result<Option<Credentials>, DbError> {
    let row: Option<UserRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM console_users WHERE lower(email) = lower($1) AND disabled_at IS NULL"
    ))
    .bind(email)
    .fetch_optional(exec)
    .await?;
    row.map(UserRow::into_credentials).transpose()
}

/// The live user with this id: every console request checks its session's user still is.
pub async fn get<'e>(
    exec: impl PgExecutor<'e>,
    id: ConsoleUserId,
) -> Result<Option<ConsoleUser>, DbError> {
    let row: Option<UserRow> = sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM console_users WHERE id = $1 AND disabled_at IS NULL"
    ))
    .bind(id.as_uuid())
    .fetch_optional(exec)
    .await?;
    Ok(row
        .map(UserRow::into_credentials)
        .transpose()?
        .map(|c| c.user))
}

/// Signs a user out of every future request: its sessions stop at their next check.
pub async fn disable<'e>(exec: impl PgExecutor<'e>, id: ConsoleUserId) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE console_users SET disabled_at = now() WHERE id = $1 AND disabled_at IS NULL",
    )
    .bind(id.as_uuid())
    .execute(exec)
    .await?;
    Ok(done.rows_affected() == 1)
}
