#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum ShopError {
    #[error("no item {0}")]
    #[remote(exc_type = "ItemNotFound", code = 404)]
    NotFound(u64),
}

fn main() {}
