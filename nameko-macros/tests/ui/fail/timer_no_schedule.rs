use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[timer(eager = true)]
    async fn tick(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {}
