//! `paygate users …`: people who sign in to the console.

use std::io::{BufRead, IsTerminal};

use anyhow::Context;
use clap::{ArgGroup, Subcommand};
use paygate_core::config::Config;
use paygate_core::db;
use paygate_core::db::console_users::Role;
use paygate_core::domain::MerchantId;

#[derive(Subcommand)]
pub enum Action {
    /// Create a console user: a merchant user (sees one merchant's data) or an operator
    /// (every merchant's, and the operator pages). The password is read from standard input
    /// (one line) when it is not a terminal; otherwise one is generated and printed once.
    #[command(group(ArgGroup::new("role").required(true).args(["merchant", "operator"])))]
    Create {
        /// The email the user signs in with.
        #[arg(long)]
        email: String,
        /// The merchant (`mer_…`) whose data this user sees.
        #[arg(long)]
        merchant: Option<String>,
        /// An operator: every merchant's data and the operator pages.
        #[arg(long)]
        operator: bool,
    },
}

pub async fn run(action: Action, config: &Config) -> anyhow::Result<()> {
    let Action::Create {
        email,
        merchant,
        operator: _,
    } = action;
    let role = match merchant {
        Some(merchant) => Role::Merchant(merchant.parse::<MerchantId>().context("--merchant")?),
        None => Role::Operator,
    };
    let (password, generated) = password_from_stdin()?;
    let pool = db::connect(&config.database).await?;
    db::migrate(&pool).await?;
    let user = paygate_console::users::create(&pool, &email, &password, role).await?;
    println!(
        "user      {}  ({}, {})",
        user.id,
        user.email,
        user.role.as_str()
    );
    if let Some(merchant) = user.role.merchant() {
        println!("merchant  {merchant}");
    }
    if generated {
        println!("password  {password}");
        println!("Store the password now: only its hash is kept, it cannot be shown again.");
    }
    Ok(())
}

/// The password piped in on standard input, or a generated one (`true`) at a terminal or
/// when the input is empty.
fn password_from_stdin() -> anyhow::Result<(String, bool)> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok((paygate_console::password::generate(), true));
    }
    let mut line = String::new();
    stdin
        .lock()
        .read_line(&mut line)
        .context("reading the password from standard input")?;
    let line = line.trim_end_matches(['\r', '\n']).to_owned();
    if line.is_empty() {
        Ok((paygate_console::password::generate(), true))
    } else {
        Ok((line, false))
    }
}
