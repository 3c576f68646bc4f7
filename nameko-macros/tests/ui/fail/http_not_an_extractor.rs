use nameko::prelude::RemoteError;

struct Plain;

#[derive(nameko::Dependencies)]
struct Web {}

#[nameko::service(name = "web")]
impl Web {
    #[http("GET", "/plain")]
    async fn plain(&self, plain: Plain) -> Result<String, RemoteError> {
        let _ = plain;
        Ok(String::new())
    }
}

fn main() {}
