//! Reports each running instance publishes into one Redis hash, one field per instance (and
//! subject), for readers in other processes: the payment processors' breakers
//! ([`crate::gateway_health`]) and the workers' queue waits ([`crate::pipeline_wait`]). One
//! place for how such reports are written, age and are cleaned up:
//!
//! - a publication writes its fields and renews the hash's expiry in one atomic round trip,
//!   so the hash disappears by itself once every instance has stopped;
//! - an instance that stops withdraws its fields;
//! - a reader takes only reports younger than the hash's `fresh_for` (an instance that
//!   stopped or crashed stops counting), skips fields it cannot read, and removes those older
//!   than `forget_after` (a crashed instance's), so the hash stays small.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use redis::aio::ConnectionManager;
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("could not encode a report: {0}")]
    Encode(#[from] serde_json::Error),
}

/// This process's name in a report hash's fields: its pid and a random part (pids repeat
/// across containers and restarts).
pub fn instance_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}-{}",
        std::process::id(),
        random.get(..8).unwrap_or(&random)
    )
}

/// A report says when it was made.
pub trait Stamped {
    fn at(&self) -> DateTime<Utc>;
}

/// One hash of reports and how its reports age.
#[derive(Debug, Clone)]
pub struct ReportHash {
    pub key: String,
    /// Reports older than this are not read.
    pub fresh_for: chrono::Duration,
    /// Reports older than this are removed by a reader.
    pub forget_after: chrono::Duration,
    /// The hash expires this long after the last publication of any instance.
    pub ttl: Duration,
}

/// What a reader makes of the hash's fields at a moment: the fresh reports, and the fields
/// to forget.
#[derive(Debug, PartialEq)]
pub struct Sorted<R> {
    pub fresh: Vec<(String, R)>,
    pub forgotten: Vec<String>,
}

impl ReportHash {
    /// Writes `reports` (field, report) and renews the hash's expiry.
    pub async fn publish<R: Serialize>(
        &self,
        redis: &mut ConnectionManager,
        reports: &[(String, R)],
    ) -> Result<(), ReportError> {
        if reports.is_empty() {
            return Ok(());
        }
        let mut hset = redis::cmd("HSET");
        hset.arg(&self.key);
        for (field, report) in reports {
            hset.arg(field).arg(serde_json::to_string(report)?);
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .add_command(hset)
            .ignore()
            .cmd("PEXPIRE")
            .arg(&self.key)
            .arg(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX))
            .ignore();
        let () = pipe.query_async(redis).await?;
        Ok(())
    }

    /// Removes an instance's fields (at its shutdown), so readers stop counting it at once.
    pub async fn withdraw(
        &self,
        redis: &mut ConnectionManager,
        fields: &[String],
    ) -> Result<(), ReportError> {
        if fields.is_empty() {
            return Ok(());
        }
        let _: i64 = redis::cmd("HDEL")
            .arg(&self.key)
            .arg(fields)
            .query_async(redis)
            .await?;
        Ok(())
    }

    /// Every fresh report with its field, in no particular order; fields older than
    /// `forget_after` are removed on the way.
    pub async fn fresh<R: DeserializeOwned + Stamped>(
        &self,
        redis: &mut ConnectionManager,
    ) -> Result<Vec<(String, R)>, ReportError> {
        let fields: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(&self.key)
            .query_async(redis)
            .await?;
        let sorted = self.sort(fields, Utc::now());
        if !sorted.forgotten.is_empty() {
            // Housekeeping only: a failure leaves them for the next reader.
            let removed: Result<i64, _> = redis::cmd("HDEL")
                .arg(&self.key)
                .arg(&sorted.forgotten)
                .query_async(redis)
                .await;
            if let Err(error) = removed {
                tracing::debug!(key = %self.key, %error, "could not remove old reports");
            }
        }
        Ok(sorted.fresh)
    }

    /// Sorts the hash's fields as of `now` (pure, for [`ReportHash::fresh`]): a field whose
    /// value does not parse is skipped and logged.
    pub fn sort<R: DeserializeOwned + Stamped>(
        &self,
        fields: HashMap<String, String>,
        now: DateTime<Utc>,
    ) -> Sorted<R> {
        let mut sorted = Sorted {
            fresh: Vec::new(),
            forgotten: Vec::new(),
        };
        for (field, value) in fields {
            let report: R = match serde_json::from_str(&value) {
                Ok(report) => report,
                Err(error) => {
                    tracing::warn!(key = %self.key, %field, %error, "unreadable report; skipped");
                    continue;
                }
            };
            let age = now.signed_duration_since(report.at());
            if age > self.forget_after {
                sorted.forgotten.push(field);
            } else if age <= self.fresh_for {
                sorted.fresh.push((field, report));
            }
        }
        sorted
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Seen {
        n: u32,
        at: DateTime<Utc>,
    }

    impl Stamped for Seen {
        fn at(&self) -> DateTime<Utc> {
            self.at
        }
    }

    #[test]
    fn fresh_reports_are_read_stale_ones_kept_old_ones_forgotten_and_garbage_skipped() {
        let hash = ReportHash {
            key: "k".to_owned(),
            fresh_for: chrono::Duration::seconds(3),
            forget_after: chrono::Duration::minutes(5),
            ttl: Duration::from_secs(60),
        };
        let now = Utc::now();
        let value = |n: u32, age: chrono::Duration| {
            serde_json::to_string(&Seen { n, at: now - age }).unwrap_or_default()
        };
        let fields = HashMap::from([
            ("fresh".to_owned(), value(1, chrono::Duration::seconds(3))),
            ("stale".to_owned(), value(2, chrono::Duration::seconds(4))),
            ("old".to_owned(), value(3, chrono::Duration::minutes(6))),
            ("garbage".to_owned(), "{\"n\": -1}".to_owned()),
        ]);
        let sorted: Sorted<Seen> = hash.sort(fields, now);
        let fresh: Vec<(&str, u32)> = sorted
            .fresh
            .iter()
            .map(|(field, seen)| (field.as_str(), seen.n))
            .collect();
        assert_eq!(fresh, vec![("fresh", 1)]);
        assert_eq!(sorted.forgotten, vec!["old".to_owned()]);
    }
}
