use nameko::prelude::UserId;

#[derive(nameko::Dependencies)]
struct Svc {
    user: UserId,
    count: u32,
}

fn main() {}
