//! Integration tests of the API service: real HTTP against the real Postgres, Redis and
//! Kafka (tansu), each test with its own database, Redis prefix and topics.

mod abuse;
mod admission;
mod auth;
mod bench;
mod callbacks;
mod console;
mod events;
mod hardening;
mod helpers;
mod idempotency;
mod ledger;
mod openapi;
mod operations;
mod outbox;
mod providers;
mod rate_limit;
mod refunds;
mod transactions;
mod unavailable;
mod validation;
mod webhook_endpoints;
mod webhook_secrets;
