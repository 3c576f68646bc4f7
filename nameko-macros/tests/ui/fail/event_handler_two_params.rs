use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[event_handler("orders", "created")]
    async fn on_order(&self, a: i64, b: i64) -> Result<(), RemoteError> {
        let _ = (a, b);
        Ok(())
    }
}

fn main() {}
