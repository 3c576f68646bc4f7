#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[on_start]
    async fn with_param(&self, n: u8) -> Result<(), nameko::core::RemoteError> {
        let _ = n;
        Ok(())
    }

    #[on_start]
    fn not_async(&self) -> Result<(), nameko::core::RemoteError> {
        Ok(())
    }

    #[on_stop]
    async fn mut_self(&mut self) -> Result<(), nameko::core::RemoteError> {
        Ok(())
    }

    #[on_stop(eager)]
    async fn with_args(&self) -> Result<(), nameko::core::RemoteError> {
        Ok(())
    }

    #[on_start]
    #[rpc]
    async fn also_rpc(&self) -> Result<(), nameko::core::RemoteError> {
        Ok(())
    }
}

fn main() {}
