//! The session provider against the machine's PostgreSQL (`NAMEKO_TEST_POSTGRES_URL`;
//! without it the tests skip, saying why, except under `CI=true` where they fail). Each
//! test works in a schema of its own, dropped at the end, even after a failure.

use example_postgres_session::Ledger;
use nameko::core::Config;
use nameko_testing::ServiceHarness;
use serde_json::json;
use tokio_postgres::NoTls;

/// A unique schema, and the URL whose connections use it; dropped with the value.
struct Schema {
    url: String,
    name: String,
}

impl Schema {
    /// `None` (after saying why) when no database is configured, outside CI.
    async fn create() -> Option<Self> {
        let Ok(url) = std::env::var("NAMEKO_TEST_POSTGRES_URL") else {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "NAMEKO_TEST_POSTGRES_URL is not set, and CI=true requires the PostgreSQL tests to run"
            );
            eprintln!("skipping: NAMEKO_TEST_POSTGRES_URL is not set (e.g. postgres://user:password@127.0.0.1/db)");
            return None;
        };
        let name = format!("ledger_{}", nameko::core::ids::uuid4().simple());
        execute(&url, &format!("CREATE SCHEMA {name}")).await;
        let separator = if url.contains('?') { '&' } else { '?' };
        Some(Self {
            url: format!("{url}{separator}options=-csearch_path%3D{name}"),
            name,
        })
    }

    fn config(&self) -> Config {
        Config::from_yaml_str(&json!({ "POSTGRES_URL": self.url }).to_string()).unwrap()
    }

    /// The rows of `entries`, read on a connection of the test's own.
    async fn entries(&self) -> Vec<(String, i64)> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls).await.unwrap();
        tokio::spawn(connection);
        client
            .query("SELECT account, amount FROM entries ORDER BY id", &[])
            .await
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    }
}

impl Drop for Schema {
    fn drop(&mut self) {
        let url = std::env::var("NAMEKO_TEST_POSTGRES_URL").expect("set when the schema was made");
        let sql = format!("DROP SCHEMA {} CASCADE", self.name);
        // Drop cannot await: a thread with a runtime of its own.
        std::thread::spawn(move || {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap()
                .block_on(execute(&url, &sql));
        })
        .join()
        .unwrap();
    }
}

async fn execute(url: &str, sql: &str) {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to NAMEKO_TEST_POSTGRES_URL: {e}"));
    tokio::spawn(connection);
    client.batch_execute(sql).await.unwrap();
}

#[tokio::test]
async fn a_success_commits_and_an_error_rolls_back() {
    let Some(schema) = Schema::create().await else { return };
    let ledger = ServiceHarness::builder::<Ledger>()
        .config(schema.config())
        .start()
        .await
        .unwrap();
    // The on_start hook created the table, and its transaction was committed.
    assert_eq!(schema.entries().await, []);

    assert_eq!(ledger.rpc("record", json!(["ada", 10])).await.unwrap(), 10);
    let err = ledger.rpc("record", json!(["ada", -30])).await.unwrap_err().to_string();
    assert!(err.contains("Overdrawn") && err.contains("-20"), "{err}");
    assert_eq!(ledger.rpc("balance", json!(["ada"])).await.unwrap(), 10);
    // The failed call's insert happened, then was rolled back.
    assert_eq!(schema.entries().await, [("ada".to_owned(), 10)]);
    ledger.stop().await;
}

#[tokio::test]
async fn concurrent_workers_each_have_their_own_transaction() {
    let Some(schema) = Schema::create().await else { return };
    let ledger = ServiceHarness::builder::<Ledger>()
        .config(schema.config())
        .start()
        .await
        .unwrap();
    let calls = (0..20).map(|i| {
        let amount = if i % 4 == 3 { -1000 } else { 1 };
        ledger.rpc("record", json!(["grace", amount]))
    });
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.is_err()).count(), 5, "{results:?}");
    assert_eq!(ledger.rpc("balance", json!(["grace"])).await.unwrap(), 15);
    assert_eq!(schema.entries().await.len(), 15);
    ledger.stop().await;
}

#[tokio::test]
async fn a_bad_url_fails_the_start_naming_the_key() {
    // No database needed: nothing listens on port 1.
    let config = Config::from_yaml_str("POSTGRES_URL: postgres://nobody@127.0.0.1:1/none").unwrap();
    let err = ServiceHarness::builder::<Ledger>()
        .config(config)
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("field `db`") && err.contains("cannot connect to the database at `POSTGRES_URL`"),
        "{err}"
    );
    let err = ServiceHarness::builder::<Ledger>()
        .start()
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs `POSTGRES_URL`"), "{err}");
}
