//! The typed admin client against a real sandbox: every knobs call, health, reset, and a
//! bad knob refused with the sandbox's 400.

mod support;

use paygate_testkit::admin::{AdminError, Knobs};
use serde_json::json;
use support::World;

#[tokio::test]
async fn the_admin_client_sets_reads_and_drops_knobs() -> anyhow::Result<()> {
    let world = World::quiet().await?;
    let admin = &world.admin;
    admin.health().await?;

    // Global knobs: PATCH keeps the rest, PUT resets the rest to defaults.
    let patched = admin
        .patch_knobs(json!({"decline_rate": 0.5, "callbacks_enabled": false}))
        .await?;
    assert_eq!(
        (patched.decline_rate, patched.callbacks_enabled),
        (0.5, false)
    );
    let put = admin.put_knobs(json!({"decline_rate": 0.25})).await?;
    assert_eq!((put.decline_rate, put.callbacks_enabled), (0.25, true));
    assert_eq!(admin.knobs().await?.global, put);

    // An account without its own knobs has the global ones; its own override them until
    // dropped.
    assert_eq!(admin.account_knobs("adm-json").await?, put);
    let own = Knobs {
        outage: true,
        ..Knobs::default()
    };
    assert_eq!(admin.put_account_knobs("adm-json", &own).await?, own);
    assert_eq!(admin.account_knobs("adm-json").await?, own);
    assert_eq!(admin.knobs().await?.accounts.get("adm-json"), Some(&own));
    admin.delete_account_knobs("adm-json").await?;
    assert_eq!(admin.account_knobs("adm-json").await?, put);
    assert!(admin.knobs().await?.accounts.is_empty());

    // A bad knob is the sandbox's 400, named.
    let refused = admin.patch_knobs(json!({"decline_rate": 2.0})).await;
    assert!(
        matches!(&refused, Err(AdminError::Refused { status: 400, .. })),
        "{refused:?}"
    );

    admin.reset().await?;
    world.stop().await
}
