//! Rebuilds the crate when a migration is added or edited: `sqlx::migrate!` embeds the
//! `migrations/` folder at compile time, and on stable Rust nothing else tells Cargo to look
//! at it again (sqlx's documented advice).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
