#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[rpc]
    async fn add(&self, a: i64) -> i64 {
        a
    }
}

fn main() {}
