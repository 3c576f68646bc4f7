use nameko::prelude::UserId;

#[derive(nameko::Dependencies)]
struct Svc(UserId);

fn main() {}
