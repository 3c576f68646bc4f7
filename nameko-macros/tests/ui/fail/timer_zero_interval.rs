use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[timer(interval = 0)]
    async fn tick(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
