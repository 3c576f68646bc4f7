#[derive(nameko::Dependencies)]
struct Svc {}

#[nameko::service(name = "svc")]
impl Svc {
    #[on_start]
    async fn warm_up(&self) {}
}

fn main() {}
