//! A PostgreSQL session provider, the "Writing extensions" guide's worked example:
//! every worker gets a [`Session`] inside a transaction of its own, committed when the
//! worker succeeds and rolled back when it fails or panics — in `worker_result`, which
//! runs before the caller gets the result. The `ledger` service uses it, and creates
//! its table from an `#[on_start]` hook.
//!
//! Config: `POSTGRES_URL`, a libpq URL (`postgres://user:password@host:port/db`,
//! `?options=-csearch_path%3Dmy_schema` to choose a schema).

use std::{
    ops::Deref,
    sync::{Arc, Mutex},
};

use nameko::core::{BoxError, SetupContext, SetupError};
use nameko::prelude::*;
use tokio_postgres::{Client, NoTls};

/// The config key holding the database URL.
pub const URL_KEY: &str = "POSTGRES_URL";

// ===== the dependency =====

/// A worker's database session: a client inside the worker's own transaction. It
/// derefs to [`tokio_postgres::Client`], so `query`, `execute`, `batch_execute` and
/// the rest are at hand; do not `COMMIT` or `ROLLBACK` yourself — the provider does.
#[derive(Debug)]
pub struct Session {
    client: Arc<Client>,
}

impl Deref for Session {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

impl Dependency for Session {
    type Provider = SessionProvider;

    fn provider() -> SessionProvider {
        SessionProvider::default()
    }
}

// ===== the provider =====

/// Fills [`Session`] fields: connects in `setup` (a bad URL or an unreachable
/// database fails the service's start, naming `POSTGRES_URL`), keeps idle connections
/// for later workers, and `BEGIN`s / `COMMIT`s / `ROLLBACK`s around each worker.
#[derive(Debug, Default)]
pub struct SessionProvider {
    config: Option<tokio_postgres::Config>,
    idle: Arc<Mutex<Vec<Arc<Client>>>>,
}

impl SessionProvider {
    fn config(&self) -> &tokio_postgres::Config {
        self.config.as_ref().expect("setup ran before any worker")
    }

    /// An idle connection, or a new one.
    async fn connection(&self) -> Result<Arc<Client>, tokio_postgres::Error> {
        loop {
            let idle = self.idle.lock().expect("never poisoned").pop();
            match idle {
                Some(client) if !client.is_closed() => return Ok(client),
                Some(_closed) => {}
                None => return connect(self.config()).await,
            }
        }
    }
}

/// Connects, running the connection's I/O in a task of its own.
async fn connect(config: &tokio_postgres::Config) -> Result<Arc<Client>, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!("PostgreSQL connection ended: {err}");
        }
    });
    Ok(Arc::new(client))
}

impl DependencyProvider for SessionProvider {
    type Output = Session;
    /// The worker's connection, for `worker_result` and `worker_teardown`.
    type State = Arc<Client>;

    async fn setup(&mut self, cx: &mut SetupContext<'_>) -> Result<(), SetupError> {
        cx.claim_config_key(URL_KEY);
        let url = cx
            .config()
            .get_str(URL_KEY)
            .map_err(|err| SetupError::new(format!("a PostgreSQL session needs `{URL_KEY}`: {err}")))?;
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|err| SetupError::new(format!("`{URL_KEY}` is not a PostgreSQL URL: {err}")))?;
        // Connect now: a wrong URL fails the start, not the first call.
        let client = connect(&config)
            .await
            .map_err(|err| SetupError::new(format!("cannot connect to the database at `{URL_KEY}`: {err}")))?;
        self.idle.lock().expect("never poisoned").push(client);
        self.config = Some(config);
        Ok(())
    }

    async fn get_dependency(&self, _cx: &WorkerContext) -> Result<(Session, Arc<Client>), BoxError> {
        let client = self.connection().await?;
        client.batch_execute("BEGIN").await?;
        let session = Session {
            client: Arc::clone(&client),
        };
        Ok((session, client))
    }

    async fn worker_result(&self, cx: &WorkerContext, client: &mut Arc<Client>, outcome: &Outcome) {
        // Only a success commits: an error, a panic (or any other outcome) rolls back.
        let end = if outcome.is_success() { "COMMIT" } else { "ROLLBACK" };
        if let Err(err) = client.batch_execute(end).await {
            tracing::error!(call_id = cx.call_id(), "{end} failed: {err}");
        }
    }

    async fn worker_teardown(&self, _cx: &WorkerContext, client: Arc<Client>) {
        // Back to the idle list, unless the worker kept its session somewhere.
        if Arc::strong_count(&client) == 1 && !client.is_closed() {
            self.idle.lock().expect("never poisoned").push(client);
        }
    }

    async fn stop(&self) {
        // Dropping the clients closes their connections.
        self.idle.lock().expect("never poisoned").clear();
    }

    fn kill(&self) {
        self.idle.lock().expect("never poisoned").clear();
    }
}

// ===== the service =====

/// What the ledger answers with when a call fails.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum LedgerError {
    /// The entry would take the account below zero; it is not recorded.
    #[error("account {0} would be overdrawn to {1}")]
    #[remote(exc_type = "Overdrawn", status = 409, expected)]
    Overdrawn(String, i64),
    /// The database failed.
    #[error("the database failed: {0}")]
    #[remote(exc_type = "DatabaseError")]
    Database(#[from] tokio_postgres::Error),
}

/// Accounts and their entries.
#[derive(Debug, nameko::Dependencies)]
pub struct Ledger {
    db: Session,
}

#[nameko::service(name = "ledger")]
impl Ledger {
    /// Creates the table (in the connection's schema), once, before any call.
    #[on_start]
    pub async fn create_table(&self) -> Result<(), LedgerError> {
        self.db
            .batch_execute(
                "CREATE TABLE IF NOT EXISTS entries (
                    id BIGSERIAL PRIMARY KEY,
                    account TEXT NOT NULL,
                    amount BIGINT NOT NULL
                )",
            )
            .await?;
        Ok(())
    }

    /// Records `amount` on `account` and returns the new balance. An entry that would
    /// overdraw the account fails — after the insert, so the rollback is what undoes it.
    #[rpc]
    pub async fn record(&self, account: String, amount: i64) -> Result<i64, LedgerError> {
        self.db
            .execute(
                "INSERT INTO entries (account, amount) VALUES ($1, $2)",
                &[&account, &amount],
            )
            .await?;
        let balance = self.balance(account.clone()).await?;
        if balance < 0 {
            return Err(LedgerError::Overdrawn(account, balance));
        }
        Ok(balance)
    }

    /// The sum of `account`'s entries.
    #[rpc]
    pub async fn balance(&self, account: String) -> Result<i64, LedgerError> {
        let row = self
            .db
            .query_one(
                "SELECT COALESCE(SUM(amount), 0)::BIGINT FROM entries WHERE account = $1",
                &[&account],
            )
            .await?;
        Ok(row.get(0))
    }
}
