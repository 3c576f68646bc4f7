use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[timer(interval = "1s", cron = "* * * * * *")]
    async fn tick(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
