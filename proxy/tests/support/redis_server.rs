//! A real `redis-server` (Debian) on a free loopback port, with append-only persistence in
//! a temp dir, so it can be restarted on the same port with its data.

use super::*;

/// A redis-server with append-only persistence in a temp dir, so it can be restarted on
/// the same port with its data (a Redis restart must not sign anyone out).
pub struct Redis {
    pub port: u16,
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub extra: Vec<String>,
}

impl Redis {
    pub async fn start() -> Redis {
        Redis::start_with(&[]).await
    }

    /// With extra redis-server arguments (the port is chosen here).
    pub async fn start_with(extra: &[String]) -> Redis {
        let mut r = Redis {
            port: free_port(),
            dir: tempfile::tempdir().unwrap(),
            child: None,
            extra: extra.to_vec(),
        };
        r.run().await;
        r
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn run(&mut self) {
        let bin = PathBuf::from("/usr/bin/redis-server");
        assert!(
            bin.exists(),
            "redis-server is missing: run `make test` (tests/setup.sh installs it)"
        );
        let child = Command::new(bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let port = self.port;
        eventually("redis-server listening", Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
    }

    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }

    pub async fn keys(&self) -> Vec<String> {
        let mut c = self.client().await;
        let mut keys: Vec<String> = redis::cmd("KEYS").arg("*").query_async(&mut c).await.unwrap();
        keys.sort();
        keys
    }

    pub async fn get(&self, key: &str) -> Option<String> {
        let mut c = self.client().await;
        redis::cmd("GET").arg(key).query_async(&mut c).await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
