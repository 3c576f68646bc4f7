#[nameko::rpc_client(service = "maths")]
pub struct Maths;

fn main() {}
