//! A real Apache Tomcat 10 (Debian's `tomcat10`, installed by tests/setup.sh) as an
//! upstream: servlet containers read `;` as the start of path parameters and `..;` as `..`,
//! which nginx, Go, Node and Python do not. Started on a free loopback port with its own
//! CATALINA_BASE in a temp dir (the package's system service is never used) and the webapp
//! in proxy/tests/data/tomcat; killed on drop.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{free_port, repo_root};

/// Debian's layout: the shared jars, and the container's default `web.xml` (the default
/// servlet for static files and the JSP servlet).
const CATALINA_HOME: &str = "/usr/share/tomcat10";
const DEFAULT_WEB_XML: &str = "/usr/share/tomcat10/etc/web.xml";

/// The body of `/private/secret.txt`: no unauthenticated response may ever contain it.
pub const TOMCAT_SECRET: &str = "SIDEKEY-TOMCAT-SECRET-4b1d";
/// The body of `/public/hello.txt`.
pub const TOMCAT_HELLO: &str = "public hello from tomcat";

pub struct Tomcat {
    /// `http://127.0.0.1:<port>/`, for `--upstream`.
    pub url: String,
    pub addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Tomcat {
    /// Starts Tomcat and waits until it accepts connections (the connector starts after the
    /// webapp is deployed), then until the echo JSP is compiled.
    pub async fn start() -> Tomcat {
        let bootstrap = Path::new(CATALINA_HOME).join("bin/bootstrap.jar");
        assert!(
            bootstrap.exists() && Path::new(DEFAULT_WEB_XML).exists(),
            "Tomcat 10 is missing: run `make test` (tests/setup.sh installs the Debian package tomcat10)"
        );
        let port = free_port();
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path();
        let data = repo_root().join("proxy/tests/data/tomcat");
        copy_tree(&data.join("webapps"), &base.join("webapps"));
        for sub in ["conf", "logs", "temp", "work"] {
            std::fs::create_dir_all(base.join(sub)).unwrap();
        }
        let server_xml = std::fs::read_to_string(data.join("conf/server.xml")).unwrap();
        std::fs::write(base.join("conf/server.xml"), server_xml.replace("@PORT@", &port.to_string())).unwrap();
        std::fs::copy(DEFAULT_WEB_XML, base.join("conf/web.xml")).unwrap();
        let log = std::fs::File::create(base.join("logs/console.log")).unwrap();
        let classpath = format!("{CATALINA_HOME}/bin/bootstrap.jar:{CATALINA_HOME}/bin/tomcat-juli.jar");
        let child = Command::new("java")
            .args([
                "-Xmx160m",
                "-Xss512k",
                "-XX:+UseSerialGC",
                "-XX:TieredStopAtLevel=1",
                "-Djava.awt.headless=true",
            ])
            .arg(format!("-Dcatalina.home={CATALINA_HOME}"))
            .arg(format!("-Dcatalina.base={}", base.display()))
            .arg(format!("-Djava.io.tmpdir={}", base.join("temp").display()))
            .args(["-cp", &classpath, "org.apache.catalina.startup.Bootstrap", "start"])
            .current_dir(base)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("java is installed (tomcat10 depends on a JRE)");
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        // Owned before the wait, so a failed start still kills the JVM.
        let mut tomcat = Tomcat {
            url: format!("http://{addr}/"),
            addr,
            child,
            dir,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            if let Ok(Some(status)) = tomcat.child.try_wait() {
                panic!("Tomcat exited ({status}): {}", console(tomcat.dir.path()));
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "Tomcat did not listen on {port}: {}",
                console(tomcat.dir.path())
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // The first request to the JSP compiles it; do that before any test times requests.
        let (status, body) = super::raw_http(addr, "GET", "/public/echo/ready", "").await;
        assert_eq!(status, 200, "Tomcat's echo JSP: {body}\n{}", console(tomcat.dir.path()));
        tomcat
    }
}

impl Drop for Tomcat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

fn console(base: &Path) -> String {
    std::fs::read_to_string(base.join("logs/console.log")).unwrap_or_default()
}
