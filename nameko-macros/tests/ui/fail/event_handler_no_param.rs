use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[event_handler("orders", "created")]
    async fn on_order(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
