use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc(max_workers = 0)]
    async fn a(&self) -> Result<(), RemoteError> {
        Ok(())
    }

    #[event_handler("orders", "created", max_workers = -1)]
    async fn b(&self, id: u64) -> Result<(), RemoteError> {
        let _ = id;
        Ok(())
    }

    #[http("GET", "/c", max_workers = "4")]
    async fn c(&self) -> Result<String, RemoteError> {
        Ok(String::new())
    }
}

fn main() {}
