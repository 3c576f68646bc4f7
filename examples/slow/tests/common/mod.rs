//! What the process tests share: the example binary run as a child process.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// The example binary running services, its stdout and stderr collected line by line.
pub(crate) struct Service {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    readers: Option<[std::thread::JoinHandle<()>; 2]>,
}

/// Collects the lines of `output` until it closes.
fn read_lines(
    output: impl std::io::Read + Send + 'static,
    log: Arc<Mutex<Vec<String>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        for line in BufReader::new(output).lines().map_while(Result::ok) {
            log.lock().unwrap().push(line);
        }
    })
}

impl Service {
    /// `example-slow run --broker <broker> --define rpc_exchange=<exchange> <args>`,
    /// logging at `rust_log`.
    pub(crate) fn start(broker: &str, exchange: &str, args: &[&str], rust_log: &str) -> Self {
        let exchange = format!("rpc_exchange={exchange}");
        let mut child = Command::new(env!("CARGO_BIN_EXE_example-slow"))
            .args(["run", "--broker", broker, "--define", &exchange])
            .args(args)
            .env("RUST_LOG", rust_log)
            .env_remove("NAMEKO_LOG_FORMAT")
            .stderr(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("the example binary starts");
        let log = Arc::new(Mutex::new(Vec::new()));
        let readers = [
            read_lines(child.stdout.take().unwrap(), Arc::clone(&log)),
            read_lines(child.stderr.take().unwrap(), Arc::clone(&log)),
        ];
        Self {
            child,
            log,
            readers: Some(readers),
        }
    }

    /// Every line printed so far, stdout's and stderr's interleaved as they came.
    pub(crate) fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    /// Waits until `count` lines contain `text`.
    pub(crate) async fn wait_for_lines(&self, text: &str, count: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let seen = self.log().iter().filter(|l| l.contains(text)).count();
            if seen >= count {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{seen} of {count} `{text}` lines in 60 s; log: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends the process a signal (`TERM`, `KILL`).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the process to exit (at most 60 s) and returns its exit code.
    pub(crate) async fn exit_code(&mut self) -> Option<i32> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                for reader in self.readers.take().into_iter().flatten() {
                    reader.join().unwrap();
                }
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "still running after 60 s; log: {:#?}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Service {
    /// A failing test must not leave the process consuming what the fixture deletes.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
