use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc]
    async fn add(&self, (a, b): (i64, i64)) -> Result<i64, RemoteError> {
        Ok(a + b)
    }
}

fn main() {}
