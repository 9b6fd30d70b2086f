//! The Redis lease lock against the real Redis.

use std::sync::Arc;
use std::time::Duration;

use paygate_core::lock::RedisLock;
use paygate_core::testing::unique_name;
use redis::AsyncCommands;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn redis_url() -> String {
    std::env::var("PAYGATE_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// 50 tasks each do a read-modify-write of one counter under the lock: no update is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_read_modify_writes_lose_no_update() -> TestResult {
    let prefix = unique_name("pgt");
    let lock = Arc::new(RedisLock::connect(&redis_url(), prefix.clone()).await?);
    let client = redis::Client::open(redis_url())?;
    let counter = format!("{prefix}:counter");
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let lock = lock.clone();
        let client = client.clone();
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = client.get_multiplexed_async_connection().await?;
            let lease = lock
                .acquire("counter", Duration::from_secs(5), Duration::from_secs(20))
                .await?
                .ok_or("lock not acquired in time")?;
            let value: Option<i64> = conn.get(&counter).await?;
            // Widen the race window: without the lock, concurrent tasks would overwrite.
            tokio::time::sleep(Duration::from_millis(2)).await;
            let () = conn.set(&counter, value.unwrap_or(0) + 1).await?;
            lock.release(lease).await?;
            Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
        }));
    }
    for task in tasks {
        task.await?.map_err(|e| e.to_string())?;
    }
    let mut conn = client.get_multiplexed_async_connection().await?;
    let total: i64 = conn.get(&counter).await?;
    assert_eq!(total, 50);
    let _: () = conn.del(&counter).await?;
    Ok(())
}

#[tokio::test]
async fn an_expired_lease_cannot_be_released_or_extended_by_its_old_holder() -> TestResult {
    let lock = RedisLock::connect(&redis_url(), unique_name("pgt")).await?;
    let old = lock
        .try_acquire("tx", Duration::from_millis(50))
        .await?
        .ok_or("first acquire failed")?;
    tokio::time::sleep(Duration::from_millis(120)).await;
    let new = lock
        .try_acquire("tx", Duration::from_secs(5))
        .await?
        .ok_or("expired lock not re-acquirable")?;

    assert!(
        !lock.extend(&old, Duration::from_secs(5)).await?,
        "old holder extended a lease it lost"
    );
    assert!(
        !lock.release(old).await?,
        "old holder released someone else's lease"
    );
    // The new holder's lease is intact: nobody else can take it.
    assert!(lock
        .try_acquire("tx", Duration::from_secs(5))
        .await?
        .is_none());
    assert!(lock.extend(&new, Duration::from_secs(5)).await?);
    assert!(lock.release(new).await?);
    assert!(lock
        .try_acquire("tx", Duration::from_secs(1))
        .await?
        .is_some());
    Ok(())
}

#[tokio::test]
async fn acquire_waits_a_bounded_time() -> TestResult {
    let lock = RedisLock::connect(&redis_url(), unique_name("pgt")).await?;
    let _held = lock
        .try_acquire("busy", Duration::from_secs(10))
        .await?
        .ok_or("acquire failed")?;
    let started = std::time::Instant::now();
    let second = lock
        .acquire("busy", Duration::from_secs(1), Duration::from_millis(200))
        .await?;
    assert!(second.is_none());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited {:?}",
        started.elapsed()
    );
    Ok(())
}
