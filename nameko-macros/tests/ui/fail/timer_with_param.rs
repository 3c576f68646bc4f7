use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[timer(interval = "1s")]
    async fn tick(&self, _n: u32) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
