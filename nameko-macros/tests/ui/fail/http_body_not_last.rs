use nameko::http::Path;
use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Web {}

#[nameko::service(name = "web")]
impl Web {
    #[http("POST", "/items/{id}")]
    async fn item(&self, body: String, Path(id): Path<u64>) -> Result<String, RemoteError> {
        Ok(format!("{id} {body}"))
    }
}

fn main() {}
