#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[timer(interval = "1s")]
    async fn tick(&self) {}
}

fn main() {}
