use nameko::prelude::RemoteError;

struct Point {
    x: i64,
}

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc]
    async fn origin(&self) -> Result<Point, RemoteError> {
        Ok(Point { x: 0 })
    }
}

fn main() {}
