use super::*;

fn name() -> GatewayName {
    GatewayName::parse("gw").unwrap_or_else(|e| panic!("{e}"))
}

fn settings() -> BreakerSettings {
    BreakerSettings {
        window: Duration::from_secs(10),
        buckets: 10,
        min_requests: 4,
        error_threshold_percent: 50,
        sleep_window: Duration::from_secs(5),
        max_concurrent: 3,
        call_timeout: Duration::from_secs(1),
    }
}

fn breaker() -> (Breaker, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::default());
    (
        Breaker::with_clock(name(), settings(), clock.clone()),
        clock,
    )
}

fn retryable() -> GatewayError {
    GatewayError::Retryable {
        reason: "503".into(),
        retry_after: None,
    }
}

async fn ok(b: &Breaker) -> Result<(), BreakerError> {
    b.call(|| async { Ok(()) }).await
}

async fn fail(b: &Breaker) -> Result<(), BreakerError> {
    b.call(|| async { Err(retryable()) }).await
}

fn rejected(result: &Result<(), BreakerError>, expected: Rejection) -> bool {
    matches!(result, Err(BreakerError::Rejected { rejection, .. }) if *rejection == expected)
}

#[tokio::test]
async fn stays_closed_below_minimum_volume_even_at_full_error_rate() {
    let (b, _) = breaker();
    for _ in 0..3 {
        assert_eq!(fail(&b).await, Err(BreakerError::Gateway(retryable())));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().window_failures, 3);
}

#[tokio::test]
async fn opens_at_threshold_and_rejects_without_calling() {
    let (b, _) = breaker();
    ok(&b).await.unwrap_or_else(|e| panic!("{e}"));
    ok(&b).await.unwrap_or_else(|e| panic!("{e}"));
    let _ = fail(&b).await;
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "1 of 3 failed, below volume"
    );
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open, "2 of 4 = 50% at volume 4");
    let mut called = false;
    let result = b
        .call(|| {
            called = true;
            async { Ok(()) }
        })
        .await;
    assert!(rejected(&result, Rejection::Open));
    assert!(!called);
    assert!(!b.would_admit());
    let snapshot = b.snapshot();
    assert_eq!((snapshot.opened_total, snapshot.rejected_total), (1, 1));
}

#[tokio::test]
async fn below_threshold_stays_closed() {
    let (b, _) = breaker();
    for _ in 0..3 {
        ok(&b).await.unwrap_or_else(|e| panic!("{e}"));
    }
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Closed, "25% < 50%");
}

async fn open(b: &Breaker) {
    for _ in 0..4 {
        let _ = fail(b).await;
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test]
async fn after_sleep_window_exactly_one_probe_goes_through() {
    let (b, clock) = breaker();
    open(&b).await;
    clock.advance(Duration::from_millis(4999));
    assert!(rejected(&ok(&b).await, Rejection::Open));
    clock.advance(Duration::from_millis(1));
    assert!(b.would_admit());

    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let probe = b.call(|| async move {
        let _ = wait.await;
        Ok(())
    });
    tokio::pin!(probe);
    // Start the probe; it blocks on `wait`.
    assert!(futures_poll_once(probe.as_mut()).await.is_none());
    assert_eq!(b.state(), BreakerState::HalfOpen);
    assert!(rejected(&ok(&b).await, Rejection::ProbeInFlight));
    let _ = release.send(());
    assert_eq!(probe.await, Ok(()));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(
        b.snapshot().window_requests,
        0,
        "window starts empty after closing"
    );
}

#[tokio::test]
async fn failed_probe_reopens_for_a_new_sleep_window() {
    let (b, clock) = breaker();
    open(&b).await;
    clock.advance(Duration::from_secs(5));
    let _ = fail(&b).await;
    assert_eq!(b.state(), BreakerState::Open);
    clock.advance(Duration::from_millis(4999));
    assert!(rejected(&ok(&b).await, Rejection::Open));
    clock.advance(Duration::from_millis(1));
    assert_eq!(ok(&b).await, Ok(()));
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().opened_total, 2);
}

#[tokio::test]
async fn cancelled_probe_counts_as_failed() {
    let (b, clock) = breaker();
    open(&b).await;
    clock.advance(Duration::from_secs(5));
    {
        let probe = b.call(std::future::pending::<Result<(), GatewayError>>);
        tokio::pin!(probe);
        assert!(futures_poll_once(probe.as_mut()).await.is_none());
        assert_eq!(b.state(), BreakerState::HalfOpen);
    }
    assert_eq!(b.state(), BreakerState::Open);
    assert_eq!(b.snapshot().in_flight, 0);
}

#[tokio::test]
async fn permanent_errors_are_not_failures_but_ambiguous_ones_are() {
    let (b, _) = breaker();
    for _ in 0..10 {
        let r: Result<(), _> = b
            .call(|| async {
                Err(GatewayError::Permanent {
                    code: "declined".into(),
                    reason: "no".into(),
                })
            })
            .await;
        assert!(matches!(
            r,
            Err(BreakerError::Gateway(GatewayError::Permanent { .. }))
        ));
    }
    assert_eq!(b.state(), BreakerState::Closed);
    assert_eq!(b.snapshot().window_failures, 0);
    for _ in 0..10 {
        let _: Result<(), _> = b
            .call(|| async {
                Err(GatewayError::Ambiguous {
                    reason: "timeout".into(),
                })
            })
            .await;
    }
    assert_eq!(b.state(), BreakerState::Open);
}

#[tokio::test]
async fn old_failures_roll_out_of_the_window() {
    let (b, clock) = breaker();
    for _ in 0..3 {
        let _ = fail(&b).await;
    }
    clock.advance(Duration::from_secs(10));
    assert_eq!(b.snapshot().window_requests, 0);
    let _ = fail(&b).await;
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "only one failure is still in the window"
    );
}

#[tokio::test]
async fn saturation_rejects_beyond_max_concurrent() {
    let (b, _) = breaker();
    let calls: Vec<_> = (0..3)
        .map(|_| Box::pin(b.call(std::future::pending::<Result<(), GatewayError>>)))
        .collect();
    let mut calls = calls;
    for call in &mut calls {
        assert!(futures_poll_once(call.as_mut()).await.is_none());
    }
    assert_eq!(b.snapshot().in_flight, 3);
    assert!(rejected(&ok(&b).await, Rejection::Saturated));
    drop(calls);
    assert_eq!(b.snapshot().in_flight, 0);
    assert_eq!(
        b.state(),
        BreakerState::Closed,
        "cancelled ordinary calls are not counted"
    );
    assert_eq!(ok(&b).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn call_timeout_is_ambiguous_and_counts_as_failure() {
    let (b, _) = breaker();
    let result: Result<(), _> = b.call(std::future::pending).await;
    assert!(
        matches!(
            result,
            Err(BreakerError::Gateway(GatewayError::Ambiguous { .. }))
        ),
        "{result:?}"
    );
    assert_eq!(b.snapshot().window_failures, 1);
}

#[tokio::test]
async fn a_call_admitted_before_opening_does_not_touch_the_new_state() {
    let (b, clock) = breaker();
    let (release, wait) = tokio::sync::oneshot::channel::<()>();
    let slow = b.call(|| async move {
        let _ = wait.await;
        Err::<(), _>(retryable())
    });
    tokio::pin!(slow);
    assert!(futures_poll_once(slow.as_mut()).await.is_none());
    for _ in 0..4 {
        let _ = fail(&b).await;
    }
    clock.advance(Duration::from_secs(5));
    assert_eq!(ok(&b).await, Ok(()), "probe succeeds");
    assert_eq!(b.state(), BreakerState::Closed);
    let _ = release.send(());
    let _ = slow.await;
    assert_eq!(
        b.snapshot().window_failures,
        0,
        "the stale failure was ignored"
    );
}

#[test]
fn settings_parse_from_a_table_and_name_bad_fields() {
    let table = |breaker: serde_json::Value| {
        let gateway = serde_json::json!({
            "kind": "sandbox-json", "base_url": "https://x", "secret_key": "s", "breaker": breaker,
        });
        paygate_core::config::GatewayConfig::from_json("gw", gateway).map(|g| g.breaker)
    };
    let at = |r: Result<BreakerSettings, paygate_core::config::ConfigError>| {
        r.map_err(|e| {
            e.problems()
                .iter()
                .map(|p| p.at.clone())
                .collect::<Vec<_>>()
        })
    };
    let parsed = table(
        serde_json::json!({"error_threshold_percent": 30, "sleep_window_ms": "2500", "max_concurrent": 8}),
    );
    let Ok(parsed) = parsed else {
        panic!("{parsed:?}")
    };
    assert_eq!(parsed.error_threshold_percent, 30);
    assert_eq!(parsed.sleep_window, Duration::from_millis(2500));
    assert_eq!(parsed.max_concurrent, 8);
    let bad = table(serde_json::json!({"error_threshold_percent": 130}));
    assert_eq!(
        at(bad),
        Err(vec![
            "gateways.gw.breaker.error_threshold_percent".to_owned()
        ])
    );
    let unknown = table(serde_json::json!({"treshold": 1}));
    assert_eq!(
        at(unknown),
        Err(vec!["gateways.gw.breaker.treshold".to_owned()])
    );
}

/// Polls a future once; `Some` if it completed.
async fn futures_poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Option<F::Output> {
    let mut future = Some(future);
    std::future::poll_fn(|cx| {
        let f = future.take();
        match f {
            Some(mut f) => std::task::Poll::Ready(match f.as_mut().poll(cx) {
                std::task::Poll::Ready(v) => Some(v),
                std::task::Poll::Pending => None,
            }),
            None => std::task::Poll::Ready(None),
        }
    })
    .await
}
