//! derive(RemoteError) on an enum and a struct.
#![deny(missing_docs, missing_debug_implementations, unreachable_pub)]

use nameko::core::IntoHandlerError;

/// An enum.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
pub enum ShopError {
    /// Expected, renamed, with a path and a status.
    #[error("no item {0}")]
    #[remote(exc_type = "ItemNotFound", exc_path = "shop.ItemNotFound", status = 404, expected)]
    NotFound(u64),
    /// Defaults.
    #[error("broken: {reason}")]
    Broken {
        /// Why.
        reason: String,
    },
}

/// A struct.
#[derive(Debug, thiserror::Error, nameko::RemoteError)]
#[error("out of stock")]
#[remote(status = 409)]
pub struct OutOfStock;

fn main() {
    let err = ShopError::NotFound(7).into_handler_error();
    assert_eq!(err.remote().exc_type(), "ItemNotFound");
    assert_eq!(err.remote().exc_path(), "shop.ItemNotFound");
    assert_eq!(err.remote().value(), "no item 7");
    assert_eq!(err.status(), 404);
    assert!(err.is_expected());
    assert!(err.original().is_some());

    let err = ShopError::Broken { reason: "x".into() }.into_handler_error();
    assert_eq!((err.remote().exc_type(), err.remote().exc_path()), ("Broken", "Broken"));
    assert_eq!((err.status(), err.is_expected()), (500, false));

    let err = OutOfStock.into_handler_error();
    assert_eq!((err.remote().exc_type(), err.status()), ("OutOfStock", 409));
}
