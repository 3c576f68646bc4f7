use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc(queue_type = "stream")]
    async fn add(&self, a: i64) -> Result<i64, RemoteError> {
        Ok(a)
    }
}

fn main() {}
