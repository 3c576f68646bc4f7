use std::sync::{Arc, Mutex};

use nameko::core::deps::Dep;
use nameko::prelude::*;

#[derive(nameko::Dependencies)]
struct Svc {
    log: Dep<Mutex<Vec<String>>>,
}

#[nameko::service(name = "svc")]
impl Svc {
    #[on_start]
    async fn warm_up(&self) -> Result<(), RemoteError> {
        self.log.lock().unwrap().push("start".into());
        Ok(())
    }

    #[on_start]
    #[on_stop]
    async fn both(&self) -> Result<u8, RemoteError> {
        Ok(1)
    }

    #[rpc]
    async fn ping(&self) -> Result<(), RemoteError> {
        Ok(())
    }
}

fn main() {
    let _ = Arc::new(Mutex::new(Vec::<String>::new()));
}
