use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[consume(exchange = "orders")]
    async fn no_queue(&self, m: u64) -> Result<(), RemoteError> {
        let _ = m;
        Ok(())
    }

    #[consume(queue = "q", routing_key = "order.*")]
    async fn key_without_exchange(&self, m: u64) -> Result<(), RemoteError> {
        let _ = m;
        Ok(())
    }

    #[consume(queue = "q2", prefetch = 3)]
    async fn unknown_key(&self, m: u64) -> Result<(), RemoteError> {
        let _ = m;
        Ok(())
    }

    #[consume(queue = "q3")]
    async fn two_params(&self, a: u64, b: u64) -> Result<(), RemoteError> {
        let _ = (a, b);
        Ok(())
    }
}

fn main() {}
