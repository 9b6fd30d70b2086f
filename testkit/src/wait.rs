//! Waiting for an effect the system makes eventually (a row, a message, a counter): one
//! bounded polling loop, so every suite waits the same way and none waits forever.

use std::future::Future;
use std::time::Duration;

/// Runs `check` every `every` until it returns `Some` (then that value) or `within` has
/// passed (then `None`). `check` runs at least once; its error ends the wait at once.
pub async fn poll<T, F, Fut>(
    every: Duration,
    within: Duration,
    mut check: F,
) -> anyhow::Result<Option<T>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await? {
            return Ok(Some(value));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}
