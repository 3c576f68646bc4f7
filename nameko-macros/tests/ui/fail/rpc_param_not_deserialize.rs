use nameko::prelude::RemoteError;

struct Point {
    x: i64,
}

#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc]
    async fn norm(&self, point: Point) -> Result<i64, RemoteError> {
        Ok(point.x)
    }
}

fn main() {}
