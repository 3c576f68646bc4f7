use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[timer(cron = "*/5 * * * *")]
    async fn tick(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
