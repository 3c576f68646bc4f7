use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc(sensitive = ["passwrd"])]
    async fn login(&self, user: String, password: String) -> Result<(), RemoteError> {
        let _ = (user, password);
        Ok(())
    }

    #[rpc(sensitive = ["card[one]"])]
    async fn pay(&self, card: Vec<String>) -> Result<(), RemoteError> {
        let _ = card;
        Ok(())
    }

    #[event_handler("shop", "paid", sensitive = "order.card")]
    async fn on_paid(&self, order: serde_json::Value) -> Result<(), RemoteError> {
        let _ = order;
        Ok(())
    }
}

fn main() {}
