use std::collections::HashMap;

use nameko::http::{HeaderMap, Json, Path, Query, StatusCode};
use nameko::prelude::RemoteError;

#[derive(nameko::Dependencies)]
struct Web {}

#[nameko::service(name = "web")]
impl Web {
    #[http("GET", "/items/{id}")]
    async fn item(&self, Path(id): Path<u64>, Query(q): Query<HashMap<String, String>>) -> Result<String, RemoteError> {
        Ok(format!("{id} {q:?}"))
    }

    #[http("POST,PUT", "/echo")]
    #[http("PATCH", "/echo/again")]
    async fn echo(&self, headers: HeaderMap, body: String) -> Result<(StatusCode, String), RemoteError> {
        Ok((StatusCode::CREATED, format!("{}{body}", headers.len())))
    }

    #[http("POST", "/json")]
    async fn json(&self, Json(value): Json<serde_json::Value>) -> Result<Json<serde_json::Value>, RemoteError> {
        Ok(Json(value))
    }

    #[http("GET", "/")]
    async fn root(&self) -> Result<&'static str, RemoteError> {
        Ok("root")
    }
}

fn main() {}
