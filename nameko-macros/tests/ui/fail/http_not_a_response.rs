use nameko::prelude::RemoteError;

struct NotAResponse;

#[derive(nameko::Dependencies)]
struct Web {}

#[nameko::service(name = "web")]
impl Web {
    #[http("GET", "/x")]
    async fn x(&self) -> Result<NotAResponse, RemoteError> {
        Ok(NotAResponse)
    }
}

fn main() {}
