use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[event_handler("orders", "created", dead_letter = "")]
    async fn on_order(&self, id: u64) -> Result<(), RemoteError> {
        let _ = id;
        Ok(())
    }
}

fn main() {}
