//! Hypercorn (PyPI, installed into `.tools/venv` by tests/setup.sh) serving
//! tests/hypercorn/app.py: a real upstream that speaks HTTP/1.1, h2c (by `Upgrade` and with
//! prior knowledge) and WebSocket, as Python apps in production do.

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, repo_root};

/// The hypercorn process, killed on drop.
pub struct Hypercorn {
    /// `http://127.0.0.1:<port>/`, for `--upstream`.
    pub url: String,
    pub addr: SocketAddr,
    child: Child,
}

impl Hypercorn {
    pub async fn start() -> Hypercorn {
        let python = repo_root().join(".tools/venv/bin/python");
        let installed = Command::new(&python)
            .args(["-c", "import hypercorn"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            installed,
            "hypercorn is missing from .tools/venv: run `make test` (tests/setup.sh installs tests/hypercorn/requirements.txt)"
        );
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // `--workers 0`: one process, so the app's record of what it saw is one list.
        let mut child = Command::new(&python)
            .args(["-m", "hypercorn", "--workers", "0", "--bind", &addr.to_string(), "app:app"])
            .current_dir(repo_root().join("tests/hypercorn"))
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start hypercorn");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("hypercorn exited: {status}");
            }
            assert!(tokio::time::Instant::now() < deadline, "hypercorn did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Hypercorn {
            url: format!("http://{addr}/"),
            addr,
            child,
        }
    }

    /// Every request and WebSocket message the app has received, asked of the app directly.
    pub async fn seen(&self) -> Vec<serde_json::Value> {
        reqwest::get(format!("http://{}/__seen", self.addr))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

impl Drop for Hypercorn {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
