use nameko::rpc::RpcError;

#[nameko::rpc_client(service = "maths")]
pub trait Maths {
    async fn add(a: i64, b: i64) -> Result<i64, RpcError>;
}

fn main() {}
