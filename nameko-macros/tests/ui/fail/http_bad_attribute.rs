use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Web {}

#[nameko::service(name = "web")]
impl Web {
    #[http("FETCH", "/x")]
    async fn x(&self) -> Result<String, RemoteError> {
        Ok(String::new())
    }

    #[http("GET", "no-slash")]
    async fn y(&self) -> Result<String, RemoteError> {
        Ok(String::new())
    }

    #[http("GET")]
    async fn z(&self) -> Result<String, RemoteError> {
        Ok(String::new())
    }

    #[http("GET", "/w")]
    #[rpc]
    async fn w(&self) -> Result<String, RemoteError> {
        Ok(String::new())
    }
}

fn main() {}
